"""The papers' training recipes: their staged curricula as tables, the switches each recipe turns on, and
the step plan that says what optimizer step N does.

  omni-customizer  (Omni-Customizer Sec. 4.3 / 5.1, DreamID-Omni's omni-task stage 4) STAGES
  presence         (Identity-as-Presence Fig. 3) PRESENCE_STAGES
  dreamvideo       (DreamVideo-Omni Sec. 3) DREAMVIDEO_STAGES

A stage names the toy world it trains on (data.WorldConfig overrides), whether audio-only steps are
interleaved (Omni-Customizer's Inter-TTS: one audio-only step per joint step, --interleave_audio), the
omni-task mix, and what else that paper's stage does. `--stage N` trains stage N alone (from the previous
stage's checkpoint with --init_from), `--curriculum --stage_steps a,b,c` runs them in order. The plan is a
pure function of the step, so a resumed run replays exactly what an uninterrupted one does; so is the data
each stage reads (`StageData`: the stage's toy world, or the latent shards, positioned from the step).
"""
from __future__ import annotations

import dataclasses
import os

import torch

import data
import shards

# The curriculum. Omni-Customizer 5.1: stage 1 single-subject in-pair with the audio-only steps, stage 2
# multi-subject (joint steps only), stage 3 cross-pair; DreamID-Omni adds omni-task fine-tuning (stage 4).
STAGES = {
    1: dict(world=dict(scene="single", cross_pair=0.0), interleave=True, task_mix=None,
            teaches="basic customisation: one face, one voice, copyable in-pair references; audio bootstrapping"),
    2: dict(world=dict(scene="mixed", min_subjects=2, cross_pair=0.0), interleave=False, task_mix=None,
            teaches="binding several identities to their own descriptors and lines"),
    3: dict(world=dict(scene="mixed", min_subjects=1, cross_pair=1.0), interleave=False, task_mix=None,
            teaches="identity from abstract references: nothing to copy (cross-pair)"),
    4: dict(world=dict(scene="mixed", min_subjects=1, cross_pair=1.0), interleave=False, task_mix="4,3,3",
            teaches="DreamID-Omni omni-task: generation, video editing (RV2AV), audio-driven animation (RA2V)"),
}
# Identity-as-Presence's three stages (its Fig. 3). Stage 1, "unimodal identity": our reading is one identity
# modality per sample -- half the samples see only the face reference, half only the voice -- so each tower
# learns to take its own identity before the two are combined (both towers still train on every sample).
# Stage 2 joins both references in scenes of one to three people; stage 3 fine-tunes on "multi-view"
# identities, our cross-pair references (another rendering of the face, other words in the voice). The paper
# names no audio-only steps: none here.
PRESENCE_STAGES = {
    1: dict(world=dict(scene="single", cross_pair=0.0), interleave=False, task_mix=None, unimodal=True,
            teaches="unimodal identity: each sample takes its face or its voice reference, not both"),
    2: dict(world=dict(scene="mixed", min_subjects=1, cross_pair=0.0), interleave=False, task_mix=None,
            teaches="joint multimodal identity: face and voice together, one to three people"),
    3: dict(world=dict(scene="mixed", min_subjects=1, cross_pair=1.0), interleave=False, task_mix=None,
            teaches="multi-view identity: references from another view and other words (cross-pair)"),
}
# DreamVideo-Omni's two stages: supervised omni-motion fine-tuning (every subject moves, the camera pans in
# half the clips, the box-reweighted loss), then the same data with the latent identity reward (LIReFL).
MOTION_WORLD = dict(scene="mixed", min_subjects=1, move_prob=1.0, camera_pan=0.5, cross_pair=0.0)
DREAMVIDEO_STAGES = {
    1: dict(world=MOTION_WORLD, interleave=False, task_mix=None, reward=False,
            teaches="omni-motion control: each subject's boxes and trajectories, bound by its group embedding"),
    2: dict(world=MOTION_WORLD, interleave=False, task_mix=None, reward=True,
            teaches="LIReFL: the frozen LIRM scores one-step predictions against the reference (--reward_model)"),
}
# How Ovi itself was built, the base every paper fine-tunes: its video tower is Wan2.2's (pretrained on video
# alone) and its audio tower was pretrained on audio alone; then the two were fused and trained jointly.
# Stage 1 trains each tower alone, alternating a video-only step (text-to-video on the paired clips: no audio
# tower, no cross-tower pathway) with an audio-only step (text-to-speech on the audio-only corpus, in the
# paired clips' languages: Ovi's audio tower was pretrained on general speech, not on a second language).
# Stage 2 fuses them: joint steps, with the audio-only steps continuing (Omni-Customizer's Inter-TTS).
# Neither stage sets the scene: --scene and the other world flags choose it (the README's main job: single).
OVI_STAGES = {
    1: dict(world=dict(lang_b_audio_only=0.1), interleave=True, task_mix=None, towers_alone=True,
            teaches="unimodal pretraining: text-to-video with the video tower alone, text-to-speech with the audio tower alone"),
    2: dict(world=dict(lang_b_audio_only=0.1), interleave=True, task_mix=None,
            teaches="fusion: both towers, the cross-tower pathway, lip sync (audio-only steps continue)"),
}
RECIPES = {"omni-customizer": STAGES, "presence": PRESENCE_STAGES, "dreamvideo": DREAMVIDEO_STAGES, "ovi": OVI_STAGES}
TASKS = ("r2av", "rv2av", "ra2v")

# What each paper's recipe switches on, as that paper does (a flag given on the command line still wins):
# Identity-as-Presence trains its identity stream; DreamVideo-Omni its motion control, with its references
# sharing one time index (condition-aware RoPE) and the box-reweighted loss. The paper gives no lambda_1;
# 1.0 doubles the weight inside the boxes (the rows of docs/ablations.md were trained with it).
SWITCHES = {"omni-customizer": dict(model={}, train={}), "ovi": dict(model={}, train={}),
            "presence": dict(model=dict(ref_mode="presence"), train={}),
            "dreamvideo": dict(model=dict(motion=True, ref_rope="condition"), train=dict(box_loss_weight=1.0))}


def box_loss_weight(tc) -> float:
    """--box_loss_weight, or at its -1 the recipe's (0 outside dreamvideo)."""
    if tc.box_loss_weight >= 0:
        return tc.box_loss_weight
    return SWITCHES.get(tc.recipe, SWITCHES["omni-customizer"])["train"].get("box_loss_weight", 0.0)


def apply_switches(tc, model_overrides: dict):
    """(tc, model overrides) with the recipe's switches filled in where the command line left them."""
    switches = SWITCHES.get(tc.recipe, SWITCHES["omni-customizer"])
    return dataclasses.replace(tc, box_loss_weight=box_loss_weight(tc)), {**switches["model"], **(model_overrides or {})}


def stage_spec(tc, stage: int) -> dict | None:
    """The recipe's entry for `stage` (None for stage 0: the world flags as given)."""
    return RECIPES[tc.recipe].get(stage)


def recipe_problems(tc, model_overrides: dict) -> list[str]:
    """The stage flags against the chosen recipe's table, and what each recipe needs of the model."""
    problems = []
    if tc.recipe not in RECIPES:
        problems.append(f"--recipe must be one of {', '.join(RECIPES)}, got {tc.recipe!r}")
    stages = RECIPES.get(tc.recipe, STAGES)
    budgets = tc.stage_steps.split(",")
    fits = 1 <= len(budgets) <= len(stages) or not tc.curriculum   # the count matters only when stages run in turn
    if not (fits and all(b.strip().isdigit() and int(b) > 0 for b in budgets)):
        problems.append(f"--stage_steps takes 1 to {len(stages)} positive step counts (--recipe {tc.recipe}); "
                        f"got {tc.stage_steps!r}")
    if tc.stage not in (0, *stages):
        problems.append(f"--stage must be 0 (the world flags as given) or one of {sorted(stages)} "
                        f"(--recipe {tc.recipe}), got {tc.stage}")
    if tc.reward_model and not os.path.isfile(tc.reward_model):
        problems.append(f"--reward_model {tc.reward_model}: no such file; train one with reward.py --out PATH")
    if tc.recipe == "dreamvideo" and not model_overrides.get("motion", True):
        problems.append("--recipe dreamvideo trains motion control: leave --motion on")
    reaches_reward = tc.recipe == "dreamvideo" and (tc.stage == 2 or (tc.curriculum and len(budgets) >= 2))
    if reaches_reward and not tc.reward_model:
        problems.append("--recipe dreamvideo stage 2 is LIReFL: give --reward_model (train one with reward.py)")
    if tc.reward_model and tc.recipe == "dreamvideo" and not reaches_reward:  # stage 1 has reward=False
        problems.append("--reward_model is read by --recipe dreamvideo's stage 2 (LIReFL) only; this run never "
                        "reaches it: add --stage 2 or --curriculum true, or drop --reward_model")
    if tc.reward_model and tc.data != "toy":  # LIRM scores decoded pixels; latent shards have no decoder here
        problems.append("--reward_model scores toy-world pixels; a run on latent shards cannot use it")
    if tc.curriculum and tc.stage:  # one of the two would silently win
        problems.append(f"--curriculum runs every stage of the recipe from 1; drop --stage {tc.stage} (or --curriculum)")
    if tc.recipe == "ovi" and model_overrides.get("ref_mode", "concat") != "concat":
        problems.append("--recipe ovi pretrains each tower alone, which the identity stream does not support: "
                        "leave --ref_mode concat")
    if tc.recipe == "presence" and model_overrides.get("ref_mode", "presence") != "presence":
        problems.append("--recipe presence trains the identity stream: leave --ref_mode presence")
    return problems


def total_steps(tc) -> int:
    return sum(stage_budgets(tc)) if tc.curriculum else tc.max_steps


def stage_budgets(tc) -> list[int]:
    """Steps per curriculum stage (config_problems has checked the flag)."""
    return [int(x) for x in tc.stage_steps.split(",")]


def step_plan(step: int, tc) -> dict:
    """What optimizer step `step` does, as a pure function of the step (so a resume replays it):
    its stage, whether it is joint, audio-only or (a stage with towers_alone) video-only, and how many batches
    of the paired clips and of the audio-only corpus the stage has read before it."""
    stage, start = tc.stage, 0
    if tc.curriculum:
        for stage, budget in enumerate(stage_budgets(tc), start=1):
            if step < start + budget:
                break
            start += budget
    spec = stage_spec(tc, stage)
    interleave = tc.interleave_audio if spec is None or spec["interleave"] else 0
    local = step - start
    period = 1 + interleave                    # one joint step, then `interleave` audio-only steps
    joint_before = -(-local // period)         # joint steps sit at local % period == 0; ceil(local / period)
    towers_alone = bool(spec and spec.get("towers_alone"))  # the joint step's place is a video-only step's
    return dict(stage=stage, audio_only=local % period != 0, video_only=towers_alone and local % period == 0,
                stage_start=start, joint_index=joint_before,
                audio_index=local - joint_before)  # batches of each kind consumed so far


# ------------------------------------------------------------------------------------------------
# The data of each stage: the world it names, or the latent shards, positioned from the step
# ------------------------------------------------------------------------------------------------


def data_workers(asked: int, device) -> int:
    """--workers, or (-1) a choice by device: on a CPU the main thread makes the data (workers would compete with
    training for the same cores); on a GPU host up to 4 workers per local rank make the toy world (~8.5 ms a
    sample on one core) or read shards while the GPU computes, so it does not idle."""
    if asked >= 0:
        return asked
    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(4, per_rank - 1))


class StageData:
    """Each rank's batches per (stage, kind): a new stream when the stage changes, positioned from the step
    (step_plan), so a resumed run reads exactly the batches an uninterrupted one would."""

    def __init__(self, run):
        self.run, self.loaders = run, {}

    def __call__(self, plan: dict):
        tc, audio_only = self.run.tc, plan["audio_only"]
        key = (plan["stage"], audio_only)
        if key not in self.loaders:
            # a new stage: new streams. Within a stage each kind keeps its own stream (joint or video-only steps
            # and audio-only steps alternate), so a GPU host's workers start once per stage, not once per step
            for old in [k for k in self.loaders if k[0] != plan["stage"]]:
                del self.loaders[old]
            start = (plan["audio_index"] if audio_only else plan["joint_index"]) * tc.grad_accum
            spec = stage_spec(tc, plan["stage"])
            world = dataclasses.replace(self.run.wcfg, **spec["world"]) if spec else self.run.wcfg
            seed = tc.seed + 1000 * plan["stage"]
            if tc.data == "toy":
                dataset = data.ToyBatches(world, tc.audio_batch_size if audio_only else tc.batch_size, seed=seed,
                                          rank=self.run.data_rank, start_batch=start, audio_only=audio_only)
            else:
                if audio_only:
                    raise SystemExit("error: latent shards have no audio-only corpus; pass --interleave_audio 0")
                m = self.run.mcfg  # the shard's channels and prompt width must be the model's
                dataset = shards.LatentShards(tc.data, tc.batch_size, shards.spec_for(m),
                                              seed=seed, rank=self.run.data_rank, world=self.run.data_world,
                                              start_batch=start)
            workers = data_workers(tc.workers, self.run.device)
            self.loaders[key] = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                                                 pin_memory=self.run.device.type == "cuda"))
        batch = next(self.loaders[key])
        if self.run.codec is not None:  # mini-Ovi: the model trains on the codec's latents (codec.py)
            batch = self.run.codec.encode_batch(batch)
        return batch
