"""Training: rectified-flow matching of both streams, on the toy world or on precomputed latent shards.

Flow matching (rectified flow, as in Ovi): x_t = (1 - t) x0 + t noise, the model predicts the
velocity v = noise - x0, t ~ logit-normal shifted toward noise: t' = s t / (1 + (s-1) t), s = --t_shift.
The shift is SD3's resolution shift, and a toy patch token needs it as a high-resolution image does: a
token averages 64 pixels x 3 channels, so the noise's patch mean looks like signal. Unshifted, 1.4% of
training samples fall above t = 0.9 while the sampler starts every clip at t = 1; the model then
amplifies the starting noise into saturated patches. s = 3 puts 14% there, and sample.py samples with
the shift the model was trained with (tests/test_sample.py checks that the two agree).
Loss = w_video * MSE(video) + w_audio * MSE(audio) over content tokens only (references are not
predicted). Losses are also logged in bins of t (minRF's cheap diagnostic).

Run:   python train.py --config toy --out_dir out/toy --max_minutes 10
DDP:   torchrun --nproc_per_node=N train.py ...            (gloo on CPU, nccl on GPU)
FSDP2: torchrun --nproc_per_node=N train.py --fsdp true ... (fully_shard per layer + root;
       bf16 params / fp32 reductions on CUDA)
Nodes: torchrun --nnodes=M --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 ...

The papers' terms, each a flag whose default is the paper's (the loss: `flow_loss`; the step: `train_step`):
  interleaved steps  (Omni-Customizer 4.3) --interleave_audio 1: one audio-only step per joint step; an
                     audio-only step runs only the audio tower on the audio-only corpus with a larger
                     batch (--audio_batch_size); the video side declared in model.py gets no update
  stages             --recipe / --stage / --curriculum: the papers' curricula, tables in recipes.py
  omni-task mix      (DreamID-Omni) --task_mix 4,3,3 in stage 4: per sample R2AV / RV2AV / RA2V
  masked loss        (DreamID-Omni, in-pair reconstruction) --masked_loss: the frame region and the audio
                     stretch an in-pair reference was cut from are excluded from the loss
  box loss, LIReFL   (DreamVideo-Omni) --box_loss_weight, --reward_model / --reward_weight
  learning rates     (Omni-Customizer 5.1) the additions decay on a cosine to a tenth;
                     --backbone_lr_schedule cosine (toy: trained from scratch) or constant (a pretrained backbone)

Watching it learn: every --progress_every minutes the EMA model samples one held-out case into
out_dir/progress.png (a row per minute mark, under the truth's row) and out_dir/index.html (progress.py).

Every rank draws its own noise (seeded by seed, rank and step) and its own data stream. A checkpoint
holds model, EMA, optimizer, step, RNG and data position; it is written atomically, and a run killed
at any moment resumes from it and produces the same following losses (noise is a function of step).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import build
import checkpoint
import codec as codec_lib
import data
import lora
import model as model_lib
import motion
import precision as precision_lib
import progress as progress_lib
import recipes
import reward as reward_lib
import seqpar
import sharded
import shards
import text as text_lib
from cli import OneLineParser, add_dataclass_flags, out_dir_problems
from conditioning import Conditioning, box_masks, relative_boxes


@dataclass
class TrainConfig:
    config: str = "toy"                # model preset: toy | small | full
    out_dir: str = "out/toy"           # the run's folder: ckpt.pt, log.jsonl, loss.png (a run there resumes)
    data: str = "toy"                  # "toy", or a glob of latent shards (shards.SHARD_FIELDS)
    codec: str = "out/codec.pt"        # a latent model (--config mini) on the toy world reads it through this codec
                                       # (codec.py): loaded from the file, or trained there first (~2.5 minutes)
    text_init: str = ""                # a fresh run's toy text encoder starts from this file, pretrained on captions
                                       # alone (text.py, like umT5); made there first (~3 minutes) if missing
    freeze_text: bool = False          # the toy text encoder does not train (Ovi never trains umT5)
    max_steps: int = 100000            # optimizer steps (joint and audio-only alike)
    max_minutes: float = 0.0           # stop (and save) after this much wall time; 0 = no limit
    batch_size: int = 8                # per rank, per micro-step
    grad_accum: int = 1                # micro-steps per optimizer step
    lr: float = 2e-3                   # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100            # linear warm-up from 0 to lr
    decay_steps: int = 0               # length of the cosine (0 = max_steps); steps past it stay at the floor
    backbone_lr_schedule: str = "cosine"  # cosine | constant (new modules always decay to min_lr_ratio)
    weight_decay: float = 0.01         # AdamW decoupled weight decay
    grad_clip: float = 1.0             # clip the global gradient norm to this
    ema_decay: float = 0.999           # EMA of the weights (after its warm-up); sampling uses the EMA
    t_mean: float = 0.0                # logit-normal t: sigmoid(N(t_mean, t_std))
    t_std: float = 1.0                 # logit-normal t: the normal's standard deviation
    t_shift: float = 3.0               # >1 moves training time toward noise (SD3); sample.py samples with the same shift
    video_loss_weight: float = 1.0     # weight of the video MSE in the loss
    audio_loss_weight: float = 1.0     # weight of the audio MSE in the loss
    cond_drop: float = 0.1             # drop the caption / references independently, so CFG has an unconditional
    # --- training strategy ---
    interleave_audio: int = 1          # audio-only steps per joint step (Omni-Customizer: 1:1; 0 = off)
    audio_batch_size: int = 16         # the larger batch of audio-only steps (paper: 1024 vs 64 joint)
    stage: int = 0                     # 0 = the world flags as given; 1-4 = a curriculum stage (STAGES)
    curriculum: bool = False           # run stages 1.. in order, stage_steps each
    recipe: str = "omni-customizer"    # whose stages --stage / --curriculum mean: omni-customizer (1-4) | presence (1-3)
                                       # | dreamvideo (1 motion SFT, 2 LIReFL) | ovi (1 each tower alone, 2 fusion)
    stage_steps: str = "300,150,150"   # steps per stage for --curriculum (4 numbers add the omni-task stage)
    init_from: str = ""                # start from these weights: our ckpt.pt (e.g. the previous stage) or Ovi's .safetensors / index
    task_mix: str = "1,0,0"            # R2AV : RV2AV : RA2V per sample (stage 4 uses DreamID-Omni's 4,3,3)
    reward_model: str = ""             # DreamVideo-Omni stage 2 (LIReFL): a LIRM from reward.py; "" = off
    reward_weight: float = 0.1         # lambda_2: L = L_sft + lambda_2 * (-E[r]) (the paper's value is not given)
    box_loss_weight: float = -1.0      # DreamVideo-Omni's lambda_1 in (1 + lambda_1 M_box) |v - v_hat|^2 (0 = off; -1 = the recipe's, dreamvideo: 1)
    masked_loss: bool = True           # DreamID-Omni: exclude where in-pair references were cut from
    seed: int = 0                      # initial weights, data stream and noise
    log_every: int = 10                # steps per log.jsonl record (the only steps that sync with the device)
    ckpt_every: int = 200              # steps per checkpoint (also at the end and on --max_minutes)
    workers: int = -1                  # DataLoader workers (-1 = auto: 0 on a CPU, where they would take the cores training uses; up to 4 per GPU)
    compile: bool = False              # torch.compile each TwinLayer in place
    precision: str = ""                # bf16 | fp32: CUDA's regime on any device (precision.py); "" = bf16 on CUDA, fp32 elsewhere
    grad_ckpt: bool = False            # activation checkpointing inside each TwinLayer
    seq_parallel: int = 1              # ranks sharing each sample's tokens (seqpar.py: Ulysses all-to-all)
    fsdp: bool = False                 # FSDP2 instead of DDP under torchrun
    shard_group: int = 0               # FSDP2: ranks that shard the weights; groups of them replicate (HSDP); 0 = one node
    threads: int = 0                   # torch CPU threads (0 = torch's default)
    progress_every: float = 2.5        # minutes between progress-strip rows (progress.png, index.html); 0 = off
    keep_snapshots: bool = False       # at every progress row also keep ckpt_minute{M}.pt (learning curves)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


def sample_t(n: int, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Logit-normal flow time, then the shift toward noise."""
    t = torch.sigmoid(tc.t_mean + tc.t_std * torch.randn(n, generator=gen))
    return tc.t_shift * t / (1 + (tc.t_shift - 1) * t)


def rectified_flow(net, x0_v, x0_a, noise_v, noise_a, t, cond):
    """The objective's core (rectified flow, as in Ovi and minRF): x_t = (1 - t) x0 + t noise, and the model
    predicts the velocity v = noise - x0 of both streams at once (x0_v None: an audio-only step; x0_a None:
    a video-only step). Returns (predicted video velocity, predicted audio velocity, x_t of the video)."""
    xt_a = xt_v = None
    if x0_a is not None:
        ta = t[:, None, None]                                                  # (B, 1, 1): audio (B, T_a, C)
        xt_a = (1 - ta) * x0_a + ta * noise_a
    if x0_v is not None:
        tv = t.view(-1, 1, 1, 1, 1)                                            # video (B, T, C, H, W)
        xt_v = (1 - tv) * x0_v + tv * noise_v
    pred_v, pred_a = net(xt_v, xt_a, t, cond)
    return pred_v, pred_a, xt_v


def masked_mse(pred, target, mask, dims, weight=1.0):
    """Per-sample mean squared error over the counted elements only (each error times `weight`)."""
    err = (pred.float() - target.float()).square() * mask * weight
    return err.sum(dims) / (mask.expand_as(err).sum(dims)).clamp_min(1)


def flow_loss(net, batch: dict, tc: TrainConfig, gen: torch.Generator, device, video: bool = True,
              task_weights=(1.0, 0.0, 0.0), unimodal: bool = False, reward=None, audio: bool = True):
    """Rectified-flow loss on one batch (joint; audio-only with video=False; video-only with audio=False, the
    unimodal pretraining of recipes.py's ovi), with the papers' terms:

      L = w_a mean_b(a_b MSE_audio) + w_v mean_b(MSE_video with DreamID-Omni's mask M_ref and DreamVideo-Omni's
          box weights 1 + lambda_1 M_box) - lambda_2 E[r]  (LIReFL, with a reward model)

    where a_b = 0 for RA2V samples (given their audio, they generate only the video). Returns (loss, stats):
    per-sample t, task (CPU) and loss_audio, loss_video (detached, on `device`: reading them is a device sync,
    left to the logging steps). Every draw comes from `gen`, in a fixed order, so a resumed run repeats it."""
    B = batch["audio"].shape[0]
    t = sample_t(B, tc, gen)
    cond, tasks = step_conditioning(batch, tc, gen, video, task_weights, unimodal, device)
    x0_a = noise_a = x0_v = noise_v = None
    if audio:
        x0_a = batch["audio"].to(device)
        noise_a = torch.randn(x0_a.shape, generator=gen).to(device)
    if video:
        x0_v = batch["video"].to(device)
        noise_v = torch.randn(x0_v.shape, generator=gen).to(device)
    weights = loss_weights(batch, tc, tasks, video, device)
    t_dev = t.to(device)
    pred_v, pred_a, xt_v = rectified_flow(net, x0_v, x0_a, noise_v, noise_a, t_dev, cond)
    loss, stats = 0.0, dict(t=t, task=tasks)
    if audio:
        loss_a = masked_mse(pred_a, noise_a - x0_a, weights["audio_mask"], (1, 2))      # (B,)
        audio_weight = weights["audio_weight"]
        loss = tc.audio_loss_weight * (loss_a * audio_weight).sum() / audio_weight.sum().clamp_min(1)
        stats["loss_audio"] = loss_a.detach()
    if video:
        loss_v = masked_mse(pred_v, noise_v - x0_v, weights["video_mask"], (1, 2, 3, 4), weights["box"])
        loss = loss + tc.video_loss_weight * loss_v.mean()
        stats["loss_video"] = loss_v.detach()
        if reward is not None:  # LIReFL (DreamVideo-Omni): L_sft + lambda_2 * (-E[r])
            # the reference as the reward reads it: a LatentLIRM the latent frame, a pixel LIRM the portrait
            latent = isinstance(reward, reward_lib.LatentLIRM)
            reference = (batch["ref_images"] if latent else batch.get("ref_pixels", batch["ref_images"]))[:, 0]
            r = reward_lib.lirefl_reward(reward, xt_v, t_dev, pred_v, reference.to(device))
            loss = loss - tc.reward_weight * r.mean()
            stats["reward"] = r.detach()
    return loss, stats


# ------------------------------------------------------------------------------------------------
# The papers' terms: what a step conditions on, and where its loss counts
# ------------------------------------------------------------------------------------------------


def step_conditioning(batch: dict, tc: TrainConfig, gen: torch.Generator, video: bool, task_weights, unimodal: bool,
                      device):
    """The step's Conditioning (on `device`) and each sample's task (CPU):
      classifier-free guidance dropout: the prompt, the reference images and the reference voices are each
          dropped with probability --cond_drop, independently, so every negative pass of (multi-condition)
          CFG is in distribution (conditioning.py)
      Identity-as-Presence stage 1 (`unimodal`): every sample keeps exactly one kind of reference
      DreamID-Omni's omni-task mix: each sample is R2AV / RV2AV / RA2V with the odds `task_weights`"""
    B = batch["audio"].shape[0]
    drop_text, drop_images, drop_voices = (torch.rand(B, generator=gen) < tc.cond_drop for _ in range(3))
    if unimodal:
        face_only = torch.rand(B, generator=gen) < 0.5
        drop_images, drop_voices = drop_images | ~face_only, drop_voices | face_only
    tasks = torch.multinomial(torch.tensor(task_weights, dtype=torch.float), B, replacement=True, generator=gen)
    source, driving = task_inputs(batch, tasks, device, task_weights) if video else (None, None)
    cond = Conditioning.from_batch(batch, source, driving)   # dropped on the host, so `to` sees the final masks
    cond = cond.drop_prompt(drop_text).drop_references(drop_images, voices=False).drop_references(drop_voices, images=False)
    return cond.to(device), tasks


def task_inputs(batch: dict, tasks: torch.Tensor, device, task_weights=(1.0, 1.0, 1.0)):
    """Per-sample DreamID-Omni task inputs: RV2AV gets the video with every subject box blanked plus the
    mask as a channel; RA2V gets the clean audio as the driving track; other samples get zeros.

    Whether an input exists is decided by the task mix, not by this batch's draw: every rank must run the
    same parameters, or FSDP2's reduce-scatters (one per unit, over the parameters that have gradients)
    would disagree between a rank that drew an RV2AV sample and one that did not."""
    rv, ra = (tasks == 1), (tasks == 2)  # per-sample flags; task 0 (R2AV) gets neither input
    source = driving = None
    if task_weights[1] > 0:
        mask = batch["source_mask"]
        source = torch.cat([batch["video"] * (1 - mask), mask], dim=2) * rv.view(-1, 1, 1, 1, 1)
        source = source.to(device)
    if task_weights[2] > 0:
        driving = (batch["audio"] * ra.view(-1, 1, 1)).to(device)
    return source, driving


def loss_weights(batch: dict, tc: TrainConfig, tasks: torch.Tensor, video: bool, device) -> dict:
    """Where the loss counts, queued to `device` before the forward (a copy queued after it would make the host
    wait for the forward before it could queue the backward):
      audio_weight  (B,) 0 for RA2V samples (DreamID-Omni: the audio is given, only the video is generated)
      video_mask, audio_mask  DreamID-Omni's masked reconstruction loss (--masked_loss; loss_masks)
      box           DreamVideo-Omni's 1 + lambda_1 M_box (--box_loss_weight; motion.box_weights), or 1"""
    B, shape_a = batch["audio"].shape[0], batch["audio"].shape
    audio_mask, video_mask = torch.ones(B, shape_a[1], 1), None
    if video and tc.masked_loss and "ref_frame" in batch:
        video_mask, audio_mask = loss_masks(batch, batch["video"].shape, shape_a, batch["ref_audio"].shape[2])
    out = dict(audio_mask=audio_mask.to(device, non_blocking=True),
               audio_weight=(tasks != 2).float().to(device, non_blocking=True) if video else torch.ones(B, device=device))
    if video:
        out["video_mask"] = (torch.ones_like(batch["video"][:, :, :1]) if video_mask is None else video_mask).to(
            device, non_blocking=True)
        lam = recipes.box_loss_weight(tc)
        out["box"] = motion.box_weights(batch, batch["video"].shape, lam).to(device, non_blocking=True) \
            if lam and "boxes" in batch else 1.0
    return out


def loss_masks(batch: dict, video_shape, audio_shape, ref_audio_frames: int):
    """DreamID-Omni's masked reconstruction loss: 1 = counted, 0 = where an in-pair reference was cut from
    (that subject's box in that frame; that stretch of audio). Cross-pair references mask nothing.
    Returns (video mask (B, T, 1, H, W), audio mask (B, T_a, 1))."""
    B, T, _, H, W = video_shape
    video_mask = torch.ones(B, T, 1, H, W)
    audio_mask = torch.ones(B, audio_shape[1], 1)
    boxes = relative_boxes(batch)                                                  # (B, K, T, 4) fractions
    for b, k in (batch["ref_frame"] >= 0).nonzero().tolist():
        f = int(batch["ref_frame"][b, k])
        video_mask[b, f, 0][box_masks(boxes[b, k, f], H, W)] = 0
    for b, k in (batch["ref_audio_start"] >= 0).nonzero().tolist():
        start = int(batch["ref_audio_start"][b, k])
        audio_mask[b, start: start + ref_audio_frames] = 0
    return video_mask, audio_mask


# ------------------------------------------------------------------------------------------------
# Schedules: learning rate and EMA decay, functions of the step
# ------------------------------------------------------------------------------------------------


def lr_at(step: int, tc: TrainConfig, cosine: bool = True) -> float:
    """Linear warmup, then (cosine=True) cosine from lr down to lr * min_lr_ratio over decay_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if not cosine:
        return tc.lr
    decay = tc.decay_steps or recipes.total_steps(tc)
    progress = min(1.0, (step - tc.warmup_steps) / max(1, decay - tc.warmup_steps))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_decay_at(step: int, tc: TrainConfig) -> float:
    """EMA decay with warm-up: (1 + step) / (10 + step), capped at ema_decay."""
    return min(tc.ema_decay, (1 + step) / (10 + step))


# ------------------------------------------------------------------------------------------------
# Distributed setup (a run's checkpoint: checkpoint.py)
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


# ------------------------------------------------------------------------------------------------
# Building a run: configs -> model on the meta device -> wrap (compile, FSDP2) -> weights -> EMA, optimizer
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds between steps."""
    tc: TrainConfig
    mcfg: build.ModelConfig
    wcfg: data.WorldConfig
    net: model_lib.TwinTower          # the module (FSDP2 shards it in place)
    wrapped: torch.nn.Module          # what the forward goes through (DDP wraps `net`)
    opt: torch.optim.Optimizer
    ema: dict                         # name -> fp32 EMA weight, sharded like the parameter
    frozen: set                       # parameter names an audio-only step must not update
    rank: int
    world: int
    device: torch.device
    step: int = 0
    log_window: dict = dataclasses.field(default_factory=dict)  # Logger.state() at the last save; a resume continues it
    lora_base: str = ""               # LoRA: the frozen weights the adapters modify (--init_from when the run began)
    lora_fingerprint: str = ""        # LoRA: checkpoint.fingerprint of that base, recorded with the adapters
    reward: object = None             # LIReFL: the frozen LIRM (reward.py), or None
    codec: object = None              # a latent model on the toy world: its codec.ToyCodec, or None

    @property
    def precision(self) -> str:
        """The regime this run computes in: --precision, or the device's default (bf16 on CUDA)."""
        return precision_lib.resolve(self.tc.precision, self.device)

    @property
    def data_rank(self) -> int:
        """Which share of the data this rank reads: the ranks of a sequence group read the same samples."""
        return self.rank // self.tc.seq_parallel

    @property
    def data_world(self) -> int:
        return self.world // self.tc.seq_parallel

    @property
    def fsdp(self) -> bool:
        return self.world > 1 and self.tc.fsdp


def run_configs(tc: TrainConfig, model_overrides: dict, world_overrides: dict, resume: dict | None,
                init: dict | None):
    """(ModelConfig, WorldConfig): a resumed run keeps its own; an --init_from checkpoint of ours brings its
    model; otherwise the preset with the command line's overrides."""
    wcfg = dataclasses.replace(data.WorldConfig(), **(world_overrides or {}))
    asked = dataclasses.replace(build.PRESETS[tc.config], **(model_overrides or {}))
    if resume is not None:  # the run's own model and world; flags asking for others would silently lose
        path = resume.get("sharded", os.path.join(tc.out_dir, "ckpt.pt"))
        mcfg, saved_world = checkpoint.config_from_checkpoint(resume, path), checkpoint.world_from_checkpoint(resume, path)
        for saved, wanted in ((mcfg, asked), (saved_world, wcfg)):
            differ = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(wanted, f.name)]
            if differ:
                raise checkpoint.CheckpointError(
                    f"--out_dir {tc.out_dir} holds a run of another {'model' if saved is mcfg else 'world'} ("
                    + ", ".join(f"--{n} {getattr(saved, n)} there, {getattr(wanted, n)} asked" for n in differ[:2])
                    + "): resume it with the flags it was started with, or give a new --out_dir")
        return mcfg, saved_world
    if init is not None:
        mcfg, differ = fine_tune_config(checkpoint.config_from_checkpoint(init, tc.init_from), asked, model_overrides)
        if differ:  # silently training the checkpoint's model (or the asked one from scratch) is what nobody wants
            raise checkpoint.CheckpointError(
                f"--init_from {tc.init_from} is a different model from --config {tc.config} with these flags ("
                + ", ".join(f"{n} {getattr(mcfg, n)} there, {getattr(asked, n)} here" for n in differ[:3])
                + "): give the --config and size flags it was trained with")
        return mcfg, wcfg
    return asked, wcfg


def fine_tune_config(saved, asked, model_overrides: dict | None) -> tuple:
    """(the model an --init_from run trains, the fields where it differs from the one asked for): the saved
    model, with LoRA adapters and the additions given on the command line (build.ADDITION_FIELDS) put on it."""
    adapters = {f: getattr(asked, f) for f in build.LORA_FIELDS}  # LoRA on a full checkpoint: the same model, adapted
    added = {f: v for f, v in (model_overrides or {}).items() if f in build.ADDITION_FIELDS}
    mcfg = dataclasses.replace(saved, **adapters, **added)
    return mcfg, [f.name for f in dataclasses.fields(mcfg) if getattr(mcfg, f.name) != getattr(asked, f.name)]


def build_model(mcfg, tc: TrainConfig, world: int, device) -> model_lib.TwinTower:
    """The model on the meta device (no memory), wrapped per layer, then real storage on `device`.

    torchtitan's order: activation checkpointing, compile each TwinLayer in place, FSDP2 (`fully_shard`
    each TwinLayer -- both towers' block i, one all-gather unit -- then the root). Under FSDP2 each rank
    then allocates only its shards: the 11.7B model is never whole on any rank."""
    with torch.device("meta"):
        net = build.build_model(mcfg)
    regime = precision_lib.resolve(tc.precision, device)
    for name, p in net.named_parameters():  # LoRA: the backbone is frozen (before FSDP2 groups the parameters)
        p.requires_grad_(lora.trains(net, name) and not (tc.freeze_text and name.startswith("prompt.text_encoder.")))
        if not p.requires_grad:  # and stored in the compute dtype: bf16 (2 B, memory.py) under --precision bf16
            p.data = p.data.to(precision_lib.compute_dtype(regime))
    for layer in net.layers:
        layer.grad_ckpt = tc.grad_ckpt
    if tc.seq_parallel > 1:  # groups of consecutive ranks share a sample; a plain attribute, not a module
        seqpar.apply(net, tc.seq_parallel)
    if tc.compile:
        for layer in net.layers:
            layer.compile()
    if world > 1 and tc.fsdp:
        from torch.distributed.fsdp import fully_shard
        mp = precision_lib.fsdp_policy(regime)  # bf16 gathers, fp32 reductions; inputs left to autocast
        mesh = fsdp_mesh(tc, world, device)
        for layer in net.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(net, mesh=mesh, mp_policy=mp)
    return net.to_empty(device=device)


def load_text_init(net, tc: TrainConfig, mcfg, wcfg, rank: int, world: int):
    """--text_init: the toy text encoder pretrained on the world's captions (text.py), made by rank 0 if missing."""
    if rank == 0:
        text_lib.ensure_pretrained(tc.text_init, mcfg, wcfg)
    if world > 1:
        dist.barrier()
    state = text_lib.load_text_encoder(tc.text_init, mcfg, wcfg.tokenizer)
    checkpoint.load_state(net.prompt.text_encoder, state, f"--text_init {tc.text_init}")


def reward_model(path: str, wcfg, codec):
    """LIReFL's frozen reward: the paper's LatentLIRM reads a latent model's estimate as it is; a pixel LIRM reads
    a pixel model's, or a latent model's decoded (reward.DecodedReward)."""
    lirm = reward_lib.load_lirm(path, wcfg)
    if isinstance(lirm, reward_lib.LatentLIRM):
        if codec is None or lirm.backbone.cfg.video_channels != codec.cfg.video_channels:
            raise checkpoint.CheckpointError(f"--reward_model {path}: reads the latents of a mini-Ovi model; this run's "
                                             "video is not on its grid")
        return lirm
    return reward_lib.DecodedReward(lirm, codec) if codec is not None else lirm


def run_codec(tc: TrainConfig, mcfg, wcfg, saved: dict | None, rank: int, world: int):
    """The toy's latent codec of a latent model on the toy world (None otherwise): the one a resumed or
    fine-tuned checkpoint carries (its latents must mean what they meant), else --codec's file, trained
    there first by rank 0 if it does not exist yet."""
    if tc.data != "toy" or mcfg.video_channels == 3 or tc.config == "full":  # full: Wan2.2 / MMAudio latents
        return None
    if saved is not None and "codec" in saved:
        return codec_lib.ToyCodec.from_state(saved["codec"])
    if rank == 0:  # one cached codec serves every run: trained on the whole world, whatever scene this run reads
        codec = codec_lib.load_or_train(tc.codec, dataclasses.replace(wcfg, scene="mixed", min_subjects=1, max_subjects=3))
    if world > 1:
        dist.barrier()  # rank 0 has written the file
    if rank != 0:
        codec = codec_lib.load_codec(tc.codec)
    bad = data.model_fit_problems(mcfg, wcfg, tc.config, codec.cfg)
    if bad:
        raise codec_lib.CodecError(f"--codec {tc.codec}: {bad[0]}")
    return codec


def shard_group_size(tc: TrainConfig, world: int) -> int:
    """How many ranks shard the weights among themselves: --shard_group, or one node (torchrun's LOCAL_WORLD_SIZE)."""
    return tc.shard_group or int(os.environ.get("LOCAL_WORLD_SIZE", world))


def fsdp_mesh(tc: TrainConfig, world: int, device):
    """FSDP2's device mesh. Within a node (NVLink) every rank holds 1/g of the weights; across nodes a flat mesh
    would all-gather and reduce-scatter the whole model over the slower network every step (~93 GB per GPU
    at Ovi's size). HSDP instead shards within groups of g ranks and replicates across the groups: across
    nodes only the gradient shards are all-reduced (torchtitan's data_parallel_replicate x shard)."""
    from torch.distributed.device_mesh import init_device_mesh
    g = shard_group_size(tc, world)
    if g == world:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // g, g), mesh_dim_names=("replicate", "shard"))


def fill_weights(net, tc: TrainConfig, resume: dict | None, init: dict | None):
    """Weights from (in order) the run's own checkpoint, --init_from (ours, or Ovi's safetensors: the
    backbone from Ovi, our additions initialised), or a fresh initialisation from the seed. Each rank
    fills only the rows it holds. LoRA: the frozen base from --init_from (recorded as the checkpoint's
    lora_base), fresh adapters, then a resumed run's own adapters and additions."""
    if net.cfg.lora_rank:
        base = resume.get("lora_base", tc.init_from) if resume is not None else tc.init_from
        if resume is not None:  # the adapters trained so far belong to the base as it was
            checkpoint.check_fingerprint(resume, base, os.path.join(tc.out_dir, "ckpt.pt"))
        log = print if int(os.environ.get("RANK", 0)) == 0 else (lambda *_: None)
        net.init_weights(seed=tc.seed, only=checkpoint.load_base(net, base, log=log))
        if resume is not None and "model" in resume:
            checkpoint.load_state(net, resume["model"], os.path.join(tc.out_dir, "ckpt.pt"),
                                  names={n for n, _ in net.named_parameters() if lora.trains(net, n)})
    elif resume is not None and "sharded" in resume:
        pass  # every weight comes from the sharded folder (start_run), nothing to initialise first
    elif resume is not None:
        checkpoint.load_state(net, resume["model"], os.path.join(tc.out_dir, "ckpt.pt"))
    elif init is not None:  # what the checkpoint holds; the additions it lacks (build.ADDITION_FIELDS) start fresh
        net.init_weights(seed=tc.seed, only=checkpoint.load_base(net, tc.init_from, ckpt=init))
    elif tc.init_from:  # Ovi's released weights
        log = print if int(os.environ.get("RANK", 0)) == 0 else (lambda *_: None)
        fresh = checkpoint.load_ovi_weights(net, tc.init_from, log=log)["fresh"]
        net.init_weights(seed=tc.seed, only=set(fresh))
    else:
        net.init_weights(seed=tc.seed)


def make_ema(net, source: dict | None) -> dict:
    """The EMA of the weights, created once after wrapping: each entry is sharded like its parameter (FSDP2:
    a DTensor shard), so no rank holds a full fp32 copy. Resumes from `source["ema"]` when there is one."""
    ema = {n: p.detach().float().clone() for n, p in net.named_parameters() if p.requires_grad}  # LoRA: no frozen copy
    if source is not None and "ema" in source:
        for n, e in ema.items():
            if n in source["ema"]:  # LoRA from a full checkpoint: its adapters start their EMA fresh
                sharded.copy_rows(e, lambda a, b, t=source["ema"][n]: t[a:b])
    return ema


def make_optimizer(net, tc: TrainConfig):
    """AdamW with two groups: the additions -- every module Ovi does not have (net.is_addition): the prompt side,
    task inputs, each paper's modules -- on a cosine to a tenth (Omni-Customizer 5.1), and the backbone (cosine
    or constant, --backbone_lr_schedule; under LoRA its adapters)."""
    new = [p for n, p in net.named_parameters() if net.is_addition(n)]
    old = [p for n, p in net.named_parameters() if not net.is_addition(n) and p.requires_grad]  # LoRA: adapters
    return torch.optim.AdamW([dict(params=old, cosine=tc.backbone_lr_schedule == "cosine"),
                              dict(params=new, cosine=True)], lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)


def start_run(tc: TrainConfig, model_overrides, world_overrides, rank: int, world: int, device) -> Run:
    """Build (or resume) the run in tc.out_dir."""
    if rank == 0:
        checkpoint.remove_partial_writes(tc.out_dir)
    point = checkpoint.resume_point(tc, rank, world)
    resume = checkpoint.read_resume(point)
    if resume is not None and tc.init_from and rank == 0:  # the run's own weights move on from where it stopped
        print(f"note: resuming {point} at step {resume['step']}; --init_from {tc.init_from} is not read again")
    # --init_from of ours (e.g. the previous stage); Ovi's safetensors are read tensor by tensor in fill_weights
    init = checkpoint.load_checkpoint(tc.init_from) if tc.init_from and resume is None and \
        not checkpoint.is_ovi_checkpoint(tc.init_from) else None
    mcfg, wcfg = run_configs(tc, model_overrides, world_overrides, resume, init)
    torch.manual_seed(tc.seed)  # the same on every rank (weights come from init_weights' own generators)
    net = build_model(mcfg, tc, world, device)
    fill_weights(net, tc, resume, init)
    if tc.text_init and resume is None and init is None:  # a fresh run: the pretrained encoder replaces its init
        load_text_init(net, tc, mcfg, wcfg, rank, world)
    wrapped = net
    if world > 1 and not tc.fsdp:
        # find_unused_parameters: task-input projections (and the video tower in audio-only steps) may idle
        wrapped = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    run = Run(tc, mcfg, wcfg, net, wrapped, make_optimizer(net, tc), make_ema(net, resume or init),
              set(net.declared("video_side")), rank, world, device)
    if mcfg.lora_rank:
        run.lora_base = (resume or {}).get("lora_base", tc.init_from)
        run.lora_fingerprint = (resume or {}).get("lora_base_fingerprint") or checkpoint.fingerprint(run.lora_base)
    run.codec = run_codec(tc, mcfg, wcfg, resume or init, rank, world)
    if tc.reward_model:
        run.reward = reward_model(tc.reward_model, wcfg, run.codec).to(device)
    if resume is not None and "sharded" in resume:  # every rank reads its own shards, in place
        sharded.load(net, run.ema, run.opt, resume["sharded"], resume)
    elif resume is not None:
        if run.fsdp:  # a ckpt.pt of an earlier version's FSDP2 run: full tensors, each rank keeps its rows
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            # strict=False: parameters that never had a gradient (unused task inputs) have no Adam state yet
            set_optimizer_state_dict(net, run.opt, resume["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            run.opt.load_state_dict(resume["optimizer"])
    if resume is not None:
        run.step = resume["step"]
        run.log_window = resume.get("log_window", {})
        torch.set_rng_state(resume["rng"])  # noise and data are functions of the step; this covers the rest
    return run


# ------------------------------------------------------------------------------------------------
# The loop: one optimizer step (grad accumulation, audio-only freezing, EMA), then log and save
# ------------------------------------------------------------------------------------------------


def gradient_sync(run: Run, last: bool):
    """DDP: accumulate locally over micro-steps and all-reduce on the last one only. FSDP2: reduce-scatter on
    every micro-step into the fp32 gradient shards (torchtitan's default): skipping the sync would keep an
    unsharded fp32 gradient of every parameter until the last micro-step (~47 GB per GPU at full size)."""
    if run.world == 1 or run.fsdp or last:
        return contextlib.nullcontext()
    return run.wrapped.no_sync()


def train_step(run: Run, plan: dict, next_batch) -> dict:
    """One optimizer step (grad_accum micro-steps), then the EMA. Returns device tensors (no sync)."""
    tc = run.tc
    for group in run.opt.param_groups:
        group["lr"] = lr_at(run.step, tc, group["cosine"])
    # t, noise and dropout of this step = f(seed, rank, step): distinct per rank, replayed exactly on resume
    # (the ranks of a sequence group share one sample: the same data rank, the same noise)
    gen = torch.Generator().manual_seed(hash((tc.seed, run.data_rank, run.step)) % (2 ** 63))
    spec = recipes.stage_spec(tc, plan["stage"]) or {}
    mix = spec.get("task_mix") or tc.task_mix
    # a joint step runs both towers; otherwise one tower alone (audio-only: Inter-TTS; video-only: ovi's stage 1)
    video_only = plan.get("video_only", False)
    joint = not (plan["audio_only"] or video_only)
    out = dict(loss=0.0, loss_video=0.0, loss_audio=0.0, t=[], per_sample=[], joint=joint, video_only=video_only)
    for micro in range(tc.grad_accum):
        batch = next_batch(plan)
        with gradient_sync(run, last=micro == tc.grad_accum - 1), precision_lib.autocast(run.device, run.precision):
            loss, stats = flow_loss(run.wrapped, batch, tc, gen, run.device, video=not plan["audio_only"],
                                    task_weights=[float(x) for x in mix.split(",")], unimodal=spec.get("unimodal", False),
                                    reward=run.reward if spec.get("reward", True) else None, audio=not video_only)
        # gradients add up over micro-steps: average them. Sequence parallel: DDP / FSDP2 average over all
        # ranks, but a group's ranks each hold a share of one sample's gradient, to be summed: x N
        (loss * tc.seq_parallel / tc.grad_accum).backward()
        out["loss"] = out["loss"] + loss.detach() / tc.grad_accum
        if video_only:
            out["loss_video"] = out["loss_video"] + stats["loss_video"].mean() / tc.grad_accum
            out["t"].append(stats["t"])
            out["per_sample"].append(stats["loss_video"])
            continue
        out["loss_audio"] = out["loss_audio"] + stats["loss_audio"].mean() / tc.grad_accum
        if joint:
            out["loss_video"] = out["loss_video"] + stats["loss_video"].mean() / tc.grad_accum
            out["t"].append(stats["t"])
            out["per_sample"].append(stats["loss_video"] + stats["loss_audio"])
            if "reward" in stats:  # LIReFL: watch the reward next to the losses (reward hacking shows as both moving)
                out.setdefault("reward", []).append(stats["reward"].mean())
    if plan["audio_only"]:  # the cross-tower pathway and the video tower stay exactly as they are
        for n, p in run.net.named_parameters():
            if n in run.frozen:
                p.grad = None
    out["grad_norm"] = torch.nn.utils.clip_grad_norm_(run.net.parameters(), tc.grad_clip)  # before clipping
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    update_ema(run, not plan["audio_only"])
    return out


@torch.no_grad()
def update_ema(run: Run, joint: bool):
    """ema <- decay * ema + (1 - decay) * weights, with a warm-up (early on the EMA follows closely, else a
    short run's EMA is mostly the initial weights); frozen weights are skipped in audio-only steps."""
    decay = ema_decay_at(run.step, run.tc)
    pairs = [(sharded.local_shard(run.ema[n]), sharded.local_shard(p.detach()))
             for n, p in run.net.named_parameters() if n in run.ema and (joint or n not in run.frozen)]
    if pairs:  # one fused call over every local shard, not one DTensor dispatch per parameter
        torch._foreach_lerp_([e for e, _ in pairs], [p.float() for _, p in pairs], 1 - decay)


def train(tc: TrainConfig, model_overrides: dict | None = None, world_overrides: dict | None = None,
          on_step=None) -> dict:
    """Train (or resume) a run in tc.out_dir. Returns {"step", "losses": [loss per step]}."""
    tc, model_overrides = recipes.apply_switches(tc, model_overrides)  # what the recipe's paper switches on
    rank, world, device = setup_distributed()  # world = 1 outside torchrun
    precision_lib.enable_tf32(device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    os.makedirs(tc.out_dir, exist_ok=True)
    run = start_run(tc, model_overrides, world_overrides, rank, world, device)
    log_path = os.path.join(tc.out_dir, "log.jsonl")
    if rank == 0 and os.path.exists(log_path):
        progress_lib.keep_log_until(log_path, run.step)  # a fresh run starts a fresh log; a resume drops records it will redo
    logger, next_batch = progress_lib.Logger(run, log_path), recipes.StageData(run)
    max_steps, losses = recipes.total_steps(tc), []
    strip = progress_lib.ProgressStrip(run)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # NaN watch (track_divergence)
    start = time.time()
    progress = progress_lib.progress_bar(None if tc.max_minutes > 0 else max_steps, run.step, rank)  # time-limited: no fake ETA
    while run.step < max_steps:
        plan = recipes.step_plan(run.step, tc)
        out = train_step(run, plan, next_batch)
        first_bad = progress_lib.track_divergence(first_bad, out, run.step)
        run.step += 1
        losses.append(out["loss"])
        logger.add(out)
        progress.update(1)
        stop = False
        logging = run.step % tc.log_every == 0 or run.step == max_steps
        saving = run.step % tc.ckpt_every == 0 or run.step == max_steps
        if logging or saving:  # the only steps that wait for the device
            # before anything is written: a diverged run keeps its last good ckpt.pt
            progress_lib.check_finite(run, first_bad, lambda step: lr_at(step, tc))
        if logging:
            record = logger.write(plan, lr=lr_at(run.step - 1, tc))
            if record is not None:
                progress.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}",
                                     stage=plan["stage"])
            stop = progress_lib.out_of_time(run, start)
            strip.maybe_add(run, (time.time() - start) / 60, final=stop or run.step == max_steps)
        if on_step is not None:
            on_step(run.step, run.net)
        if saving or stop:  # every rank calls save(): collectives
            run.log_window = logger.state()
            checkpoint.save_run(run)
        if stop:
            break
    progress.close()
    if rank == 0:
        progress_lib.plot_losses(log_path, os.path.join(tc.out_dir, "loss.png"))
    where = os.path.join(tc.out_dir, sharded.NAME if run.fsdp else "ckpt.pt")
    return dict(step=run.step, losses=torch.stack(losses).tolist() if losses else [], checkpoint=where,
                max_steps=max_steps, out_of_time=run.step < max_steps)


# ------------------------------------------------------------------------------------------------
# The command line: every flag checked before any work, one line per problem
# ------------------------------------------------------------------------------------------------


def config_problems(tc: TrainConfig, model_overrides: dict, world_overrides: dict) -> list[str]:
    """Every flag value that cannot make a run, each as one line naming the flag and what it needs."""
    problems = []
    if tc.box_loss_weight < 0 and tc.box_loss_weight != -1:  # checked before the recipe fills in its -1
        problems.append(f"--box_loss_weight must be 0 or more (or -1: the recipe's), got {tc.box_loss_weight}")
    tc, model_overrides = recipes.apply_switches(tc, model_overrides)
    for name in ("batch_size", "grad_accum", "log_every", "ckpt_every", "max_steps", "audio_batch_size"):
        if getattr(tc, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(tc, name)}")
    if tc.seed >= 2 ** 63:  # torch.Generator takes a 64-bit seed
        problems.append(f"--seed must be in 0 .. 2**63 - 1, got {tc.seed}")
    for name in ("max_minutes", "warmup_steps", "interleave_audio", "progress_every", "seed", "decay_steps",
                 "threads", "weight_decay", "video_loss_weight", "audio_loss_weight", "reward_weight"):
        if getattr(tc, name) < 0:
            problems.append(f"--{name} must be 0 or more, got {getattr(tc, name)}")
    for name, value in {**dataclasses.asdict(tc), **model_overrides, **world_overrides}.items():
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison above
            problems.append(f"--{name} must be a finite number, got {value}")
    if tc.workers < -1:
        problems.append(f"--workers must be -1 (auto) or 0 or more, got {tc.workers}")
    if not tc.grad_clip > 0:  # clip_grad_norm_ to 0 would zero every gradient
        problems.append(f"--grad_clip must be positive, got {tc.grad_clip}")
    if tc.video_loss_weight + tc.audio_loss_weight <= 0:
        problems.append("--video_loss_weight and --audio_loss_weight are both 0: the run would learn nothing")
    if not (tc.lr >= 0 and tc.t_shift > 0 and tc.t_std > 0):  # lr 0 is allowed: it checks what a run loads
        problems.append(f"--lr must be 0 or more, --t_shift and --t_std positive; got {tc.lr}, {tc.t_shift}, {tc.t_std}")
    if not (0 <= tc.cond_drop <= 1 and 0 <= tc.ema_decay < 1 and 0 <= tc.min_lr_ratio <= 1):
        problems.append("--cond_drop and --min_lr_ratio must be in [0, 1], --ema_decay in [0, 1)")
    if tc.config not in build.PRESETS:
        problems.append(f"--config must be one of {', '.join(build.PRESETS)}, got {tc.config!r}")
    text_layers = model_overrides.get("text_layers", build.PRESETS.get(tc.config, build.PRESETS["toy"]).text_layers)
    if (tc.text_init or tc.freeze_text) and (text_layers == 0 or tc.data != "toy"):
        problems.append("--text_init and --freeze_text act on the toy's own text encoder over toy captions; this run "
                        "reads precomputed text features (real prompts are umT5's, which Ovi never trains)")
    if model_overrides.get("lora_rank", 0) and not tc.init_from:
        problems.append("--lora_rank adapts pretrained weights: give them with --init_from (Ovi's or a ckpt.pt)")
    try:
        mix = [float(x) for x in tc.task_mix.split(",")]
        if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
            raise ValueError
    except ValueError:
        problems.append(f"--task_mix takes three non-negative weights R2AV,RV2AV,RA2V, not all 0; got {tc.task_mix!r}")
    if tc.precision not in ("", *precision_lib.CHOICES):
        problems.append(f"--precision must be bf16 or fp32 (or empty: bf16 on CUDA, fp32 elsewhere), got {tc.precision!r}")
    if tc.backbone_lr_schedule not in ("cosine", "constant"):
        problems.append(f"--backbone_lr_schedule must be cosine or constant, got {tc.backbone_lr_schedule!r}")
    mcfg = dataclasses.replace(build.PRESETS.get(tc.config, build.PRESETS["toy"]), **model_overrides)
    wcfg = dataclasses.replace(data.WorldConfig(), **world_overrides)
    problems += recipes.recipe_problems(tc, model_overrides) + build.config_problems(mcfg) + data.world_problems(wcfg)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if tc.shard_group < 0 or (tc.fsdp and world % shard_group_size(tc, world)):
        problems.append(f"--shard_group {tc.shard_group} must be 0 (one node) or divide the ranks ({world})")
    if tc.seq_parallel < 1 or world % tc.seq_parallel or mcfg.heads % tc.seq_parallel:
        problems.append(f"--seq_parallel {tc.seq_parallel} must divide the ranks ({world}) and --heads ({mcfg.heads})")
    elif tc.seq_parallel > 1 and (mcfg.ref_mode == "presence" or tc.compile):
        problems.append("--seq_parallel supports ref_mode concat without --compile (see seqpar.py)")
    if tc.data == "toy" and not problems:  # a latent model reads the toy through the codec train.py would make
        codec_cfg = codec_lib.CodecConfig() if mcfg.video_channels != 3 and tc.config != "full" else None
        problems += data.model_fit_problems(mcfg, wcfg, tc.config, codec_cfg)
    return problems + out_dir_problems(tc.out_dir)


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__.split("\n")[0])
    add_dataclass_flags(parser, TrainConfig)
    add_dataclass_flags(parser, build.ModelConfig, defaults_none=True)   # override the preset
    add_dataclass_flags(parser, data.WorldConfig, defaults_none=True)         # override the toy world
    args = vars(parser.parse_args(argv))
    tc = TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(TrainConfig)})
    pick = lambda cls: {f.name: args[f.name] for f in dataclasses.fields(cls) if args[f.name] is not None}  # noqa: E731
    model_overrides, world_overrides = pick(build.ModelConfig), pick(data.WorldConfig)
    problems = config_problems(tc, model_overrides, world_overrides)
    if problems:  # all of them at once, one line each, before any work
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    return tc, model_overrides, world_overrides


def main():
    tc, model_overrides, world_overrides = parse_args()
    try:
        out = train(tc, model_overrides, world_overrides)
    except (checkpoint.CheckpointError, shards.ShardError, progress_lib.Diverged, codec_lib.CodecError) as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:  # a full disk, a folder made read-only during the run: one line, not a traceback
        raise SystemExit(f"error: --out_dir {tc.out_dir}: cannot write ({e.strerror or e}); give a writable folder")
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {out['step']}, checkpoint {out['checkpoint']}")
        if out["out_of_time"]:  # the cosine was planned over max_steps: it stopped part of the way down
            print(f"note: --max_minutes {tc.max_minutes:g} stopped the run at step {out['step']} of {out['max_steps']}: "
                  f"the learning-rate cosine was cut short at lr {lr_at(out['step'], tc):.3g}; run the same command "
                  "again to resume it, or set --max_steps to the steps that fit the time")
        if out["checkpoint"].endswith(sharded.NAME):
            print(f"      (sharded: `python sharded.py {out['checkpoint']}` writes the ckpt.pt that sample.py reads)")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
