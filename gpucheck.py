"""The GPU self-check a user runs first on a new machine: `python bench.py --gpu_check`.

Everything here is verified on the CPU by the test suite (the CPU rehearses CUDA's precision regime,
precision.py); this check is what only a GPU can show. On the first GPU, for one model (default: the toy
preset at batch 8) it runs and compares:

  precision   the same batch, weights and noise through the model eager in fp32, eager under
              --precision bf16, and compiled (torch.compile per TwinLayer) under bf16: each bf16 loss
              within BF16_RTOL of fp32, compiled within COMPILE_RTOL of eager
  kernels     every attention call of one bf16 forward, grouped by shape, and the SDPA kernel PyTorch's
              dispatcher picks for it (torch._fused_sdp_choice, the function F.scaled_dot_product_attention
              itself asks): flash where nothing is masked, memory-efficient where a key mask is needed
  speed       a training step (forward, backward, AdamW) under bf16: median time, samples/s
  memory      the step's peak allocated memory against the memory plan's prediction (memory.py) for the
              same model, batch and tokens: a peak above PLAN_SLACK x the plan means the plan is wrong
  FSDP2       with several local GPUs: train.py under torchrun on all of them (FSDP2, bf16,
              --grad_ckpt, --grad_accum 2), three steps to finite losses

`--config full` checks Ovi's size instead, on a synthetic 5 s clip in the shard format (random latents and
text features: no weights, no data): the memory plan's one-GPU row (LoRA 64 on the frozen bf16 base,
--grad_ckpt, batch 1) -- its step time, its peak memory against the plan, the SDPA kernels at Ovi's head
size, and one forward pass (what each sampling step costs, before guidance doubles it).

It exits non-zero on any mismatch. Without a GPU it says so in one line (exit 1); `--device cpu` runs the
same checks on the CPU (no memory figures), which is how the tests exercise this file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import torch

import attention
import bench
import build
import data
import memory
import precision
import train

BF16_RTOL = 0.05      # bf16 vs fp32 loss of one step, from the same weights (the CPU tests see < 2%)
COMPILE_RTOL = 0.01   # compiled vs eager, both bf16: the same arithmetic, fused differently
PLAN_SLACK = 1.25     # measured peak / predicted peak above this: the memory plan misses something


def setup(cfg, batch_size: int, device, seed: int = 0):
    """A model with every path active and a fixed toy batch. At initialisation the gates and heads are zero
    (adaLN-zero), so the prediction is exactly 0 whatever the precision: the weights are nudged off it."""
    torch.manual_seed(seed)
    net = build.build_model(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.02)
    batch = data.ToyBatches(data.WorldConfig(), batch_size, seed=seed).make_batch(0)
    return net.to(device), batch


def loss_of(net, batch, device, regime: str) -> float:
    """One flow-matching loss on fixed t and noise (train.flow_loss with a seeded generator), no dropout."""
    tc = train.TrainConfig(cond_drop=0.0)
    with torch.no_grad(), precision.autocast(device, regime):
        loss, _ = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), device)
    return loss.item()


def check_precision(cfg, batch_size, device, compile_too: bool) -> tuple[list[str], list[str]]:
    """(lines to print, mismatches): fp32 vs bf16 vs compiled bf16 on one batch."""
    net, batch = setup(cfg, batch_size, device)
    fp32 = loss_of(net, batch, device, "fp32")
    # bf16 weights, as FSDP2 gathers them: the fp32 islands (precision.py) must cope with bf16 weights too
    bf16 = loss_of(net.to(torch.bfloat16), batch, device, "bf16")
    lines = [f"precision: loss fp32 {fp32:.5f}, bf16 {bf16:.5f} ({(bf16 - fp32) / fp32:+.2%})"]
    bad = [] if abs(bf16 - fp32) <= BF16_RTOL * fp32 else [f"bf16 loss {bf16:.5f} is not within {BF16_RTOL:.0%} of fp32 {fp32:.5f}"]
    if compile_too:  # train.py --compile: each TwinLayer compiled in place; the first call pays for compiling
        for layer in net.layers:
            layer.compile()
        start = time.time()
        compiled = loss_of(net, batch, device, "bf16")
        lines.append(f"           compiled bf16 {compiled:.5f} ({(compiled - bf16) / bf16:+.2%} vs eager; "
                     f"first call {time.time() - start:.0f} s)")
        if abs(compiled - bf16) > COMPILE_RTOL * abs(bf16):
            bad.append(f"compiled loss {compiled:.5f} is not within {COMPILE_RTOL:.0%} of eager {bf16:.5f}")
    return lines, bad


def sdpa_choice(q, k, v, mask) -> str:
    """The kernel F.scaled_dot_product_attention dispatches these inputs to: torch._fused_sdp_choice is the
    function SDPA itself asks, so this is what runs, not a guess from the shapes."""
    from torch.nn.attention import SDPBackend
    return SDPBackend(torch._fused_sdp_choice(q, k, v, mask)).name.lower()


def check_kernels(cfg, batch_size, device) -> tuple[list[str], list[str]]:
    """Every attention call of one bf16 forward (both towers and the prompt side), grouped by (q shape,
    k shape, dtype, masked?): how often it runs and the kernel SDPA picks for it."""
    net, batch = setup(cfg, batch_size, device)
    with watch_kernels() as (calls, kernels):
        loss_of(net.to(torch.bfloat16), batch, device, "bf16")
    return kernel_lines(calls, kernels)


@contextlib.contextmanager
def watch_kernels():
    """Records every attention call inside the block: (calls, kernels), both keyed by (q shape, k shape,
    dtype, masked?), counting the calls and naming the SDPA kernel each shape dispatches to."""
    calls, kernels = {}, {}

    def record(q, k, v, mask):
        key = (tuple(q.shape), tuple(k.shape), str(q.dtype).replace("torch.", ""), mask is not None)
        calls[key] = calls.get(key, 0) + 1
        kernels.setdefault(key, sdpa_choice(q, k, v, mask))
    with attention.watching(record):
        yield calls, kernels


def kernel_lines(calls: dict, kernels: dict) -> tuple[list[str], list[str]]:
    """The kernels table, and a mismatch for any attention left in fp32 under bf16 autocast."""
    lines, bad = ["kernels:   q shape -> k shape, dtype, mask: SDPA's kernel (calls per forward)"], []
    for (q_shape, k_shape, dtype, masked), count in calls.items():
        kernel = kernels[(q_shape, k_shape, dtype, masked)]
        lines.append(f"           {q_shape} -> {k_shape} {dtype} {'masked' if masked else 'no mask'}: {kernel} ({count})")
        if dtype != "bfloat16":  # an fp32 attention under bf16 autocast: a cast went missing somewhere
            bad.append(f"an attention call runs in {dtype} under bf16 autocast: {q_shape}")
    return lines, bad


def check_step(cfg, batch_size, device, steps: int = 5) -> tuple[list[str], list[str]]:
    """A training step under bf16 (bench.py's, exactly what train.py does per step): median time and, on a
    GPU, the peak allocated memory against the memory plan's prediction for the same model and batch."""
    _, batch = setup(cfg, batch_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = bench.bench_train_step(cfg, batch, device, steps, warmup=1, precision="bf16")
    lines = [f"speed:     train step {step * 1000:.1f} ms (median of {steps}), {batch_size / step:.1f} samples/s"]
    if device.type != "cuda":  # the CPU's peak resident memory says nothing about a GPU's
        return lines + ["memory:    n/a on the CPU"], []
    # the plan for one GPU (no FSDP2 terms), the toy clip's tokens with as many subjects as the batch holds
    tokens = build.toy_token_counts(cfg, subjects=batch["ref_images"].shape[1])
    plan = memory.plan(cfg, tokens, gpus=1, batch=batch_size, bytes_per=2)
    peak = bench.peak_memory_mb(device) * 2 ** 20
    lines.append(f"memory:    peak {peak / 1e9:.2f} GB allocated, the plan predicts {plan['peak'] / 1e9:.2f} GB "
                 f"({peak / plan['peak']:.2f}x)")
    bad = [f"peak memory {peak / 1e9:.2f} GB is over {PLAN_SLACK}x the plan's {plan['peak'] / 1e9:.2f} GB"] \
        if peak > PLAN_SLACK * plan["peak"] else []
    return lines, bad


# ------------------------------------------------------------------------------------------------
# Ovi's size (--config full): a synthetic clip through the plan's one-GPU LoRA row
# ------------------------------------------------------------------------------------------------

# A 5 s clip as the memory plan counts it (build.full_token_counts): 31 latent frames of 44x44 Wan2.2
# latents (704 px; the patch 2x2 must tile them), 157 MMAudio latents, 512 umT5 tokens, two subjects with a
# reference image and a 5 s voice each, 40 phonemes per line.
FULL_CLIP = dict(frames=31, height=44, width=44, audio=157, text=512, subjects=2, ref_audio=157, phonemes=40)
INIT_STD = 0.01   # random weights: what is measured is time and memory, not what the model says


def latent_batch(cfg, clip: dict, seed: int = 0) -> dict:
    """One sample in the shard format (shards.SHARD_FIELDS): random latents and prompt features, every
    subject present and described, one line spoken by subject 0."""
    g = torch.Generator().manual_seed(seed)
    k, L = clip["subjects"], clip["text"]
    span = L // (k + 2)  # descriptor spans first, then the line's span: [0, span), [span, 2 span), ...
    # every field at Ovi's widths (48 / 20 channels, 4096-d text): the shapes the memory plan counts
    return dict(
        video=torch.randn(1, clip["frames"], cfg.video_channels, clip["height"], clip["width"], generator=g),
        audio=torch.randn(1, clip["audio"], cfg.audio_channels, generator=g),
        text_emb=torch.randn(1, L, cfg.text_dim, generator=g), text_mask=torch.ones(1, L, dtype=torch.bool),
        ref_images=torch.randn(1, k, cfg.video_channels, clip["height"], clip["width"], generator=g),
        ref_audio=torch.randn(1, k, clip["ref_audio"], cfg.audio_channels, generator=g),
        subject_mask=torch.ones(1, k, dtype=torch.bool),
        subject_spans=torch.tensor([[[i * span, (i + 1) * span] for i in range(k)]]),
        speech_spans=torch.tensor([[[k * span, (k + 1) * span]]]),
        line_speaker=torch.zeros(1, 1, dtype=torch.long), line_mask=torch.ones(1, 1, dtype=torch.bool),
        line_phonemes=torch.randint(1, cfg.phoneme_vocab, (1, 1, clip["phonemes"]), generator=g))


def clip_tokens(cfg, clip: dict) -> dict:
    """The clip's token counts in memory.plan's terms."""
    frame = (clip["height"] // cfg.patch_h) * (clip["width"] // cfg.patch_w)
    return dict(video_tokens=clip["frames"] // cfg.patch_t * frame, ref_video_tokens=clip["subjects"] * frame,
                audio_tokens=clip["audio"] // cfg.audio_patch, text_tokens=clip["text"],
                ref_audio_tokens=clip["subjects"] * clip["ref_audio"] // cfg.audio_patch)


def lora_model(cfg, device):
    """train.py's model for a LoRA run under --precision bf16 --grad_ckpt: built on the meta device, the frozen
    base in bf16, then random weights drawn on the device itself (the 11.7B never pass through the CPU)."""
    tc = train.TrainConfig(precision="bf16", grad_ckpt=True, cond_drop=0.0)
    net = train.build_model(cfg, tc, world=1, device=device)   # exactly train.py's build: meta, bf16 base, to_empty
    gen = torch.Generator(device=device).manual_seed(0)      # a generator on the GPU: no 47 GB through the host
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, INIT_STD, generator=gen)
    return net, tc


def check_latent(cfg, clip: dict, device, lora_rank: int = 64, steps: int = 3) -> tuple[list[str], list[str]]:
    """The plan's one-GPU LoRA row on one synthetic clip: step time, peak memory vs memory.plan, the kernels
    one forward picks, and the forward alone (one sampling step's model call)."""
    cfg = memory.with_lora(cfg, lora_rank)
    net, tc = lora_model(cfg, device)
    batch = latent_batch(cfg, clip)
    trains = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trains, lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    if device.type == "cuda":  # the peak from here on: weights, AdamW state, activations, backward temporaries
        torch.cuda.reset_peak_memory_stats(device)
    losses = []

    def step():  # what train.py does per optimizer step (minus the EMA, a copy of the adapters)
        with precision.autocast(device, "bf16"):
            loss, _ = train.flow_loss(net, batch, tc, gen, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    step_s = statistics.median(bench.timed(step, steps, warmup=1, device=device))
    peak = bench.peak_memory_mb(device) * 2 ** 20 if device.type == "cuda" else None

    def forward():
        with torch.no_grad(), precision.autocast(device, "bf16"):
            train.flow_loss(net, batch, tc, gen, device)
    forward_s = statistics.median(bench.timed(forward, steps, warmup=1, device=device))
    with watch_kernels() as (calls, kernels):
        forward()
    tokens = clip_tokens(cfg, clip)
    lines = [f"latent:    {sum(p.numel() for p in net.parameters()) / 1e9:.2f}B parameters "
             f"({sum(p.numel() for p in trains) / 1e6:.1f}M train: LoRA {lora_rank} and the additions), "
             f"{sum(tokens.values()):,} tokens a sample, batch 1, --grad_ckpt, bf16",
             f"speed:     train step {step_s:.2f} s (median of {steps}), forward alone {forward_s:.2f} s; "
             f"losses {', '.join(f'{x:.4f}' for x in losses)}"]
    bad = [] if all(math.isfinite(x) for x in losses) else [f"a training loss is not finite: {losses}"]
    part = kernel_lines(calls, kernels)
    lines, bad = lines + part[0], bad + part[1]
    if peak is None:
        return lines + ["memory:    n/a on the CPU"], bad
    plan = memory.plan(cfg, tokens, gpus=1, batch=1, grad_ckpt=True, bytes_per=2)
    lines.append(f"memory:    peak {peak / 1e9:.2f} GB allocated, the plan predicts {plan['peak'] / 1e9:.2f} GB "
                 f"({peak / plan['peak']:.2f}x; its parameters {plan['parameters'] / 1e9:.2f} GB, activations "
                 f"{plan['activations'] / 1e9:.2f} GB, backward temporaries {plan['backward_temporaries'] / 1e9:.2f} GB)")
    if peak > PLAN_SLACK * plan["peak"]:
        bad.append(f"peak memory {peak / 1e9:.2f} GB is over {PLAN_SLACK}x the plan's {plan['peak'] / 1e9:.2f} GB")
    return lines, bad


def check_fsdp(gpus: int) -> tuple[list[str], list[str]]:
    """train.py under torchrun on every local GPU: FSDP2, bf16, checkpointing, accumulation: three steps."""
    out = os.path.join("out", "gpu_check_fsdp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train.py",
           "--fsdp", "true", "--precision", "bf16", "--grad_ckpt", "true", "--grad_accum", "2", "--max_steps", "3",
           "--log_every", "1", "--progress_every", "0", "--interleave_audio", "0", "--out_dir", out]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of the last check's
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    if done.returncode != 0:  # the last line of a torchrun failure names the error
        return [], [f"FSDP2 on {gpus} GPUs failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}"]
    losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "log.jsonl"))]
    return [f"FSDP2:     {gpus} GPUs, 3 steps, losses {', '.join(f'{x:.4f}' for x in losses)}"], []


def run(config: str = "toy", batch_size: int = 8, device: str = "cuda", compile_too: bool = True) -> int:
    """All checks; prints them and returns the exit code (0: all agree, 1: no GPU, 2: a mismatch)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: this machine has no CUDA GPU; nothing to check here (the CPU rehearsal is "
              "`bench.py --gpu_check --device cpu`)")
        return 1
    cfg = build.PRESETS[config]
    if cfg.video_channels != 3 and config != "full":  # mini's latents come from the toy codec, trained first
        print(f"gpu_check: --config {config} models the toy codec's latents; the check runs toy, small and full")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}: --config {config}, batch {1 if config == 'full' else batch_size}")
    if config == "full":  # Ovi's size: only the one-GPU LoRA row fits a single GPU (the memory plan)
        parts = [check_latent(cfg, FULL_CLIP, device)]
    else:
        parts = [check_precision(cfg, batch_size, device, compile_too), check_kernels(cfg, batch_size, device),
                 check_step(cfg, batch_size, device)]
    lines, bad = [], []  # every check runs, then all are printed: one mismatch does not hide the others
    for part in parts:
        lines += part[0]
        bad += part[1]
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        part = check_fsdp(torch.cuda.device_count())
        lines, bad = lines + part[0], bad + part[1]
    print("\n".join(lines))
    for problem in bad:
        print(f"MISMATCH: {problem}")
    print("gpu_check: " + ("all checks agree" if not bad else f"{len(bad)} mismatch(es)"))
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(run(*(sys.argv[1:2] or ["toy"])))
