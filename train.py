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


@dataclass
class TrainConfig:
    config: str = "toy"                # model preset: toy | small | full
    out_dir: str = "out/toy"
    data: str = "toy"                  # "toy", or a glob of latent shards (data.SHARD_FIELDS)
    max_steps: int = 100000
    max_minutes: float = 0.0           # stop (and save) after this much wall time; 0 = no limit
    batch_size: int = 8                # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    decay_steps: int = 6000            # length of the cosine (steps past it stay at the floor)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_mean: float = 0.0                # logit-normal t: sigmoid(N(t_mean, t_std))
    t_std: float = 1.0
    t_shift: float = 1.0               # >1 moves training time toward noise (SD3 / Ovi's shift)
    video_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    cond_drop: float = 0.1             # drop the caption / references independently, so CFG has an unconditional
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
                phoneme_mask=batch.get("phoneme_mask", batch["line_phonemes"] > 0))
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
    return cond


def flow_loss(net, batch: dict, tc: TrainConfig, gen: torch.Generator, device, video: bool = True):
    """Rectified-flow loss on one batch. Returns (loss, per-sample stats dict)."""
    audio = batch["audio"].to(device)
    B = audio.shape[0]
    t = sample_t(B, tc, gen)
    drop_text, drop_refs = (torch.rand(B, generator=gen) < tc.cond_drop for _ in range(2))
    noise_a = torch.randn(audio.shape, generator=gen).to(device)
    t_dev = t.to(device)
    xt_a = (1 - t_dev[:, None, None]) * audio + t_dev[:, None, None] * noise_a   # x_t = (1-t) x0 + t noise
    xt_v = target_v = None
    if video:
        x0_v = batch["video"].to(device)
        noise_v = torch.randn(x0_v.shape, generator=gen).to(device)
        tv = t_dev.view(B, 1, 1, 1, 1)
        xt_v, target_v = (1 - tv) * x0_v + tv * noise_v, noise_v - x0_v          # v = noise - x0
    cond = model_inputs(batch, device, drop_text.to(device), drop_refs.to(device))
    pred_v, pred_a = net(xt_v, xt_a, t_dev, **cond)
    loss_a = F.mse_loss(pred_a.float(), (noise_a - audio).float(), reduction="none").mean((1, 2))  # (B,)
    loss = tc.audio_loss_weight * loss_a.mean()
    stats = dict(t=t, loss_audio=loss_a.detach().cpu())
    if video:
        loss_v = F.mse_loss(pred_v.float(), target_v.float(), reduction="none").mean((1, 2, 3, 4))
        loss = loss + tc.video_loss_weight * loss_v.mean()
        stats["loss_video"] = loss_v.detach().cpu()
    return loss, stats


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine from lr down to lr * min_lr_ratio over decay_steps."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.decay_steps - tc.warmup_steps))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
    rank, world, device = setup_distributed()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    os.makedirs(tc.out_dir, exist_ok=True)
    ckpt_path = os.path.join(tc.out_dir, "ckpt.pt")
    resume = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None
    if resume is not None:  # the run's own configuration wins: a resume continues the same run
        mcfg = model_lib.ModelConfig(**resume["model_config"])
        wcfg = data.WorldConfig(**resume["world_config"])
    else:
        mcfg = dataclasses.replace(model_lib.PRESETS[tc.config], **(model_overrides or {}))
        wcfg = dataclasses.replace(data.WorldConfig(), **(world_overrides or {}))

    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    net = model_lib.TwinTower(mcfg).to(device)
    net.grad_ckpt = tc.grad_ckpt
    if resume is not None:
        net.load_state_dict(resume["model"])
    # EMA of the weights (kept in fp32 on every rank; DiT's six lines)
    ema = {n: p.detach().clone().float() for n, p in net.named_parameters()}
    if resume is not None and "ema" in resume:
        ema = {n: resume["ema"][n].to(device).float() for n in ema}
    if tc.compile:
        for layer in net.layers:      # per block, in place (torchtitan's order: ckpt, compile, shard)
            layer.compile()
    wrapped = net
    if world > 1 and tc.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if device.type == "cuda" else MixedPrecisionPolicy()
        for layer in net.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(net, mp_policy=mp)
        ema = {n: p.detach().clone().float() for n, p in net.named_parameters()} if resume is None else \
            {n: _shard_like(resume["ema"][n], p) for n, p in net.named_parameters()}
    elif world > 1:
        # find_unused_parameters: task-input projections (and the video tower in audio-only steps) may idle
        wrapped = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
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
        torch.set_rng_state(resume["rng"])

    # data: each rank its own stream; position = micro-batches consumed
    start_batch = step * tc.grad_accum
    if tc.data == "toy":
        dataset = data.ToyBatches(wcfg, tc.batch_size, seed=tc.seed, rank=rank, start_batch=start_batch)
    else:
        dataset = data.LatentShards(tc.data, tc.batch_size, seed=tc.seed, rank=rank, world=world,
                                    start_batch=start_batch)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=tc.workers))
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
            save_atomic(dict(model=state, ema=ema_state, optimizer=opt_state, step=step, rng=torch.get_rng_state(),
                             model_config=dataclasses.asdict(mcfg), world_config=dataclasses.asdict(wcfg),
                             train_config=dataclasses.asdict(tc), data_position=step * tc.grad_accum), ckpt_path)
        if world > 1:
            dist.barrier()

    log_path = os.path.join(tc.out_dir, "log.jsonl")
    if resume is None and rank == 0 and os.path.exists(log_path):
        os.remove(log_path)  # a fresh run starts a fresh log
    losses, window, bins = [], [], {}
    start_time, window_start, samples_in_window = time.time(), time.time(), 0
    progress = _progress_bar(None if tc.max_minutes > 0 else tc.max_steps, step, rank)  # time-limited: no fake ETA
    while step < tc.max_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        gen = torch.Generator().manual_seed(hash((tc.seed, rank, step)) % (2 ** 63))  # noise = f(seed, rank, step)
        step_loss, step_v, step_a = 0.0, 0.0, 0.0
        for micro in range(tc.grad_accum):
            batch = next(loader)
            last = micro == tc.grad_accum - 1
            sync = contextlib.nullcontext()
            if world > 1 and not last:  # accumulate locally; all-reduce once on the last micro-step
                sync = wrapped.no_sync() if not tc.fsdp else contextlib.nullcontext()
                if tc.fsdp:
                    net.set_requires_gradient_sync(False)
            elif world > 1 and tc.fsdp:
                net.set_requires_gradient_sync(True)
            with sync, autocast:
                loss, stats = flow_loss(wrapped, batch, tc, gen, device)
            (loss / tc.grad_accum).backward()
            step_loss += loss.item() / tc.grad_accum
            step_v += stats["loss_video"].mean().item() / tc.grad_accum
            step_a += stats["loss_audio"].mean().item() / tc.grad_accum
            for t_i, lv, la in zip(stats["t"].tolist(), stats["loss_video"].tolist(), stats["loss_audio"].tolist()):
                bins.setdefault(min(int(t_i * 4), 3), []).append(lv + la)
            samples_in_window += tc.batch_size * world
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, p in net.named_parameters():
                ema[n].lerp_(p.detach().float(), 1 - tc.ema_decay)
        step += 1
        losses.append(step_loss)
        window.append((step_loss, step_v, step_a))
        progress.update(1)
        if step % tc.log_every == 0 or step == tc.max_steps:
            elapsed = time.time() - window_start
            record = dict(step=step, loss=_mean(w[0] for w in window), loss_video=_mean(w[1] for w in window),
                          loss_audio=_mean(w[2] for w in window), samples_per_s=samples_in_window / max(elapsed, 1e-9),
                          lr=lr_at(step - 1, tc), grad_norm=float(grad_norm),
                          loss_by_t={f"{b / 4:.2f}-{(b + 1) / 4:.2f}": _mean(v) for b, v in sorted(bins.items())},
                          minutes=(time.time() - start_time) / 60)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
            window, bins, window_start, samples_in_window = [], {}, time.time(), 0
        if on_step is not None:
            on_step(step)
        out_of_time = tc.max_minutes > 0 and (time.time() - start_time) / 60 >= tc.max_minutes
        if world > 1:  # every rank must agree to stop, or the next collective hangs
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % tc.ckpt_every == 0 or step == tc.max_steps or out_of_time:
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
    if len(records) < 2:
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
    for key, colour in series.items():
        draw.line([(x_of(r["step"]), y_of(r[key])) for r in records], fill=colour, width=2)
    draw.text((pad, 10), f"loss (black), video (blue), audio (red); log10 {lo:.2f}..{hi:.2f}; "
                         f"steps {steps[0]}..{steps[-1]}", fill="black")
    img.save(png_path)


def main():
    tc, model_overrides, world_overrides = parse_args()
    try:
        out = train(tc, model_overrides, world_overrides)
    except (CheckpointError, data.ShardError) as e:
        raise SystemExit(f"error: {e}") from None
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"done: step {out['step']}, checkpoint {os.path.join(tc.out_dir, 'ckpt.pt')}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
