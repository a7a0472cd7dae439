"""Benchmarks: how fast the code runs (default) on this machine, side by side in one run.

    python bench.py                       toy preset: train step (eager, SDPA vs math attention),
                                          data generation, sampling; last line JSON
    python bench.py --compile             adds torch.compile per TwinLayer (first step ~100 s on CPU)
    python bench.py --config small --batch_size 32      on a GPU: bf16 autocast, MFU vs the device peak

Times are medians over --steps timed steps after --warmup untimed ones. MFU = model FLOPs
(model.estimate_flops, forward + backward, no recompute) / step time / the device's dense bf16 peak;
a device missing from PEAK_FLOPS shows MFU as unknown rather than a guess.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import statistics
import time

import torch

import data
import model as model_lib
import sample as sample_lib
import train

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, REFERENCE.md


def device_peak(device: torch.device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def timed(fn, steps: int, warmup: int, device) -> list[float]:
    """Seconds per call of fn, after warm-up; synchronises CUDA around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def bench_train_step(cfg, batch, device, steps, warmup, attention="sdpa", compile_layers=False):
    """Median seconds of one full training step (forward, backward, AdamW) of a fresh model."""
    torch.manual_seed(0)
    net = model_lib.TwinTower(cfg).to(device)
    if compile_layers:
        for layer in net.layers:
            layer.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    tc = train.TrainConfig()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    model_lib.ATTENTION = attention
    gen = torch.Generator().manual_seed(0)

    def step():
        with autocast:
            loss, _ = train.flow_loss(net, batch, tc, gen, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    try:
        return statistics.median(timed(step, steps, warmup, device))
    finally:
        model_lib.ATTENTION = "sdpa"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="toy", choices=list(model_lib.PRESETS))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile per layer")
    parser.add_argument("--sample_steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = model_lib.PRESETS[args.config]
    if cfg.video_channels != 3:
        raise SystemExit("bench.py times the toy world's presets (toy, small); `full` needs latent shards")
    world = data.WorldConfig()
    results = dict(config=args.config, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   threads=torch.get_num_threads(), batch_size=args.batch_size)

    # data generation: paired clips and the audio-only corpus, one process
    for name, make, n in (("data_clips_per_s", data.make_clip, 40), ("data_audio_only_per_s", data.make_audio_only, 60)):
        start = time.perf_counter()
        for i in range(n):
            make(data.sample_rng(123, 0, 0, i), world)
        results[name] = n / (time.perf_counter() - start)

    batch = data.ToyBatches(world, args.batch_size, seed=0).make_batch(0)
    tokens = model_lib.toy_token_counts(cfg, world, subjects=batch["ref_images"].shape[1],
                                        text_tokens=batch["text_ids"].shape[1])
    tokens["phoneme_tokens"] = batch["line_phonemes"][0].numel()
    flops = model_lib.estimate_flops(cfg, **tokens)
    tokens_per_sample = tokens["video_tokens"] + tokens["audio_tokens"]
    peak = device_peak(device)
    variants = [("eager_sdpa", "sdpa", False), ("eager_math", "math", False)]
    if args.compile:
        variants.append(("compiled_sdpa", "sdpa", True))
    for name, attn, comp in variants:
        sec = bench_train_step(cfg, batch, device, args.steps, args.warmup, attn, comp)
        results[name] = dict(ms_per_step=1000 * sec, samples_per_s=args.batch_size / sec,
                             tokens_per_s=args.batch_size * tokens_per_sample / sec,
                             mfu=None if peak is None else flops * args.batch_size / sec / peak)
    results["math_over_sdpa"] = results["eager_math"]["ms_per_step"] / results["eager_sdpa"]["ms_per_step"]
    if args.compile:
        results["eager_over_compiled"] = results["eager_sdpa"]["ms_per_step"] / results["compiled_sdpa"]["ms_per_step"]
    results["train_flops_per_sample"] = flops
    results["peak_memory_mb"] = peak_memory_mb(device)

    # sampling: one clip, with and without CFG (CFG doubles the batch inside each step)
    net = model_lib.TwinTower(cfg).to(device).eval()
    one = data.collate([data.make_clip(data.sample_rng(0, 2, 0, 0), world)])
    shapes = ((1, world.frames, 3, world.image_size, world.image_size), (1, world.mel_frames, world.n_mels))
    for name, scale in (("sample_s_per_clip_no_cfg", 1.0), ("sample_s_per_clip_cfg", 2.0)):
        start = time.perf_counter()
        guidance = sample_lib.Guidance(mode="plain", cfg_video=scale, cfg_audio=scale)
        sample_lib.sample(net, one, *shapes, steps=args.sample_steps, guidance=guidance, device=device)
        results[name] = time.perf_counter() - start
    results["sample_steps"] = args.sample_steps

    print(f"device {results['device']} ({results['threads']} threads), preset {args.config}, batch {args.batch_size}")
    print(f"data generation      {results['data_clips_per_s']:7.1f} clips/s   audio-only {results['data_audio_only_per_s']:.1f}/s")
    for name, _, _ in variants:
        r = results[name]
        mfu = "unknown" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"train {name:14s} {r['ms_per_step']:8.1f} ms/step  {r['samples_per_s']:7.2f} samples/s  "
              f"{r['tokens_per_s']:9.0f} tokens/s  MFU {mfu}")
    print(f"math / sdpa          {results['math_over_sdpa']:.2f}x step time")
    print(f"peak memory          {results['peak_memory_mb']:.0f} MB")
    print(f"sampling ({args.sample_steps} steps) {results['sample_s_per_clip_no_cfg']:.2f} s/clip, "
          f"with CFG (2 passes) {results['sample_s_per_clip_cfg']:.2f} s/clip")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
