"""Training: rectified-flow matching of both streams, on the toy world or on precomputed latent shards.

Flow matching (rectified flow, as in Ovi): x_t = (1 - t) x0 + t noise, the model predicts the
velocity v = noise - x0, t ~ logit-normal, optionally shifted toward noise: t' = s t / (1 + (s-1) t).
Loss = w_video * MSE(video) + w_audio * MSE(audio) over content tokens only (references are not
predicted). Losses are also logged in bins of t (minRF's cheap diagnostic).

Run:   python train.py --config toy --out_dir out/toy --max_minutes 10
DDP:   torchrun --nproc_per_node=N train.py ...            (gloo on CPU, nccl on GPU)
FSDP2: torchrun --nproc_per_node=N train.py --fsdp true ... (fully_shard per layer + root;
       bf16 params / fp32 reductions on CUDA)
Nodes: torchrun --nnodes=M --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 ...

Training strategy (each a flag, defaults as in the papers):
  interleaved steps  (Omni-Customizer 4.3) --interleave_audio 1: one audio-only step per joint step; an
                     audio-only step runs only the audio tower on the audio-only corpus with a larger
                     batch (--audio_batch_size) and no cross-tower pathway; its frozen weights get no update
  curriculum         (Omni-Customizer 4.3 / 5.1) --stage N or --curriculum --stage_steps a,b,c[,d]:
                     STAGES below; the stage is a function of the step, so resume stays exact
  omni-task mix      (DreamID-Omni) --task_mix 4,3,3 in stage 4: per sample R2AV / RV2AV / RA2V
  masked loss        (DreamID-Omni, in-pair reconstruction) --masked_loss: the frame region and the audio
                     stretch an in-pair reference was cut from are excluded from the loss
  learning rates     (Omni-Customizer 5.1) the new modules (OCF, MTP-CA, phoneme encoder) decay on a cosine
                     to a tenth; --backbone_lr_schedule cosine (toy: trained from scratch) or constant (the
                     paper's pretrained backbone)

Every rank draws its own noise (seeded by seed, rank and step) and its own data stream. A checkpoint
holds model, EMA, optimizer, step, RNG and data position; it is written atomically, and a run killed
at any moment resumes from it and produces the same following losses (noise is a function of step).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import model as model_lib
import shards


@dataclass
class TrainConfig:
    config: str = "toy"                # model preset: toy | small | full
    out_dir: str = "out/toy"
    data: str = "toy"                  # "toy", or a glob of latent shards (shards.SHARD_FIELDS)
    max_steps: int = 100000
    max_minutes: float = 0.0           # stop (and save) after this much wall time; 0 = no limit
    batch_size: int = 8                # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 2e-3
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    decay_steps: int = 0               # length of the cosine (0 = max_steps); steps past it stay at the floor
    backbone_lr_schedule: str = "cosine"  # cosine | constant (new modules always decay to min_lr_ratio)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_mean: float = 0.0                # logit-normal t: sigmoid(N(t_mean, t_std))
    t_std: float = 1.0
    t_shift: float = 1.0               # >1 moves training time toward noise (SD3 / Ovi's shift)
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    cond_drop: float = 0.1             # drop the caption / references independently, so CFG has an unconditional
    # --- training strategy ---
    interleave_audio: int = 1          # audio-only steps per joint step (Omni-Customizer: 1:1; 0 = off)
    audio_batch_size: int = 16         # the larger batch of audio-only steps (paper: 1024 vs 64 joint)
    stage: int = 0                     # 0 = the world flags as given; 1-4 = a curriculum stage (STAGES)
    curriculum: bool = False           # run stages 1.. in order, stage_steps each
    stage_steps: str = "300,150,150"   # steps per stage for --curriculum (4 numbers add the omni-task stage)
    init_from: str = ""                # start from this checkpoint's weights (e.g. the previous stage)
    task_mix: str = "1,0,0"            # R2AV : RV2AV : RA2V per sample (stage 4 uses DreamID-Omni's 4,3,3)
    masked_loss: bool = True           # DreamID-Omni: exclude where in-pair references were cut from
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    workers: int = 0                   # DataLoader workers for the toy world (it is fast: 0 is fine on 2 cores)
    compile: bool = False              # torch.compile each TwinLayer in place
    grad_ckpt: bool = False            # activation checkpointing per TwinLayer
    fsdp: bool = False                 # FSDP2 instead of DDP under torchrun
    threads: int = 0                   # torch CPU threads (0 = torch's default)


# ------------------------------------------------------------------------------------------------
# Flags from the dataclasses: every field of TrainConfig, ModelConfig and WorldConfig is a flag
# ------------------------------------------------------------------------------------------------


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_dataclass_flags(parser, cls, defaults_none: bool = False):
    for f in dataclasses.fields(cls):
        kind = _parse_bool if f.type in (bool, "bool") else {"int": int, "float": float}.get(str(f.type), None)
        kind = kind or (type(f.default) if f.default is not None else str)
        parser.add_argument(f"--{f.name}", type=kind, default=None if defaults_none else f.default,
                            help=f"{cls.__name__}.{f.name} (default: {'preset' if defaults_none else f.default})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_flags(parser, TrainConfig)
    add_dataclass_flags(parser, model_lib.ModelConfig, defaults_none=True)   # override the preset
    add_dataclass_flags(parser, data.WorldConfig, defaults_none=True)         # override the toy world
    args = vars(parser.parse_args(argv))
    tc = TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)})
    pick = lambda cls: {f.name: args[f.name] for f in dataclasses.fields(cls) if args[f.name] is not None}  # noqa: E731
    return tc, pick(model_lib.ModelConfig), pick(data.WorldConfig)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


def sample_t(n: int, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Logit-normal flow time, then the shift toward noise."""
    t = torch.sigmoid(tc.t_mean + tc.t_std * torch.randn(n, generator=gen))
    return tc.t_shift * t / (1 + (tc.t_shift - 1) * t)


def model_inputs(batch: dict, device, drop_text=None, drop_refs=None) -> dict:
    """The model's conditioning from a batch; samples flagged in drop_* lose caption / references.

    A dropped caption becomes the empty prompt (one space token) and takes its structure with it (no
    descriptors, no lines, no phonemes), so the unconditional branch of CFG sees nothing of the text.
    """
    text = batch["text_emb"] if "text_emb" in batch else batch["text_ids"]
    cond = dict(text=text, text_mask=batch["text_mask"], subject_mask=batch["subject_mask"],
                ref_images=batch["ref_images"], ref_audio=batch["ref_audio"],
                subject_spans=batch["subject_spans"], speech_spans=batch["speech_spans"],
                line_mask=batch["line_mask"], line_phonemes=batch["line_phonemes"],
                phoneme_mask=batch.get("phoneme_mask", batch["line_phonemes"] > 0),
                ref_image_mask=batch.get("ref_image_mask", batch["subject_mask"]))
    cond = {k: v.to(device) for k, v in cond.items()}
    if drop_text is not None and drop_text.any():
        keep = ~drop_text.to(device)
        if cond["text"].dim() == 2:  # ids: only a single space token remains valid
            cond["text"] = torch.where(keep[:, None], cond["text"], torch.full_like(cond["text"], data.PAD_ID))
            cond["text"][~keep, 0] = data.TOKEN_ID[" "]
            cond["text_mask"] = cond["text_mask"] & keep[:, None]
            cond["text_mask"][~keep, 0] = True
        else:                        # precomputed embeddings: zeroed
            cond["text"] = cond["text"] * keep[:, None, None]
        cond["subject_spans"] = cond["subject_spans"] * keep[:, None, None]
        cond["line_mask"] = cond["line_mask"] & keep[:, None]
        cond["phoneme_mask"] = cond["phoneme_mask"] & keep[:, None, None]
    if drop_refs is not None:
        cond["subject_mask"] = cond["subject_mask"] & ~drop_refs.to(device)[:, None]
        cond["ref_image_mask"] = cond["ref_image_mask"] & ~drop_refs.to(device)[:, None]
    return cond


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
TASKS = ("r2av", "rv2av", "ra2v")


def loss_masks(batch: dict, video_shape, audio_shape, ref_audio_frames: int):
    """DreamID-Omni's masked reconstruction loss: 1 = counted, 0 = where an in-pair reference was cut from
    (that subject's box in that frame; that stretch of audio). Cross-pair references mask nothing.
    Returns (video mask (B, T, 1, H, W), audio mask (B, T_a, 1))."""
    B, T, _, H, W = video_shape
    video_mask = torch.ones(B, T, 1, H, W)
    audio_mask = torch.ones(B, audio_shape[1], 1)
    for b, k in (batch["ref_frame"] >= 0).nonzero().tolist():
        f = int(batch["ref_frame"][b, k])
        x0, y0, x1, y1 = batch["boxes"][b, k, f].long().tolist()
        video_mask[b, f, :, y0:y1, x0:x1] = 0
    for b, k in (batch["ref_audio_start"] >= 0).nonzero().tolist():
        start = int(batch["ref_audio_start"][b, k])
        audio_mask[b, start: start + ref_audio_frames] = 0
    return video_mask, audio_mask


def masked_mse(pred, target, mask, dims):
    """Per-sample mean squared error over the counted elements only."""
    err = (pred.float() - target.float()).square() * mask
    return err.sum(dims) / (mask.expand_as(err).sum(dims)).clamp_min(1)


def task_inputs(batch: dict, tasks: torch.Tensor, device):
    """Per-sample DreamID-Omni task inputs: RV2AV gets the video with every subject box blanked plus the
    mask as a channel; RA2V gets the clean audio as the driving track; other samples get zeros."""
    rv, ra = (tasks == 1), (tasks == 2)  # per-sample flags; task 0 (R2AV) gets neither input
    source = driving = None
    if rv.any():
        mask = batch["source_mask"]
        source = torch.cat([batch["video"] * (1 - mask), mask], dim=2) * rv.view(-1, 1, 1, 1, 1)
        source = source.to(device)
    if ra.any():
        driving = (batch["audio"] * ra.view(-1, 1, 1)).to(device)
    return source, driving


def flow_loss(net, batch: dict, tc: TrainConfig, gen: torch.Generator, device, video: bool = True,
              task_weights=(1.0, 0.0, 0.0)):
    """Rectified-flow loss on one batch (joint, or audio-only with video=False).

    Returns (loss, stats) with per-sample t, loss_audio and (joint) loss_video, task."""
    audio = batch["audio"].to(device)
    B = audio.shape[0]
    t = sample_t(B, tc, gen)
    # independent caption / reference dropout: the negative passes of (multi-condition) CFG are then in-distribution
    drop_text, drop_refs = (torch.rand(B, generator=gen) < tc.cond_drop for _ in range(2))
    # DreamID-Omni's omni-task mix: each sample is R2AV / RV2AV / RA2V with these odds (default: all R2AV)
    tasks = torch.multinomial(torch.tensor(task_weights, dtype=torch.float), B, replacement=True, generator=gen)
    noise_a = torch.randn(audio.shape, generator=gen).to(device)
    t_dev = t.to(device)
    xt_a = (1 - t_dev[:, None, None]) * audio + t_dev[:, None, None] * noise_a   # x_t = (1-t) x0 + t noise
    xt_v = target_v = source = driving = None
    if video:
        x0_v = batch["video"].to(device)
        noise_v = torch.randn(x0_v.shape, generator=gen).to(device)
        tv = t_dev.view(B, 1, 1, 1, 1)
        xt_v, target_v = (1 - tv) * x0_v + tv * noise_v, noise_v - x0_v          # v = noise - x0
        source, driving = task_inputs(batch, tasks, device)
    cond = model_inputs(batch, device, drop_text.to(device), drop_refs.to(device))
    pred_v, pred_a = net(xt_v, xt_a, t_dev, source_video=source, driving_audio=driving, **cond)
    audio_mask = torch.ones(B, audio.shape[1], 1)
    video_mask = None
    if video and tc.masked_loss and "ref_frame" in batch:
        video_mask, audio_mask = loss_masks(batch, x0_v.shape, audio.shape, batch["ref_audio"].shape[2])
    loss_a = masked_mse(pred_a, noise_a - audio, audio_mask.to(device), (1, 2))                    # (B,)
    # RA2V is given its audio: only the video is generated, so only the video is scored
    audio_weight = (tasks != 2).float().to(device) if video else torch.ones(B, device=device)
    loss = tc.audio_loss_weight * (loss_a * audio_weight).sum() / audio_weight.sum().clamp_min(1)
    stats = dict(t=t, loss_audio=loss_a.detach().cpu(), task=tasks)
    if video:
        mask = torch.ones_like(x0_v[:, :, :1]) if video_mask is None else video_mask.to(device)
        loss_v = masked_mse(pred_v, target_v, mask, (1, 2, 3, 4))
        loss = loss + tc.video_loss_weight * loss_v.mean()
        stats["loss_video"] = loss_v.detach().cpu()
    return loss, stats


def lr_at(step: int, tc: TrainConfig, cosine: bool = True) -> float:
    """Linear warmup, then (cosine=True) cosine from lr down to lr * min_lr_ratio over decay_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if not cosine:
        return tc.lr
    decay = tc.decay_steps or total_steps(tc)
    progress = min(1.0, (step - tc.warmup_steps) / max(1, decay - tc.warmup_steps))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, tc: TrainConfig) -> float:
    """EMA decay with warm-up: (1 + step) / (10 + step), capped at ema_decay."""
    return min(tc.ema_decay, (1 + step) / (10 + step))


def total_steps(tc: TrainConfig) -> int:
    return sum(stage_budgets(tc)) if tc.curriculum else tc.max_steps


def stage_budgets(tc: TrainConfig) -> list[int]:
    budgets = [int(x) for x in tc.stage_steps.split(",")]
    if not 1 <= len(budgets) <= len(STAGES):
        raise SystemExit(f"error: --stage_steps takes 1 to {len(STAGES)} numbers, got {tc.stage_steps!r}")
    return budgets


def step_plan(step: int, tc: TrainConfig) -> dict:
    """What optimizer step `step` does, as a pure function of the step (so a resume replays it):
    its stage, whether it is joint or audio-only, and how many of each the stage has done before it."""
    stage, start = tc.stage, 0
    if tc.curriculum:
        for stage, budget in enumerate(stage_budgets(tc), start=1):
            if step < start + budget:
                break
            start += budget
    interleave = tc.interleave_audio if stage not in STAGES or STAGES[stage]["interleave"] else 0
    local = step - start
    period = 1 + interleave                    # one joint step, then `interleave` audio-only steps
    joint_before = -(-local // period)         # joint steps sit at local % period == 0; ceil(local / period)
    return dict(stage=stage, audio_only=local % period != 0, stage_start=start,
                joint_index=joint_before, audio_index=local - joint_before)  # batches of each kind consumed so far


# ------------------------------------------------------------------------------------------------
# Distributed setup, checkpoints
# ------------------------------------------------------------------------------------------------


def setup_distributed():
    """(rank, world, device): torchrun sets WORLD_SIZE; gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; one line for the user."""


def load_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True; a corrupt or foreign file stops with one clear line."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint; train one with train.py --out_dir ...")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}); "
                              "it may be truncated - use an earlier one or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: is not a checkpoint written by train.py")
    return ckpt


def save_atomic(obj, path: str):
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def full_tensor(x):
    """A plain tensor from a DTensor (FSDP2 shard; a collective: every rank calls it) or a tensor."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def model_from_checkpoint(ckpt: dict, use_ema: bool = True) -> model_lib.TwinTower:
    cfg = model_lib.ModelConfig(**ckpt["model_config"])
    net = model_lib.TwinTower(cfg)
    net.load_state_dict(ckpt["ema"] if use_ema and "ema" in ckpt else ckpt["model"])
    return net.eval()


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train(tc: TrainConfig, model_overrides: dict | None = None, world_overrides: dict | None = None,
          on_step=None) -> dict:
    """Train (or resume) a run in tc.out_dir. Returns {"step", "losses": [loss per step]}."""
    rank, world, device = setup_distributed()  # world = 1 outside torchrun
    if tc.threads:
        torch.set_num_threads(tc.threads)
    os.makedirs(tc.out_dir, exist_ok=True)
    ckpt_path = os.path.join(tc.out_dir, "ckpt.pt")
    resume = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None
    init = load_checkpoint(tc.init_from) if tc.init_from and resume is None else None  # e.g. the previous stage
    if resume is not None:  # the run's own configuration wins: a resume continues the same run
        mcfg = model_lib.ModelConfig(**resume["model_config"])
        wcfg = data.WorldConfig(**resume["world_config"])
    else:
        mcfg = model_lib.ModelConfig(**init["model_config"]) if init else \
            dataclasses.replace(model_lib.PRESETS[tc.config], **(model_overrides or {}))
        wcfg = dataclasses.replace(data.WorldConfig(), **(world_overrides or {}))
    weights = resume if resume is not None else init  # where the weights come from, if anywhere

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    net = model_lib.TwinTower(mcfg).to(device)
    net.grad_ckpt = tc.grad_ckpt
    if weights is not None:
        net.load_state_dict(weights["model"])
    # EMA of the weights (kept in fp32 on every rank; DiT's six lines)
    ema = {n: p.detach().clone().float() for n, p in net.named_parameters()}
    if weights is not None and "ema" in weights:
        ema = {n: weights["ema"][n].to(device).float() for n in ema}
    if tc.compile:
        for layer in net.layers:      # per block, in place (torchtitan's order: ckpt, compile, shard)
            layer.compile()
    wrapped = net  # what the forward goes through (DDP wraps; FSDP2 shards `net` in place)
    if world > 1 and tc.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # bf16 compute with fp32 gradient reduction on GPUs; CPUs gain nothing from bf16, so fp32 there
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if device.type == "cuda" else MixedPrecisionPolicy()
        for layer in net.layers:  # one all-gather unit per TwinLayer (both towers' block i), then the rest
            fully_shard(layer, mp_policy=mp)
        fully_shard(net, mp_policy=mp)
        ema = {n: p.detach().clone().float() for n, p in net.named_parameters()} if weights is None else \
            {n: _shard_like(weights["ema"][n], p) for n, p in net.named_parameters()}
    elif world > 1:
        # find_unused_parameters: task-input projections (and the video tower in audio-only steps) may idle
        wrapped = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    # two groups: the new prompt-side modules (cosine to a tenth, Omni-Customizer 5.1) and the backbone
    new = [p for n, p in net.named_parameters() if n.startswith(model_lib.ADDITION_PREFIXES)]
    old = [p for n, p in net.named_parameters() if not n.startswith(model_lib.ADDITION_PREFIXES)]
    opt = torch.optim.AdamW([dict(params=old, cosine=tc.backbone_lr_schedule == "cosine"),
                             dict(params=new, cosine=True)], lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
    frozen_names = set(net.frozen_in_audio_only_steps())
    frozen = [p for n, p in net.named_parameters() if n in frozen_names]
    step = 0
    if resume is not None:
        opt_state = resume["optimizer"]
        if world > 1 and tc.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            # strict=False: parameters that never had a gradient (unused task inputs) have no Adam state yet
            set_optimizer_state_dict(net, opt, opt_state, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            opt.load_state_dict(opt_state)
        step = resume["step"]
        torch.set_rng_state(resume["rng"])  # noise and data are functions of the step; this covers the rest

    # data: each rank its own stream per (stage, kind); positions follow from the step (step_plan)
    loaders = {}

    def next_batch(plan: dict, audio_only: bool):
        key = (plan["stage"], audio_only)
        if key not in loaders:
            loaders.clear()  # a new stage: new streams
            start = (plan["audio_index"] if audio_only else plan["joint_index"]) * tc.grad_accum
            stage_world = dataclasses.replace(wcfg, **STAGES[plan["stage"]]["world"]) if plan["stage"] else wcfg
            seed = tc.seed + 1000 * plan["stage"]
            if tc.data == "toy":
                dataset = data.ToyBatches(stage_world, tc.audio_batch_size if audio_only else tc.batch_size, seed=seed,
                                          rank=rank, start_batch=start, audio_only=audio_only)
            else:
                if audio_only:
                    raise SystemExit("error: latent shards have no audio-only corpus; pass --interleave_audio 0")
                dataset = shards.LatentShards(tc.data, tc.batch_size, seed=seed, rank=rank, world=world, start_batch=start)
            loaders[key] = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=tc.workers))
        return next(loaders[key])

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def save():
        """All ranks take part (FSDP gathers shards); rank 0 writes."""
        if world > 1 and tc.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            opt_state = get_optimizer_state_dict(net, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt_state = opt.state_dict()
        state = {k: full_tensor(v).detach().cpu() for k, v in net.state_dict().items()}
        ema_state = {k: full_tensor(v).cpu() for k, v in ema.items()}
        if rank == 0:
            plan_now = step_plan(step, tc)
            save_atomic(dict(model=state, ema=ema_state, optimizer=opt_state, step=step, rng=torch.get_rng_state(),
                             stage=plan_now["stage"], model_config=dataclasses.asdict(mcfg),
                             world_config=dataclasses.asdict(wcfg), train_config=dataclasses.asdict(tc),
                             # for readers and tools: a resume recomputes these from `step` (step_plan)
                             data_position=dict(joint_batches=plan_now["joint_index"] * tc.grad_accum,
                                                audio_only_batches=plan_now["audio_index"] * tc.grad_accum)),
                        ckpt_path)
        if world > 1:
            dist.barrier()

    log_path = os.path.join(tc.out_dir, "log.jsonl")
    if resume is None and rank == 0 and os.path.exists(log_path):
        os.remove(log_path)  # a fresh run starts a fresh log
    max_steps = total_steps(tc)
    losses, window, audio_window, bins = [], [], [], {}
    start_time, window_start, samples_in_window = time.time(), time.time(), 0
    progress = _progress_bar(None if tc.max_minutes > 0 else max_steps, step, rank)  # time-limited: no fake ETA
    while step < max_steps:
        plan = step_plan(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc, group["cosine"])
        # t, noise and dropout of this step = f(seed, rank, step): distinct per rank, replayed exactly on resume
        gen = torch.Generator().manual_seed(hash((tc.seed, rank, step)) % (2 ** 63))
        mix = STAGES[plan["stage"]]["task_mix"] if plan["stage"] in STAGES and STAGES[plan["stage"]]["task_mix"] \
            else tc.task_mix
        task_weights = [float(x) for x in mix.split(",")]
        joint = not plan["audio_only"]  # a joint step runs both towers; otherwise the audio tower alone
        step_loss, step_v, step_a = 0.0, 0.0, 0.0
        for micro in range(tc.grad_accum):
            batch = next_batch(plan, plan["audio_only"])
            last = micro == tc.grad_accum - 1
            sync = contextlib.nullcontext()
            if world > 1 and not last:  # accumulate locally; all-reduce once on the last micro-step
                sync = wrapped.no_sync() if not tc.fsdp else contextlib.nullcontext()
                if tc.fsdp:
                    net.set_requires_gradient_sync(False)
            elif world > 1 and tc.fsdp:
                net.set_requires_gradient_sync(True)
            with sync, autocast:
                loss, stats = flow_loss(wrapped, batch, tc, gen, device, video=joint, task_weights=task_weights)
            (loss / tc.grad_accum).backward()  # gradients add up over micro-steps: average them
            step_loss += loss.item() / tc.grad_accum
            step_a += stats["loss_audio"].mean().item() / tc.grad_accum
            if joint:
                step_v += stats["loss_video"].mean().item() / tc.grad_accum
                for t_i, lv, la in zip(stats["t"].tolist(), stats["loss_video"].tolist(), stats["loss_audio"].tolist()):
                    bins.setdefault(min(int(t_i * 4), 3), []).append(lv + la)
                samples_in_window += tc.batch_size * world
        if not joint:  # the cross-tower pathway and the video tower stay exactly as they are
            for p in frozen:
                p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)  # norm before clipping, logged
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            # warm-up: early on the EMA follows closely, else a short run's EMA is mostly the initial weights
            decay = ema_decay_at(step, tc)
            for n, p in net.named_parameters():
                if joint or n not in frozen_names:
                    ema[n].lerp_(p.detach().float(), 1 - decay)
        step += 1
        losses.append(step_loss)
        (window if joint else audio_window).append((step_loss, step_v, step_a))
        progress.update(1)
        if (step % tc.log_every == 0 or step == max_steps) and window:
            elapsed = time.time() - window_start
            record = dict(step=step, stage=plan["stage"], loss=_mean(w[0] for w in window),
                          loss_video=_mean(w[1] for w in window), loss_audio=_mean(w[2] for w in window),
                          samples_per_s=samples_in_window / max(elapsed, 1e-9), lr=lr_at(step - 1, tc),
                          grad_norm=float(grad_norm),
                          loss_by_t={f"{b / 4:.2f}-{(b + 1) / 4:.2f}": _mean(v) for b, v in sorted(bins.items())},
                          minutes=(time.time() - start_time) / 60)
            if audio_window:
                record["loss_audio_only"] = _mean(w[2] for w in audio_window)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}",
                                     stage=plan["stage"])
            window, audio_window, bins, window_start, samples_in_window = [], [], {}, time.time(), 0
        if on_step is not None:
            on_step(step, net)
        out_of_time = tc.max_minutes > 0 and (time.time() - start_time) / 60 >= tc.max_minutes
        if world > 1:  # every rank must agree to stop, or the next collective hangs
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % tc.ckpt_every == 0 or step == max_steps or out_of_time:  # every rank calls save(): collectives
            save()
        if out_of_time:
            break
    progress.close()
    if rank == 0:
        plot_losses(log_path, os.path.join(tc.out_dir, "loss.png"))
    return dict(step=step, losses=losses)


def _shard_like(full: torch.Tensor, param):
    """Place a full tensor as the same DTensor shards as `param` (resuming EMA under FSDP2)."""
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.float().to(param.device), param.device_mesh, param.placements)


def _mean(values) -> float:
    """Mean of an iterable; 0 for an empty window (nothing logged yet)."""
    values = list(values)
    return sum(values) / max(1, len(values))


def _progress_bar(total, initial: int, rank: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=rank != 0, dynamic_ncols=True, desc="train")


def plot_losses(log_path: str, png_path: str, size=(640, 360)):
    """A loss-curve PNG drawn with pillow: total (black), video (blue), audio (red), log scale."""
    from PIL import Image, ImageDraw
    if not os.path.exists(log_path):
        return
    records = [json.loads(line) for line in open(log_path)]
    if len(records) < 2:  # a line needs two points
        return
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    W, H, pad = size[0], size[1], 40
    steps = [r["step"] for r in records]
    series = {"loss": "black", "loss_video": "blue", "loss_audio": "red"}
    values = [math.log10(max(r[k], 1e-6)) for r in records for k in series]
    lo, hi = min(values), max(values) + 1e-9
    x_of = lambda s: pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (W - 2 * pad)  # noqa: E731
    y_of = lambda v: H - pad - (math.log10(max(v, 1e-6)) - lo) / (hi - lo) * (H - 2 * pad)  # noqa: E731
    draw.rectangle([pad, pad, W - pad, H - pad], outline="grey")
    for key, colour in series.items():  # log scale: losses fall by orders of magnitude
        draw.line([(x_of(r["step"]), y_of(r[key])) for r in records], fill=colour, width=2)
    draw.text((pad, 10), f"loss (black), video (blue), audio (red); log10 {lo:.2f}..{hi:.2f}; "
                         f"steps {steps[0]}..{steps[-1]}", fill="black")
    img.save(png_path)


def main():
    tc, model_overrides, world_overrides = parse_args()
    try:
        out = train(tc, model_overrides, world_overrides)
    except (CheckpointError, shards.ShardError) as e:
        raise SystemExit(f"error: {e}") from None
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {out['step']}, checkpoint {os.path.join(tc.out_dir, 'ckpt.pt')}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
