"""The four papers' ablation tables, reproduced in miniature: `python bench.py --ablate PAPER`.

Each paper backs its components with an ablation table (Omni-Customizer Table 2; DreamID-Omni's ablations of
Syn-RoPE, structured captions and progressive training; Identity-as-Presence Fig. 5; DreamVideo-Omni's
embeddings, box injection and LIReFL). Here each table is a list of rows -- flag settings of train.py --
and each row but the first carries the paper's claim as a computed test:

    claim = (row A beats row B on metric m, on benchmark subset s)

Every row trains for the same number of optimizer steps with each of `seeds` seeds (a seed sets the initial
weights, the data stream and the noise), and is scored on the same held-out cases (bench.quality). Rows
trained with the same seed share weights at step 0 and the same batches, so the claim is tested on the
paired difference d_seed = m(A, seed) - m(B, seed), whose 95% interval (Student's t over seeds) gives the
verdict:

    reproduced        the interval lies on the side the paper claims
    not reproduced    it lies on the other side
    inconclusive      it contains 0 (the miniature cannot tell at this budget)

A miniature shows a mechanism where the mechanism is decisive: binding in two-person dialogues, caption
vocalization, language B's phoneme error, identity on cross-pair references, box mIoU on moving people.
`Table.why` says, for each table, why its training world and its metrics can show its claims, and
`Table.probes` which of probes.py's measurements print under it: what each mechanism does inside the model
(where the video tower attends, what tempting captions make it say, whether it pastes its references), so a
reader sees why a row moves or does not.

Every row fine-tunes one base, as every paper fine-tunes Ovi: the table's own (BASE, mini-Ovi, trained once
and shared) or one trained already, given as `bench.py --ablate PAPER --base_ckpt PATH`.

Everything a table trains lives in --out_dir/PAPER/ROW/seedN and is reused when a table is run again (a
finished run is not trained twice, a crashed one resumes), so a table can be interrupted and rerun.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import bench
import build
import checkpoint
import data
import metrics
import probes
import recipes
import reward as reward_lib
import sample as sample_lib
import train
from conditioning import Conditioning


@dataclass(frozen=True)
class Claim:
    """`better` beats `worse` on `metric` over the `subset` cases: what the paper says, as a test."""
    better: str
    worse: str
    metric: str
    subset: str
    says: str              # the paper's words, shortened


@dataclass(frozen=True)
class Row:
    """One line of a table: train.py's flags, and where the run starts."""
    name: str
    model: dict = field(default_factory=dict)   # ModelConfig overrides (--ocf true ...), added over the base
    train: dict = field(default_factory=dict)   # TrainConfig overrides (--curriculum true ...)
    world: dict = field(default_factory=dict)   # WorldConfig overrides, for training and for its scored cases
    start: str = "base"        # "base": fine-tune the base | a row's name: that row's result | "": from scratch
    reward: str = ""           # LIReFL rows: "latent" (the paper's LIRM over the base's features) | "pixel" (decoded)
    share: float = 1.0         # its steps as a share of the table's (0: the start itself is scored)
    claim: Claim | None = None


@dataclass(frozen=True)
class Base:
    """The pretrained model the rows fine-tune. Every paper fine-tunes Ovi and adds its own modules; here the
    base plays Ovi: the plain twin tower (no OCF, no MTP-CA, references as concatenated tokens) trained once
    on the mixed world, and each row switches its paper's modules on over it (build.ADDITION_FIELDS). One
    base for every seed and every table, as one Ovi serves every paper; a seed varies the fine-tuning.
    A base already trained (`--base_ckpt`, e.g. the README's mini-Ovi base) replaces this recipe."""
    steps: int
    config: str = "toy"        # train.py's --config preset (mini: Ovi's way, over the toy's latent codecs)
    model: dict = field(default_factory=dict)
    world: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    stages: tuple = ()         # a staged recipe (--recipe ovi): each stage's share of the steps
    name: str = "base"

    def stage_steps(self, steps: int) -> dict:
        """The --stage_steps of a run of `steps` steps: the stages' shares, the last one taking the rest."""
        if not self.stages:
            return {}
        parts = [max(1, round(steps * share)) for share in self.stages[:-1]]
        return dict(stage_steps=",".join(str(n) for n in parts + [max(1, steps - sum(parts))]))


@dataclass(frozen=True)
class Table:
    paper: str
    source: str                # which table or figure of the paper
    why: str                   # why this miniature can show the claims
    rows: tuple
    steps: int                 # optimizer steps per row at --budget 1
    cases: int                 # held-out cases per scored subset
    world: dict = field(default_factory=dict)   # every row's training world (a row's own world adds to it)
    model: dict = field(default_factory=dict)   # every row's model overrides (a row's own add to them)
    train: dict = field(default_factory=dict)   # every row's TrainConfig overrides (likewise)
    base: Base | None = None   # what rows with start="base" fine-tune
    lirm_steps: int = 0        # > 0: the reward models for LIReFL rows (trained once; the pixel one also judges)
    probes: tuple = ()         # (subset, probe) pairs printed under the table: why a row moves (probes.py)

    @property
    def subsets(self) -> tuple:
        """Only the subsets a claim reads are scored (sampling is a third of a row's time)."""
        return tuple(dict.fromkeys(r.claim.subset for r in self.rows if r.claim))

    @property
    def metric_columns(self) -> tuple:
        """(subset, metric) of every claim, in row order, once each: the printed table's columns."""
        return tuple(dict.fromkeys((r.claim.subset, r.claim.metric) for r in self.rows if r.claim))


# ------------------------------------------------------------------------------------------------
# The four tables
# ------------------------------------------------------------------------------------------------
# the attention probes of binding (probes.py), read on two-person dialogues
BINDING = tuple(("dialogue", name) for name in probes.BINDING)
NO_OCF = dict(ocf=False, mtp_ca=False)   # Ovi's prompt path: the caption alone (Table 2's first row)
# mini-Ovi, built the way Ovi was (docs/experiments.md): the toy's latent codecs, each tower alone for the first
# 3/8 of the steps, then fusion (recipes.py's ovi), on 1-3 person scenes; no OCF and no MTP-CA, which are
# Omni-Customizer's additions. 8,000 steps: about 80 minutes on the 2-core CPU. Trained once, cached, and
# shared by every table (or given ready-made: bench.py --ablate PAPER --base_ckpt out/base_ovi/ckpt.pt).
BASE = Base(steps=8000, config="mini", model=NO_OCF, world=dict(scene="mixed", cross_pair=0.0),
            train=dict(recipe="ovi", curriculum=True), stages=(0.375, 0.625))
OCF_1D = dict(ocf=True, ocf_rope="1d", mtp_ca=False)
OCF_SA = dict(ocf=True, ocf_rope="sa_mrope", mtp_ca=False)
OMNI = dict(ocf=True, ocf_rope="sa_mrope", mtp_ca=True)

OMNI_CUSTOMIZER = Table(
    paper="omni-customizer", source="Omni-Customizer Table 2 (cumulative rows)",
    why="Each row adds one component to the previous row and is tested where the paper says it acts: OCF and "
        "SA-MRoPE on two-person dialogues (who speaks; whose face), MTP-CA on caption vocalization of "
        "single-speaker clips, TTS-interleaved steps on the complex subset (half of it language B, which the "
        "audio-only corpus holds 80% of), the curriculum on identity in complex scenes with cross-pair "
        "references. All rows see the same mixed 1-3 person world.",
    rows=(
        Row("none", NO_OCF, dict(interleave_audio=0)),        # the base, fine-tuned with nothing added
        Row("+OCF", OCF_1D, dict(interleave_audio=0),
            claim=Claim("+OCF", "none", "confusion", "dialogue", "removing OCF: two subjects speak at once")),
        Row("+SA-MRoPE", OCF_SA, dict(interleave_audio=0),
            claim=Claim("+SA-MRoPE", "+OCF", "face_sim", "dialogue", "SA-MRoPE boosts identity preservation")),
        Row("+MTP-CA", OMNI, dict(interleave_audio=0),
            claim=Claim("+MTP-CA", "+SA-MRoPE", "vocalization", "single", "without MTP-CA captions leak into speech")),
        # one audio-only step per joint step, inside the same optimizer-step budget (the paper's accounting)
        Row("+Inter-TTS", OMNI, dict(interleave_audio=1),
            claim=Claim("+Inter-TTS", "+MTP-CA", "per", "complex", "TTS-interleaved training improves audio")),
        Row("+Curriculum", OMNI, dict(interleave_audio=1, curriculum=True),
            claim=Claim("+Curriculum", "+Inter-TTS", "face_sim", "complex", "without the curriculum faces distort")),
    ),
    steps=150, cases=4, world=dict(scene="mixed", cross_pair=0.0), base=BASE,
    probes=BINDING + (("tempting", "vocalization"), ("complex", "per_b"), ("complex", "copy")))

SYN = dict(NO_OCF, ref_rope="syn")   # DreamID-Omni has no OCF: the caption, Syn-RoPE and its anchors
DREAMID_OMNI = Table(
    paper="dreamid-omni", source="DreamID-Omni's ablations (Syn-RoPE, structured captions, progressive training)",
    why="Every claim is about binding several people, so every row is scored on two-person dialogues with "
        "cross-pair references: Syn-RoPE on the speakers' timbre (T-Sim), structured captions on who says "
        "what (confusion), progressive training on identity (Face-Sim). SA-MRoPE, Omni-Customizer's answer "
        "to the same problem, is a row of its own. The progressive rows run stages 1-3 (in-pair, multi-person, "
        "cross-pair); the joint row sees their mix from the first step.",
    rows=(
        Row("plain RoPE", dict(NO_OCF, ref_rope="plain"), dict(curriculum=True)),   # the base's own layout
        Row("Syn-RoPE", SYN, dict(curriculum=True),
            claim=Claim("Syn-RoPE", "plain RoPE", "t_sim", "dialogue", "Syn-RoPE preserves timbre")),
        Row("SA-MRoPE", OCF_SA, dict(curriculum=True),
            claim=Claim("SA-MRoPE", "plain RoPE", "face_sim", "dialogue", "SA-MRoPE anchors references to text")),
        # the same people and lines, named by label ("the one in green says ...") instead of <subk>
        Row("no anchors", SYN, dict(curriculum=True), world=dict(anchors=False),
            claim=Claim("Syn-RoPE", "no anchors", "confusion", "dialogue",
                        "structured captions reduce identity-content mismatch")),
        # stages 1-3's data mixed from step 1: 1-3 people, half the references cross-pair
        Row("joint", SYN, dict(curriculum=False), world=dict(scene="mixed", cross_pair=0.5),
            claim=Claim("Syn-RoPE", "joint", "face_sim", "dialogue", "naive joint training: worse identity")),
    ),
    steps=200, cases=6, base=BASE, probes=BINDING + (("dialogue", "copy"),))

PRESENCE_WORLD = dict(scene="mixed", min_subjects=1, cross_pair=0.5)
PRESENCE = Table(
    paper="presence", source="Identity-as-Presence (concat vs identity stream; Fig. 5, identity embeddings)",
    why="The identity stream's claim is identity fidelity (Face-Sim on single-person cross-pair cases); the "
        "identity embedding's is telling several people apart, so it is scored on dialogues. All rows see "
        "1-3 person scenes with half the references cross-pair, where a reference cannot be copied.",
    rows=(
        Row("concat", dict(ref_mode="concat")),
        # the identity stream's weights start as copies of the base's content weights (model.IdentityStream)
        Row("presence", dict(ref_mode="presence"),
            claim=Claim("presence", "concat", "face_sim", "single", "identity as presence: better identity")),
        Row("presence, no id embed", dict(ref_mode="presence", identity_embed=False),
            claim=Claim("presence", "presence, no id embed", "face_sim", "dialogue",
                        "identity embeddings keep subjects apart")),
    ),
    steps=300, cases=6, world=PRESENCE_WORLD, model=NO_OCF, base=BASE,
    probes=(("single", "copy"), ("dialogue", "copy"), ("dialogue", "bind_region_text")))

MOTION = dict(motion=True, ref_rope="condition")
# stage 1 of --recipe dreamvideo (every subject moves, the camera pans in half the clips); lr 1e-3 as in the
# README's motion fine-tune, which learned the control in 1200 steps
MOTION_TRAIN = dict(recipe="dreamvideo", stage=1, box_loss_weight=1.0, lr=1e-3, warmup_steps=25)
DREAMVIDEO = Table(
    paper="dreamvideo", source="DreamVideo-Omni's ablations (group-role embeddings, box injection, LIReFL)",
    why="Like the paper, every row fine-tunes the pretrained base (no motion control) on moving people, "
        "and box mIoU on the motion subset shows whether people go where their boxes ask; "
        "LIReFL continues the full row with the identity reward and is scored on Face-Sim (sharpness, next "
        "to it, shows reward hacking). The control for the box claim is the same fine-tuning without motion "
        "control: moving people alone also change box mIoU. The base, scored as it is, is the floor.",
    rows=(
        Row("base", share=0.0),
        # the same data, loss and steps as "full", without the box and trajectory conditioning (stage 0 with
        # stage 1's world and settings: --recipe dreamvideo itself refuses a model without motion control)
        Row("no motion control", {}, dict(box_loss_weight=1.0, lr=1e-3, warmup_steps=25, interleave_audio=0),
            world=recipes.MOTION_WORLD),
        Row("full", MOTION, MOTION_TRAIN,
            claim=Claim("full", "no motion control", "box_miou", "motion", "box conditions control motion")),
        Row("no group-role", dict(MOTION, group_embed=False), MOTION_TRAIN,
            claim=Claim("full", "no group-role", "box_miou", "motion", "group and role embeddings are critical")),
        Row("input-only boxes", dict(MOTION, box_injection="input"), MOTION_TRAIN,
            claim=Claim("full", "input-only boxes", "box_miou", "motion", "hierarchical injection is critical")),
        # continues each seed's "full" run: stage 2 adds the reward, at the README's LIReFL lr; the paper's LIRM
        # reads the generator's own features (a frozen copy of the base's video tower, reward.LatentLIRM)
        Row("+LIReFL", MOTION, dict(MOTION_TRAIN, stage=2, lr=2e-4, warmup_steps=0), start="full", share=0.5,
            reward="latent",
            claim=Claim("+LIReFL", "full", "face_sim", "motion", "LIReFL refines identity details")),
        # not in the paper: the same with our pixel LIRM over the decoded estimate (the judge of every row's probe)
        Row("+LIReFL, pixel reward", MOTION, dict(MOTION_TRAIN, stage=2, lr=2e-4, warmup_steps=0), start="full",
            share=0.5, reward="pixel"),
    ),
    steps=200, cases=6, model=NO_OCF, base=BASE, lirm_steps=600,
    probes=(("motion", "reward"), ("motion", "face_sim"), ("motion", "sharpness"), ("motion", "copy")))

TABLES = {t.paper: t for t in (OMNI_CUSTOMIZER, DREAMID_OMNI, PRESENCE, DREAMVIDEO)}
WATCH = ("sharpness",)  # shown next to every table: what an identity gain could be paid with (reward hacking)


# ------------------------------------------------------------------------------------------------
# Training and scoring the rows
# ------------------------------------------------------------------------------------------------


def row_config(table: Table, row: Row, seed: int, steps: int, out_dir: str, lirms: dict, base_ckpt: str = "") -> tuple:
    """(TrainConfig, model overrides, world overrides) of one row's run; `out_dir` is --out_dir (a trained base
    lives at its top, shared by every table; a table's rows under out_dir/PAPER); `lirms` the table's reward
    models by form (lirm_paths); `base_ckpt` a base given ready-made (default: the one the table trains there)."""
    overrides = dict(table.train, **row.train)
    if overrides.get("curriculum"):  # the same budget, split like the papers' stages (20K / 10K / 10K)
        # (a curriculum row spends its steps across stages 1-3, whose worlds replace the table's)
        overrides["stage_steps"] = f"{steps // 2},{steps // 4},{steps - steps // 2 - steps // 4}"
    rows_dir = os.path.join(out_dir, table.paper)
    init = "" if not row.start else (base_ckpt or base_path(table, out_dir)) if row.start == "base" else \
        os.path.join(rows_dir, slug(row.start), f"seed{seed}", "ckpt.pt")   # a previous row's run, same seed
    # the base's preset (mini: a latent model; its codec comes with the base's checkpoint, train.run_codec)
    config = base_config(table, base_ckpt)
    tc = train.TrainConfig(out_dir=os.path.join(rows_dir, slug(row.name), f"seed{seed}"), max_steps=steps, seed=seed,
                           log_every=25, ckpt_every=steps, progress_every=0, init_from=init, config=config,
                           reward_model=lirms.get(row.reward, "") if overrides.get("stage") == 2 else "", **overrides)
    return tc, {**base_overrides(base_ckpt), **table.model, **row.model}, dict(table.world, **row.world)


def base_overrides(base_ckpt: str) -> dict:
    """A given base's model fields that differ from its preset (e.g. its sizes): every row asks for them, so a row
    is the base's model plus the row's additions (train.fine_tune_config refuses anything else)."""
    if not base_ckpt:
        return {}
    config, saved = given_base(base_ckpt)
    preset = build.PRESETS[config]
    return {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)
            if getattr(saved, f.name) != getattr(preset, f.name)}


def given_base(base_ckpt: str) -> tuple:
    """(--config preset, ModelConfig) of a base trained already, read from its checkpoint (weights not verified
    here: train.py verifies them when a row loads the base)."""
    ckpt = checkpoint.load_checkpoint(base_ckpt, verify=False)
    return ckpt["train_config"].get("config", "toy"), checkpoint.config_from_checkpoint(ckpt, base_ckpt)


def base_path(table: Table, out_dir: str) -> str:
    """out_dir/base/ckpt.pt: at the top, not under a table, so every table fine-tunes the same weights."""
    return os.path.join(out_dir, table.base.name, "ckpt.pt") if table.base else ""


def base_config(table: Table, base_ckpt: str = "") -> str:
    """The --config preset of the base: a given checkpoint's own, else the table's base recipe's."""
    if base_ckpt:
        return given_base(base_ckpt)[0]
    return table.base.config if table.base else "toy"


def base_model(table: Table, base_ckpt: str = ""):
    """The base's ModelConfig: a given checkpoint's, else the table's base recipe's."""
    if base_ckpt:
        return given_base(base_ckpt)[1]
    return dataclasses.replace(build.PRESETS[table.base.config], **table.base.model)


def train_base(table: Table, budget: float, out_dir: str, log):
    """The base every row fine-tunes, trained once (seed 0) and reused by every table and every rerun."""
    base = table.base
    steps = max(1, round(base.steps * budget))
    tc = train.TrainConfig(out_dir=os.path.dirname(base_path(table, out_dir)), max_steps=steps, config=base.config,
                           log_every=25, ckpt_every=steps, progress_every=0, **base.train, **base.stage_steps(steps))
    train_run(tc, dict(base.model), dict(base.world), log)


def slug(name: str) -> str:
    """A row's folder name: "+SA-MRoPE" -> "SA_MRoPE"."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "row"


def check_table(table: Table, steps: int, out_dir: str, base_ckpt: str = "") -> list[str]:
    """Every row's flags through train.py's own checks, before an hour of training."""
    problems = []
    config = base_config(table, base_ckpt)
    for row in table.rows:
        if row.share == 0:
            continue
        tc, model, world = row_config(table, row, 0, max(1, round(steps * row.share)), out_dir,
                                      lirm_paths(table, os.path.join(out_dir, table.paper)), base_ckpt)
        tc = dataclasses.replace(tc, init_from="", reward_model="")  # not trained yet: checked when they are
        problems += [f"{table.paper} row {row.name!r}: {p}" for p in train.config_problems(tc, model, world)
                     if "--reward_model" not in p]
        if row.start == "base":  # what train.py will say of --init_from the base (only additions may differ)
            base = base_model(table, base_ckpt)
            asked = dataclasses.replace(build.PRESETS[config], **model)
            problems += [f"{table.paper} row {row.name!r}: --{n} {getattr(base, n)} in the base, {getattr(asked, n)} "
                         "here; give the base's value" for n in train.fine_tune_config(base, asked, model)[1]]
    return problems


def finished(tc: train.TrainConfig) -> bool:
    """A run in tc.out_dir that already reached its steps (rerunning a table reuses it). One planned for
    another length is refused: resuming it would bend its learning-rate schedule, and its rows would have
    started from another base."""
    path = os.path.join(tc.out_dir, "ckpt.pt")
    if not os.path.exists(path):
        return False
    ckpt = checkpoint.load_checkpoint(path)
    planned = recipes.total_steps(checkpoint.dataclass_from_checkpoint(train.TrainConfig, ckpt["train_config"], path))
    if planned != recipes.total_steps(tc):  # the table's steps changed since that run (a --budget has its own folder)
        raise checkpoint.CheckpointError(f"{path}: a run of {planned} steps, where this table now asks "
                                         f"{recipes.total_steps(tc)}; give another --out_dir (or remove it)")
    return ckpt["step"] >= planned


def budget_dir(out_dir: str, budget: float, base_budget: float | None = None, base_ckpt: str = "") -> str:
    """Where a budget's runs live: out_dir itself at --budget 1, out_dir/budgetX otherwise (out_dir/budgetX_baseY
    with a --base_budget of its own; out_dir/budgetX_base-FINGERPRINT over a --base_ckpt), so a longer table
    never resumes (or reuses) a shorter table's runs, and rows fine-tuned from one base never meet rows
    fine-tuned from another."""
    if base_ckpt:  # the weights' own fingerprint: another file with the same weights is the same base
        return os.path.join(out_dir, f"budget{budget:g}_base-{checkpoint.fingerprint(base_ckpt)[:8]}")
    base_budget = budget if base_budget is None else base_budget
    if budget == 1 and base_budget == 1:
        return out_dir
    return os.path.join(out_dir, f"budget{budget:g}" + (f"_base{base_budget:g}" if base_budget != budget else ""))


def train_run(tc: train.TrainConfig, model: dict, world: dict, log) -> str:
    path = os.path.join(tc.out_dir, "ckpt.pt")
    if not finished(tc):  # an unfinished run resumes from its own ckpt.pt
        start = time.time()
        train.train(tc, model, world)
        log(f"  trained {tc.out_dir} ({recipes.total_steps(tc)} steps) in {time.time() - start:.0f} s")
    return path


def lirm_paths(table: Table, out_dir: str) -> dict:
    """{form: file} of the table's reward models (none without LIReFL rows)."""
    if not table.lirm_steps:
        return {}
    return dict(pixel=os.path.join(out_dir, "lirm.pt"), latent=os.path.join(out_dir, "lirm_latent.pt"))


def train_lirms(table: Table, out_dir: str, base: str, log) -> dict:
    """The frozen reward models LIReFL rows use, one of each form per table, trained on the toy world's exact
    identities: the pixel LIRM, and the paper's LatentLIRM over `base` (the checkpoint the rows fine-tune)."""
    paths = lirm_paths(table, out_dir)
    # seed 0 for every row and seed: the reward is the yardstick the LIReFL rows share, not a variable
    quiet = lambda *_: None  # noqa: E731
    # the pixel LIRM is always trained: it is every row's independent judge (probes.py)
    wanted = {"pixel"} | {r.reward for r in table.rows if r.reward}
    for form, path in paths.items():
        if os.path.exists(path) or form not in wanted:
            continue
        start = time.time()
        if form == "pixel":
            model, codec = reward_lib.train_lirm(table.lirm_steps, log=quiet), None
            reward_lib.save_lirm(model, path)
        else:
            backbone, codec = reward_lib.latent_backbone(base)
            model = reward_lib.train_latent_lirm(backbone, codec, table.lirm_steps, log=quiet)
            reward_lib.save_latent_lirm(model, path)
        accuracy = reward_lib.held_out_accuracy(model, codec=codec)
        log(f"  trained the {form} LIRM ({table.lirm_steps} steps) in {time.time() - start:.0f} s; held-out "
            f"accuracy {accuracy:.3f}")
    return paths


def nanmean(values) -> float:
    """The mean of the values that are numbers (a probe is NaN where it does not apply); NaN if none are."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def score(path: str, world: data.WorldConfig, table: Table, seed: int, cases: int, sample_steps: int,
          device, lirm: str = "", cache_dir: str = "") -> dict:
    """{(subset, metric): the mean over the cases} of one checkpoint, for every metric of every scored subset,
    and the table's probes (probes.py; the world's own clips' values as (subset, "truth " + metric)). Cached
    in cache_dir (a row's folder) for these weights, cases and sampling steps, so a rerun does not sample again."""
    cache = os.path.join(cache_dir, f"scores-{cases}cases-{sample_steps}steps.json") if cache_dir else ""
    weights = checkpoint.fingerprint(path)
    if cache and os.path.exists(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.get("weights") == weights and saved.get("probes") == [list(p) for p in table.probes]:
            return {(s, m): v for s, m, v in saved["scores"]}
    ckpt = checkpoint.load_checkpoint(path)
    net = checkpoint.model_from_checkpoint(path, device=device)
    codec = checkpoint.codec_from_checkpoint(ckpt, path)   # mini-Ovi samples latents and decodes them
    judge = reward_lib.load_lirm(lirm, world).to(device) if lirm else None

    def probe(case, video, mel, scored):
        return probes.clip_probes(case, video, mel, scored, world, judge)
    # every row samples with plain guidance, at the noise levels it trained at, with its seed's noise
    kw = dict(steps=sample_steps, device=device, seed=1000 * seed, shift=sample_lib.trained_shift(ckpt),
              log=lambda *_: None, codec=codec, probe=probe)
    scores = bench.quality(net, world, cases, subsets=table.subsets, **kw)
    # one number per (subset, metric) and seed: the seeds, not the cases, are the samples of the verdict
    out = {(s, m): nanmean(v) for s, by in scores.items() for m, v in by["model"].items()}
    out.update({(s, "truth " + m): nanmean(v) for s, by in scores.items() for m, v in by["truth"].items()})
    if any(s == "tempting" for s, _ in table.probes):  # the single cases again, their captions full of names
        tempting = bench.quality(net, dataclasses.replace(world, nicknames=True), cases, subsets=("single",), **kw)
        for source, prefix in (("model", ""), ("truth", "truth ")):
            out.update({("tempting", prefix + m): nanmean(v) for m, v in tempting["single"][source].items()})
    if any(m in probes.BINDING for _, m in table.probes):
        out.update({("dialogue", m): v for m, v in
                    probes.attention_binding(net, world, cases, codec, device, seed=seed).items()})
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        with open(cache + ".tmp", "w") as f:  # written whole or not at all: a crash leaves no half file
            json.dump(dict(weights=weights, probes=[list(p) for p in table.probes],
                           scores=[[s, m, v] for (s, m), v in out.items()]), f)
        os.replace(cache + ".tmp", cache)
    return out


def run_table(table: Table, seeds: int, budget: float, out_dir: str, cases: int, sample_steps: int, device,
              log=print, base_budget: float | None = None, base_ckpt: str = "") -> dict:
    """Train and score every row with every seed. Returns {row name: {(subset, metric): [value per seed]}}.
    base_budget scales the base's steps on its own (default: budget, like every row's); base_ckpt: a base
    trained already (e.g. the README's mini-Ovi base), fine-tuned instead of training the table's."""
    steps = max(1, round(table.steps * budget))
    out_dir = budget_dir(out_dir, budget, base_budget, base_ckpt)
    if table.base and not base_ckpt:
        train_base(table, budget if base_budget is None else base_budget, out_dir, log)
    lirms = train_lirms(table, os.path.join(out_dir, table.paper), base_ckpt or base_path(table, out_dir), log)
    results = {row.name: {} for row in table.rows}
    for seed in range(seeds):  # seed-major: an interrupted table has whole seeds done, each usable
        for row in table.rows:  # in table order: a row that starts from another row's result comes after it
            tc, model, world_overrides = row_config(table, row, seed, max(1, round(steps * row.share)), out_dir, lirms,
                                                    base_ckpt)
            path = tc.init_from if row.share == 0 else train_run(tc, model, world_overrides, log)  # share 0: as is
            # scored in its own world: the held-out cases keep their people and lines, but e.g. --anchors false
            # changes the prompt they give, exactly as in training
            world = dataclasses.replace(data.WorldConfig(), **world_overrides)
            for key, value in score(path, world, table, seed, cases, sample_steps, device, lirms.get("pixel", ""),
                                    tc.out_dir).items():
                results[row.name].setdefault(key, []).append(value)
            log(f"  {row.name}, seed {seed}: scored")
    return results


# ------------------------------------------------------------------------------------------------
# Verdicts and the printed table
# ------------------------------------------------------------------------------------------------


def verdict(claim: Claim, results: dict) -> dict:
    """The paired difference better - worse per seed, its mean and 95% interval (Student's t), and what
    it says about the claim (the sign flipped for lower-is-better metrics, so > 0 is the paper's side)."""
    key = (claim.subset, claim.metric)
    sign = 1.0 if metrics.HIGHER_IS_BETTER[claim.metric] else -1.0
    # paired by seed: both rows of a seed share the data stream and the sampling noise, so the seed-to-seed
    # spread that both rows share cancels, and a consistent small gain can show where unpaired intervals overlap
    diffs = [sign * (a - b) for a, b in zip(results[claim.better][key], results[claim.worse][key])
             if not (math.isnan(a) or math.isnan(b))]
    mean, ci = metrics.mean_ci(diffs, student=True)
    if math.isnan(ci):  # one seed (or none): no interval, no verdict
        word = "inconclusive"
    elif mean - ci > 0:
        word = "reproduced"
    elif mean + ci < 0:
        word = "not reproduced"
    else:
        word = "inconclusive"
    return dict(gain=mean, ci=ci, verdict=word, seeds=len(diffs), settle=seeds_to_settle(diffs))


def seeds_to_settle(diffs: list[float]) -> int:
    """How many paired seeds would put the interval clear of 0 if the mean gain and its seed-to-seed spread stayed
    as measured (the smallest n with t(n - 1) s / sqrt(n) < |mean|); 0 when no number of seeds would (a zero gain,
    or fewer than 2 seeds to measure a spread), over 1000 reads as "no".
    It answers "is this a small real effect, or none": longer training changes the gain itself, which no count
    of seeds predicts."""
    if len(diffs) < 2 or np.mean(diffs) == 0:
        return 0
    mean, spread = abs(float(np.mean(diffs))), float(np.std(diffs, ddof=1))
    for n in range(2, 1001):
        t = metrics.T_975[min(n - 1, len(metrics.T_975)) - 1]
        if t * spread / math.sqrt(n) < mean:
            return n
    return 1001


def print_table(table: Table, results: dict, header: str) -> dict:
    """Rows x (claim metrics + sharpness), mean +- 95% interval over seeds, then each row's claim: the gain
    on the paper's side (better - worse, sign-flipped where lower is better) and its verdict."""
    # the claims' (subset, metric) pairs, then the watched metrics on the first subset
    columns = list(table.metric_columns) + [(s, m) for s in table.subsets[:1] for m in WATCH
                                             if (s, m) not in table.metric_columns]
    print(header)
    print(f"{'row':24s}" + "".join(f"{s[:8] + '/' + m:>22s}" for s, m in columns) + f"  {'claim: gain':>28s}  verdict")
    flat = {}
    for row in table.rows:
        cells = ""
        for s, m in columns:
            mean, ci = metrics.mean_ci(results[row.name][(s, m)], student=True)
            flat[f"{row.name}/{s}/{m}"], flat[f"{row.name}/{s}/{m}_ci"] = mean, ci
            cells += f"{mean:14.3f} +- {ci:<5.3f}" if not math.isnan(ci) else f"{mean:14.3f}        "  # 1 seed
        if row.claim:
            v = verdict(row.claim, results)
            flat[f"{row.name}/verdict"], flat[f"{row.name}/gain"], flat[f"{row.name}/gain_ci"] = \
                v["verdict"], v["gain"], v["ci"]
            flat[f"{row.name}/seeds_to_settle"] = v["settle"]
            gain = f"{row.claim.metric} {v['gain']:+.3f} +- {v['ci']:.3f}"
            # an inconclusive claim: the seeds that would settle it, were the gain and its spread as measured
            settle = "" if v["verdict"] != "inconclusive" or not v["settle"] else \
                f" (~{v['settle']} seeds)" if v["settle"] <= 1000 else " (no: gain ~0)"
            cells += f"  {gain:>28s}  {v['verdict']}{settle}"
        print(f"{row.name:24s}{cells}")
    print("claims (gain = better - worse on the paper's side; 95% interval over paired seeds):")
    for row in table.rows:
        if row.claim:
            c = row.claim
            print(f"  {row.name:22s} {c.better} vs {c.worse} on {c.subset} {c.metric}: {c.says}")
    flat.update(print_probes(table, results))
    return flat


def print_probes(table: Table, results: dict) -> dict:
    """The table's probes per row (mean +- 95% interval over seeds), and the world's own clips' values where a
    probe reads a clip (the attention probes read the model, so they have none: 0.5 there means no binding)."""
    if not table.probes:
        return {}
    print("\nprobes (probes.py: what each mechanism does inside; mean +- 95% interval over seeds):")
    print(f"{'row':24s}" + "".join(f"{s[:8] + '/' + m:>28s}" for s, m in table.probes))
    flat = {}
    for row in table.rows:
        cells = ""
        for s, m in table.probes:
            mean, ci = metrics.mean_ci(results[row.name].get((s, m), []), student=True)  # NaNs dropped
            flat[f"{row.name}/probe/{s}/{m}"], flat[f"{row.name}/probe/{s}/{m}_ci"] = mean, ci
            cells += f"{mean:20.3f} +- {ci:<5.3f}" if not math.isnan(ci) else f"{mean:20.3f}        "
        print(f"{row.name:24s}{cells}")
    truth = [nanmean(next(iter(results.values())).get((s, "truth " + m), [float("nan")])) for s, m in table.probes]
    label = "the world's own clips"
    print(f"{label:24s}" + "".join(f"{v:20.3f}        " for v in truth))
    flat.update({f"truth/probe/{s}/{m}": v for (s, m), v in zip(table.probes, truth)})
    return flat


def ablate(paper: str, seeds: int, budget: float, out_dir: str, cases: int | None, sample_steps: int,
           device, base_budget: float | None = None, base_ckpt: str = "") -> dict:
    """bench.py --ablate PAPER: the table, its verdicts and its wall time; returns the JSON fields."""
    table = TABLES[paper]
    cases = cases or table.cases  # each table's default is what fits its 90 minutes on 2 CPU cores
    start = time.time()           # the wall time goes into the header and the JSON: the budget is part of the result
    base_budget = budget if base_budget is None else base_budget
    base_steps = max(1, round(table.base.steps * base_budget)) if table.base else 0
    if base_ckpt:  # a base trained already: its own step count
        base_steps = checkpoint.load_checkpoint(base_ckpt, verify=False)["step"]
    print(f"{table.source}: {len(table.rows)} rows x {seeds} seeds, {max(1, round(table.steps * budget))} steps "
          f"per row (--budget {budget:g}) over a base of {base_steps} steps{' (' + base_ckpt + ')' if base_ckpt else ''}, "
          f"{cases} cases per subset ({', '.join(table.subsets)}); runs in "
          f"{budget_dir(out_dir, budget, base_budget, base_ckpt)}")
    print(f"why this miniature: {table.why}")
    results = run_table(table, seeds, budget, out_dir, cases, sample_steps, device, base_budget=base_budget,
                        base_ckpt=base_ckpt)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"\n{table.source}, {max(1, round(table.steps * budget))} steps per row over a {base_steps}-step base, "
              f"{seeds} seeds, {cases} cases "
              f"per subset, {sample_steps} sampling steps; mean +- 95% interval over seeds "
              f"({(time.time() - start) / 60:.1f} min on {where})")
    flat = print_table(table, results, header)
    flat.update(paper=paper, seeds=seeds, budget=budget, base_steps=base_steps, base_ckpt=base_ckpt, cases=cases,
                minutes=(time.time() - start) / 60)
    return flat


# ------------------------------------------------------------------------------------------------
# A picture of the bases: python ablations.py --strip A/ckpt.pt,B/ckpt.pt --png docs/ablation_base.png
# ------------------------------------------------------------------------------------------------


def draw_bases(paths: list[str], png: str, subset: str = "dialogue", case: int = 0, steps: int = 30,
               labels: list[str] | None = None):
    """One strip row per checkpoint (frames and mel of held-out case `case` of `subset`, sampled as the tables score
    it), then the world's own clip: what the rows of a table start from."""
    import progress as progress_lib
    world = data.WorldConfig()
    held_out = data.held_out_case(world, subset, case)
    batch = data.collate([held_out])
    if os.path.exists(png):
        os.remove(png)  # append_row grows a strip: start a new one
    for i, path in enumerate(paths):
        ckpt = checkpoint.load_checkpoint(path)
        net = checkpoint.model_from_checkpoint(path)
        video, mel = sample_lib.sample_pixels(net, Conditioning.from_batch(batch), batch["video"].shape,
                                              batch["audio"].shape, checkpoint.codec_from_checkpoint(ckpt, path),
                                              steps=steps, guidance=sample_lib.Guidance(mode="plain"), seed=0,
                                              shift=sample_lib.trained_shift(ckpt))
        label = labels[i] if labels else f"{path}\nstep {ckpt['step']}"
        progress_lib.append_row(png, progress_lib.row_image(video[0], mel[0], label))
    progress_lib.append_row(png, progress_lib.row_image(held_out["video"], held_out["audio"], f"the world's own clip\n{subset} case {case}"))


def main():
    import argparse
    parser = argparse.ArgumentParser(description="Draw the bases the ablation tables fine-tune (the tables: bench.py --ablate)")
    parser.add_argument("--strip", required=True, help="comma-separated ckpt.pt files, one row each")
    parser.add_argument("--labels", default="", help="';'-separated row labels (default: path and step)")
    parser.add_argument("--png", default="docs/ablation_base.png", help="where the strip is written")
    parser.add_argument("--subset", default="dialogue", choices=bench.SUBSETS, help="the held-out case's subset")
    args = parser.parse_args()
    paths = args.strip.split(",")
    labels = args.labels.replace("\\n", "\n").split(";") if args.labels else None  # "\n" on the command line: a new line
    if labels and len(labels) != len(paths):
        parser.error(f"--labels gives {len(labels)} labels for {len(paths)} checkpoints; give one per checkpoint")
    try:
        draw_bases(paths, args.png, args.subset, labels=labels)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
