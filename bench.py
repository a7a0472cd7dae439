"""Benchmarks: how fast the code runs (default), and what the models do (--quality, --ablate).

    python bench.py                       toy preset: train step (eager, SDPA vs math attention),
                                          data generation, sampling; last line JSON
    python bench.py --compile             adds torch.compile per TwinLayer (first step ~100 s on CPU)
    python bench.py --config small --batch_size 32      on a GPU: bf16 autocast, MFU vs the device peak
    python bench.py --gpu_check           the GPU self-check to run first on a new machine (gpucheck.py); with
                                          --device cpu it rehearses the same checks on the CPU; with
                                          --config full: Ovi's size, the one-GPU LoRA row (step time, memory)
    python bench.py --quality --ckpt out/toy/ckpt.pt --cases 8     the toy benchmark (metrics.py) on the three
                                          subsets: noise (floor), ground truth (ceiling) and the model (mean +- 95%
                                          interval) per metric on the same cases, and the model's fraction of the
                                          way from floor to ceiling; --ground_truth: floor and ceiling only;
                                          last line JSON, one key per subset/metric
    python bench.py --curve out/mini --subsets single      the learning curve: the toy benchmark at every
                                          ckpt_minute{M}.pt a run kept (train.py --keep_snapshots true), as
                                          fractions of the way, plotted in out/mini/curve.png (and curve.json)
    python bench.py --validate_metrics --cases 8    the metrics' check: the world's clips vs corrupted ones
    python bench.py --ablate omni-customizer   a paper's ablation table in miniature (ablations.py): every row
                                          trained with 3 seeds, scored, and each claim's verdict computed from
                                          the 95% interval of the paired difference; also dreamid-omni,
                                          presence, dreamvideo; --budget 4 trains 4x longer (a GPU);
                                          --base_budget 4 trains only the shared base 4x longer

Benchmark cases come from a held-out stream (stream 3, seed 2024): identities never seen in training,
with cross-pair references (nothing in them can be copied), in three subsets like OC-Bench:
single subject; two-person dialogue; complex (a silent identity or an off-screen speaker, language B).

Times are medians over --steps timed steps after --warmup untimed ones. MFU = model FLOPs
(build.estimate_flops, forward + backward, no recompute) / step time / the device's dense bf16 peak;
a device missing from PEAK_FLOPS shows MFU as unknown rather than a guess.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import resource
import statistics
import time

import numpy as np
import torch

import attention
import build
import checkpoint
import codec as codec_lib
import data
import metrics
import precision as precision_lib
import probes
import progress as progress_lib
import sample as sample_lib
import train
from cli import OneLineParser, out_dir_problems
from conditioning import Conditioning

PAPERS = ("omni-customizer", "dreamid-omni", "presence", "dreamvideo")   # --ablate: ablations.TABLES' keys
SUBSETS = ("single", "dialogue", "complex")   # OC-Bench's three, the default
MOTION = "motion"                               # DreamVideo-Omni's: --subsets motion adds box mIoU, trajectory error


def subset_metrics(subset: str) -> tuple:
    """The metrics scored on one subset: every subset gets OC-Bench's, the motion subset adds its own two."""
    return metrics.METRICS + (metrics.MOTION_METRICS if subset == MOTION else ())

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 without sparsity, from NVIDIA's data sheets


def device_peak(device: torch.device):
    """Dense bf16 FLOP/s of the device, or None where we have no honest number (CPUs, unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def timed(fn, steps: int, warmup: int, device) -> list[float]:
    """Seconds per call of fn, after warm-up; synchronises CUDA around each call."""
    for _ in range(warmup):  # first calls pay for allocation, autotuning and (with --compile) compilation
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":  # kernels run asynchronously: time the work, not its launch
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device) -> float:
    """Peak memory of this process so far, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    # CPU: the process's peak resident memory (Linux reports KiB); it includes Python and torch themselves
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_train_step(cfg, batch, device, steps, warmup, backend="sdpa", compile_layers=False, precision="",
                     towers="both", freeze_text=False):
    """Median seconds of one full training step (forward, backward, AdamW) of a fresh model, under --precision
    `precision` ("": the device's default, so bf16 on CUDA and fp32 on the CPU, as in training). towers:
    both (a joint step), video or audio (that tower alone, as in unimodal pretraining). freeze_text: the toy
    text encoder gets no gradient and no optimizer state (train.py --freeze_text true)."""
    torch.manual_seed(0)
    net = build.build_model(cfg).to(device)
    if compile_layers:
        for layer in net.layers:
            layer.compile()
    if freeze_text and cfg.text_layers > 0:
        net.prompt.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    tc = train.TrainConfig()  # train.py's defaults: flow matching on both towers, logit-normal t
    regime = precision_lib.resolve(precision, device)
    attention.BACKEND = backend  # every attention of the project (model and prompt side) switches
    gen = torch.Generator().manual_seed(0)  # the same t and noise for every variant

    def step():  # exactly what train.py does per optimizer step, minus logging and EMA
        with precision_lib.autocast(device, regime):
            loss, _ = train.flow_loss(net, batch, tc, gen, device, video=towers != "audio", audio=towers != "video")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    try:
        return statistics.median(timed(step, steps, warmup, device))  # medians resist the odd slow step
    finally:
        attention.BACKEND = "sdpa"  # leave the module as we found it


# ------------------------------------------------------------------------------------------------
# Quality: the toy benchmark
# ------------------------------------------------------------------------------------------------


def quality(net, world: data.WorldConfig, cases: int, steps: int = 30, guidance=None, device="cpu", seed: int = 0,
            subsets=SUBSETS, shift: float = 3.0, log=print, codec=None, probe=None) -> dict:
    """Scores per subset and source: {subset: {"model" | "truth" | "noise": {metric: [per-case values]}}}.

    Every case is scored three ways on the same references and script: the model's sample (when `net` is
    given), the world's own clip (the ceiling) and noise pixels and mel (the floor, metrics.noise), so the
    fraction of the way from floor to ceiling is measured, not assumed. probe(case, video, mel, scored) -> dict
    adds its values to each clip's (the ablation tables' mechanism probes, probes.py)."""
    guidance = guidance or sample_lib.Guidance(mode="plain")
    scores = {}
    for subset in subsets:  # cases are a pure function of (subset, i): every checkpoint sees the same ones
        rows = {source: {m: [] for m in subset_metrics(subset)} for source in ("model", "truth", "noise")}
        for i in range(cases):
            case = data.held_out_case(world, subset, i)  # unseen identities, cross-pair references
            # ceiling and floor per case, so a fraction of the way is measured against the same script
            clips = dict(truth=(case["video"], case["audio"]), noise=metrics.noise(case, None, world)[:2])
            if net is not None:
                batch = data.collate([case])  # (its boxes and trajectories are the motion request)
                # the model sees only what a user gives: caption and cross-pair references, never the clip
                v, a = sample_lib.sample_pixels(net, Conditioning.from_batch(batch), batch["video"].shape,
                                                batch["audio"].shape, codec, steps=steps, guidance=guidance,
                                                seed=seed + i, device=device, shift=shift)
                clips["model"] = (v[0].cpu(), a[0].cpu())  # (T, 3, H, W) pixels and (T_a, n_mels) mel
            for source, (video, mel) in clips.items():
                scored = metrics.score_clip(video, mel, case, world)
                if subset == MOTION:  # did the subjects go where they were asked (the case's own boxes)?
                    scored.update(metrics.score_motion(video, case, world))
                if probe is not None:
                    scored.update(probe(case, video, mel, scored))
                for m, value in scored.items():
                    rows[source].setdefault(m, []).append(value)
        scores[subset] = {source: r for source, r in rows.items() if r["face_sim"]}  # no model: floor and ceiling
        log(f"  scored {subset}: {cases} cases")
    return scores


def fraction_of_way(model: float, truth: float, floor: float) -> float:
    """How far the model got from the noise score to the ground-truth score: 0 = noise, 1 = truth (either
    direction of better; NaN where the two are closer than MIN_GAP, so the fraction means nothing)."""
    gap = truth - floor
    return (model - floor) / gap if abs(gap) >= MIN_GAP else float("nan")


MIN_GAP = 0.2  # truth and noise must be this far apart on a 0-1 scale for a fraction to mean anything


def print_quality(scores: dict, title: str) -> dict:
    """Per subset: noise, truth and the model (mean +- 95% interval) per metric, and the model's fraction of
    the way from noise to truth. Returns the JSON fields: "subset/metric" (the model, or truth when no model
    was scored), "_ci", "_truth", "_noise", "_fraction"."""
    flat = {}
    print(title)
    for subset, by_source in scores.items():
        has_model = "model" in by_source  # --ground_truth: only the floor and the ceiling
        print(f"{subset:9s}{'metric':13s}{'noise':>9s}{'truth':>9s}" +
              (f"{'model':>20s}{'fraction':>10s}" if has_model else "") + "   (better)")
        for m in subset_metrics(subset):
            truth, _ = metrics.mean_ci(by_source["truth"][m])
            floor, _ = metrics.mean_ci(by_source["noise"][m])
            mean, ci = metrics.mean_ci(by_source["model" if has_model else "truth"][m])  # interval over cases
            key = f"{subset}/{m}"
            flat.update({key: mean, f"{key}_ci": ci, f"{key}_truth": truth, f"{key}_noise": floor})
            line = f"{'':9s}{m:13s}{floor:9.3f}{truth:9.3f}"  # floor first: read each row left to right as progress
            if has_model:
                frac = fraction_of_way(mean, truth, floor)
                flat[f"{key}_fraction"] = frac
                line += f"{mean:11.3f} +- {ci:<5.3f}" + (f"{frac:9.0%}" if not np.isnan(frac) else f"{'(gap<0.2)':>10s}")
            print(line + f"   {'higher' if metrics.HIGHER_IS_BETTER[m] else 'lower'}")
    return flat


def parse_args(argv=None):
    """The command line: speed by default, --quality, --validate_metrics, --ablate."""
    parser = OneLineParser(description=__doc__.split("\n")[0])
    # --- speed ---
    parser.add_argument("--config", default="toy", choices=list(build.PRESETS))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile per layer")
    parser.add_argument("--sample_steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokenizer", default="pairs", choices=["pairs", "chars"], help="the captions' tokens (caption.py)")
    # --- quality ---
    parser.add_argument("--gpu_check", action="store_true",
                        help="the GPU self-check (gpucheck.py): fp32 vs bf16 vs compiled, SDPA kernels, step time, "
                             "peak memory against the plan, FSDP2 over the local GPUs; non-zero exit on a mismatch")
    parser.add_argument("--device", default="cuda", help="--gpu_check: cuda (default), or cpu to rehearse the checks")
    parser.add_argument("--quality", action="store_true", help="run the toy benchmark instead of the speed one")
    parser.add_argument("--ckpt", help="--quality: the checkpoint to benchmark")
    parser.add_argument("--curve", metavar="RUN_DIR",
                        help="score every ckpt_minute{M}.pt snapshot in RUN_DIR (train.py --keep_snapshots true): "
                             "the run's learning curve, printed and plotted in RUN_DIR/curve.png")
    parser.add_argument("--ground_truth", action="store_true",
                        help="--quality: score only the world's own clips and noise (no checkpoint)")
    parser.add_argument("--subsets", default=",".join(SUBSETS), help="--quality: comma-separated subsets to score")
    parser.add_argument("--cases", type=int, default=None, help="cases per subset (default 8; --ablate: the table's)")
    parser.add_argument("--guidance", default="plain", choices=["plain", "multi", "presence", "none"],
                        help="--quality: the same for every model compared (plain: Ovi's CFG at scale 2)")
    parser.add_argument("--validate_metrics", action="store_true",
                        help="score the world's own clips and corrupted ones (each metric must notice)")
    parser.add_argument("--ablate", choices=PAPERS,
                        help="train and score this paper's ablation rows, with verdicts (ablations.py)")
    parser.add_argument("--budget", type=float, default=1.0, help="--ablate: training steps x this (1: the CPU tables)")
    parser.add_argument("--base_budget", type=float, default=None,
                        help="--ablate: the shared base's steps x this, on their own (default: --budget)")
    parser.add_argument("--base_ckpt", default="",
                        help="--ablate: a base trained already (a ckpt.pt of train.py, e.g. the README's mini-Ovi "
                             "base); every row fine-tunes it instead of the table training its own")
    parser.add_argument("--seeds", type=int, default=3, help="--ablate: seeds per row (intervals need 3 or more)")
    parser.add_argument("--out_dir", default="out/ablate", help="--ablate: where the rows train (rerunning reuses them)")
    args = parser.parse_args(argv)
    if args.cases is None and not args.ablate:  # each ablation table carries its own case count
        args.cases = 8
    problems = flag_problems(args)
    if problems:  # all of them, one line each, before any work
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    return args


def flag_problems(args) -> list[str]:
    """Flag values that cannot make a benchmark, one line each."""
    problems = [f"--{name} must be at least 1, got {getattr(args, name)}"
                for name in ("batch_size", "steps", "sample_steps", "cases", "seeds")
                if getattr(args, name) is not None and getattr(args, name) < 1]
    problems += [f"--{name} must be 0 or more, got {getattr(args, name)}" for name in ("warmup", "threads")
                 if getattr(args, name) < 0]
    for name in ("budget", "base_budget"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"--{name} scales training steps: a positive number, got {value}")
    if args.curve and not snapshot_files(args.curve):
        problems.append(f"--curve {args.curve} holds no ckpt_minute{{M}}.pt snapshots: train with --keep_snapshots true")
    if args.quality and not (args.ckpt or args.ground_truth):
        problems.append("--quality needs --ckpt (or --ground_truth for the world's own scores)")
    if not set(args.subsets.split(",")) <= set(SUBSETS + (MOTION,)):
        problems.append(f"--subsets takes some of {','.join(SUBSETS + (MOTION,))}, got {args.subsets!r}")
    if args.ablate:
        problems += out_dir_problems(args.out_dir)
        import ablations  # it builds on this file's quality(): imported when used, not in a cycle
        if args.base_ckpt and args.base_budget is not None:
            problems.append("--base_budget scales the base a table trains itself; a --base_ckpt is trained already")
        if args.base_ckpt:  # a missing or damaged base is one line now, not after the first row's training
            try:
                checkpoint.load_checkpoint(args.base_ckpt)
            except checkpoint.CheckpointError as e:
                return problems + [f"--base_ckpt {e}"]
        problems += ablations.check_table(ablations.TABLES[args.ablate], 100, args.out_dir, args.base_ckpt)
    return problems


def main():
    args = parse_args()
    if args.gpu_check:
        import gpucheck
        raise SystemExit(gpucheck.run(args.config, args.batch_size, args.device, compile_too=args.compile or
                                      args.device.startswith("cuda")))
    if args.validate_metrics:
        return validate_main(args)
    if args.curve:
        return curve_main(args)
    if args.quality or args.ablate:
        return quality_main(args)
    return speed_main(args)


def speed_main(args):
    """Data generation, a training step (SDPA vs the math reference, optionally compiled) and sampling,
    side by side in one run; the last line is JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = build.PRESETS[args.config]
    if args.config == "full":  # `full` consumes VAE latents of real footage; the toy world makes pixels
        raise SystemExit("bench.py times the toy world's presets (toy, small, mini); `full` needs latent shards")
    world = data.WorldConfig(tokenizer=args.tokenizer)
    # mini-Ovi trains on the codec's latents; an untrained codec costs the same as a trained one
    codec = codec_lib.ToyCodec(codec_lib.CodecConfig(), world.n_mels) if cfg.video_channels != 3 else None
    # what the numbers were measured on travels with them, into the JSON line
    results = dict(config=args.config, tokenizer=args.tokenizer,
                   device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   threads=torch.get_num_threads(), batch_size=args.batch_size)
    results.update(bench_data(world))
    # the math backend is the readable reference; SDPA is the fused kernel every real run uses
    variants = [("eager_sdpa", "sdpa", False), ("eager_math", "math", False)]
    if args.compile:
        variants.append(("compiled_sdpa", "sdpa", True))
    results.update(bench_training(args, cfg, world, device, variants, codec))
    results.update(bench_sampling(args, cfg, world, device, codec))
    results.update(bench_identity_cache(args, cfg, world, device, codec=codec))
    print_speed(results, args, variants)


def bench_data(world) -> dict:
    """Toy-world generation rate: paired clips and the audio-only corpus, one process."""
    out = {}
    # each generator on its own: the clip maker renders video and speech, the audio-only one speech only
    for name, make, n in (("data_clips_per_s", data.make_clip, 40), ("data_audio_only_per_s", data.make_audio_only, 60)):
        start = time.perf_counter()
        for i in range(n):
            make(data.sample_rng(123, 0, 0, i), world)
        out[name] = n / (time.perf_counter() - start)
    return out


def bench_training(args, cfg, world, device, variants, codec=None) -> dict:
    """Median training-step time of each variant, as the same fresh model on the same fixed batch; then each
    tower alone (the steps of unimodal pretraining) and, with a codec, the cost of encoding a batch."""
    batch = data.ToyBatches(world, args.batch_size, seed=0).make_batch(0)  # one fixed batch: time the model, not data
    out = {}
    clip = dict(frames=world.frames, image_size=world.image_size, mel_frames=world.mel_frames,
                ref_image_size=world.ref_image_size, ref_mel_frames=world.ref_mel_frames)
    if codec is not None:  # what the model sees: the latent grid (4x4x4 pixels, 2 mel frames per latent)
        out["codec_encode_ms"] = 1000 * statistics.median(timed(lambda: codec.encode_batch(batch), 5, 1, device))
        batch = codec.encode_batch(batch)
        (pt, ph, _), pa = codec.cfg.video_patch, codec.cfg.audio_patch
        clip = dict(frames=world.frames // pt, image_size=world.image_size // ph, mel_frames=world.mel_frames // pa,
                    ref_image_size=world.ref_image_size // ph, ref_mel_frames=world.ref_mel_frames // pa)
    # the token counts the FLOP estimate needs are the ones this batch really has (subjects, caption length)
    tokens = build.toy_token_counts(cfg, clip, subjects=batch["ref_images"].shape[1],
                                        text_tokens=batch["text_ids"].shape[1])
    tokens["phoneme_tokens"] = batch["line_phonemes"][0].numel()
    flops = build.estimate_flops(cfg, **tokens)  # forward + backward per sample (MFU's numerator)
    tokens_per_sample = tokens["video_tokens"] + tokens["audio_tokens"]  # content tokens: what is generated
    peak = device_peak(device)
    for name, backend, comp in variants:
        sec = bench_train_step(cfg, batch, device, args.steps, args.warmup, backend, comp)
        out[name] = dict(ms_per_step=1000 * sec, samples_per_s=args.batch_size / sec,
                         tokens_per_s=args.batch_size * tokens_per_sample / sec,
                         mfu=None if peak is None else flops * args.batch_size / sec / peak)
    # ratios, not absolute times, are what carries over to another machine
    out["math_over_sdpa"] = out["eager_math"]["ms_per_step"] / out["eager_sdpa"]["ms_per_step"]
    if "compiled_sdpa" in out:
        out["eager_over_compiled"] = out["eager_sdpa"]["ms_per_step"] / out["compiled_sdpa"]["ms_per_step"]
    for towers in ("video", "audio"):  # unimodal pretraining's steps, each tower alone (recipes.py's ovi)
        sec = bench_train_step(cfg, batch, device, args.steps, args.warmup, towers=towers)
        out[f"{towers}_tower_alone"] = dict(ms_per_step=1000 * sec, samples_per_s=args.batch_size / sec)
    if cfg.text_layers > 0:  # the same three steps with the toy's umT5 frozen (the README's main job)
        for towers, name in (("both", "joint"), ("video", "video_tower_alone"), ("audio", "audio_tower_alone")):
            sec = bench_train_step(cfg, batch, device, args.steps, args.warmup, towers=towers, freeze_text=True)
            out[f"{name}_frozen_text"] = dict(ms_per_step=1000 * sec, samples_per_s=args.batch_size / sec)
    out["train_flops_per_sample"] = flops
    out["peak_memory_mb"] = peak_memory_mb(device)  # after every variant: the largest of them
    return out


def bench_sampling(args, cfg, world, device, codec=None) -> dict:
    """Seconds per clip, with and without CFG (CFG doubles the batch inside each step), decoding included."""
    net = build.build_model(cfg).to(device).eval()  # untrained weights cost the same as trained ones
    cond = Conditioning.from_batch(data.collate([data.make_clip(data.sample_rng(0, 2, 0, 0), world)]))
    shapes = ((1, world.frames, 3, world.image_size, world.image_size), (1, world.mel_frames, world.n_mels))
    out = dict(sample_steps=args.sample_steps)
    for name, scale in (("sample_s_per_clip_no_cfg", 1.0), ("sample_s_per_clip_cfg", 2.0)):
        start = time.perf_counter()
        guidance = sample_lib.Guidance(mode="plain", cfg_video=scale, cfg_audio=scale)
        sample_lib.sample_pixels(net, cond, *shapes, codec, steps=args.sample_steps, guidance=guidance, device=device)
        out[name] = time.perf_counter() - start
    return out


def bench_identity_cache(args, cfg, world, device, repeats: int = 3, codec=None) -> dict:
    """Identity-as-Presence sampling with the identity keys/values computed once per clip (IdentityCache)
    against recomputing them at every step: median seconds per clip of each, alternated, with the
    released guidance (2 passes), for a one- and a two-subject case; also checks they agree."""
    net = build.build_model(dataclasses.replace(cfg, ref_mode="presence")).to(device).eval()
    shapes = ((1, world.frames, 3, world.image_size, world.image_size), (1, world.mel_frames, world.n_mels))
    guidance = sample_lib.Guidance(mode="presence")
    out = {}
    for scene in ("single", "dialogue"):
        clip = data.make_clip(data.sample_rng(0, 2, 0, 0), dataclasses.replace(world, scene=scene))
        cond = Conditioning.from_batch(data.collate([clip]))
        times = {True: [], False: []}
        for _ in range(repeats):
            for cached in (True, False):  # alternated, so a slow spell of the machine hits both alike
                start = time.perf_counter()
                result = sample_lib.sample_pixels(net, cond, *shapes, codec, steps=args.sample_steps,
                                                  guidance=guidance, device=device, identity_cache=cached)
                times[cached].append(time.perf_counter() - start)
                out.setdefault(f"presence_{scene}_results", []).append(result)
        a, b = out.pop(f"presence_{scene}_results")[:2]  # the first cached and the first recomputed clip
        out[f"presence_{scene}"] = dict(cached_s=statistics.median(times[True]), uncached_s=statistics.median(times[False]),
                                        subjects=cond.subjects, max_abs_diff=max((x - y).abs().max().item() for x, y in zip(a, b)))
    return out


def print_speed(results: dict, args, variants):
    """The speed report, one line per measurement, then every number as one JSON line."""
    print(f"device {results['device']} ({results['threads']} threads), preset {args.config}, batch {args.batch_size}, "
          f"{args.tokenizer} tokenizer")
    print(f"data generation      {results['data_clips_per_s']:7.1f} clips/s   audio-only {results['data_audio_only_per_s']:.1f}/s")
    for name, _, _ in variants:
        r = results[name]
        mfu = "unknown" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"  # a CPU has no bf16 peak to divide by
        print(f"train {name:14s} {r['ms_per_step']:8.1f} ms/step  {r['samples_per_s']:7.2f} samples/s  "
              f"{r['tokens_per_s']:9.0f} tokens/s  MFU {mfu}")
    for towers in ("video", "audio"):
        r = results[f"{towers}_tower_alone"]
        print(f"train {towers} tower alone {r['ms_per_step']:6.1f} ms/step  {r['samples_per_s']:7.2f} samples/s")
    for name in ("joint", "video_tower_alone", "audio_tower_alone"):
        if f"{name}_frozen_text" in results:
            r = results[f"{name}_frozen_text"]
            print(f"train {name.replace('_', ' ')}, text encoder frozen {r['ms_per_step']:6.1f} ms/step  "
                  f"{r['samples_per_s']:7.2f} samples/s")
    if "codec_encode_ms" in results:
        print(f"codec encode         {results['codec_encode_ms']:8.1f} ms/batch")
    print(f"math / sdpa          {results['math_over_sdpa']:.2f}x step time")
    print(f"peak memory          {results['peak_memory_mb']:.0f} MB")
    print(f"sampling ({args.sample_steps} steps) {results['sample_s_per_clip_no_cfg']:.2f} s/clip, "
          f"with CFG (2 passes) {results['sample_s_per_clip_cfg']:.2f} s/clip")
    for scene in ("single", "dialogue"):
        r = results[f"presence_{scene}"]
        print(f"presence sampling, {r['subjects']} subject(s): identity cached {r['cached_s']:.2f} s/clip, recomputed "
              f"{r['uncached_s']:.2f} s/clip ({r['uncached_s'] / r['cached_s']:.2f}x; outputs differ by {r['max_abs_diff']:.1e})")
    print(json.dumps(results))


def validate_main(args):
    """The metrics' own check: ground truth near the top, each corruption worse where it should be."""
    world, flat = data.WorldConfig(), {}
    for scene in SUBSETS:  # the wrong-speaker corruption needs two voices, so single scenes skip it
        table = metrics.validation_table(world, scene, args.cases)
        names = list(table)
        print(f"{scene} ({args.cases} clips)")
        print(f"  {'metric':13s}" + "".join(f"{n:>17s}" for n in names))
        for m in metrics.METRICS:
            print(f"  {m:13s}" + "".join(f"{table[n][m]:17.3f}" for n in names))
            flat.update({f"{scene}/{n}/{m}": table[n][m] for n in names})
    print(json.dumps(flat))


def quality_main(args):
    """--quality (one checkpoint, or the world alone) and --ablate (a paper's table): scores, then JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()  # the whole benchmark's wall time goes into the JSON line
    if args.ablate:
        import ablations
        try:
            flat = ablations.ablate(args.ablate, args.seeds, args.budget, args.out_dir, args.cases, args.sample_steps,
                                    device, base_budget=args.base_budget, base_ckpt=args.base_ckpt)
        except checkpoint.CheckpointError as e:  # a run folder from another plan, or a damaged checkpoint
            raise SystemExit(f"error: {e}") from None
    elif args.ground_truth:  # no model: the floor and the ceiling alone
        scores = quality(None, data.WorldConfig(), args.cases, subsets=args.subsets.split(","))
        flat = print_quality(scores, f"toy benchmark, {args.cases} cases per subset: ground truth and noise only")
    else:
        _, flat = score_checkpoint(args.ckpt, args, device, f"toy benchmark, {args.cases} cases per subset: ")
    flat["seconds"] = time.time() - start
    print(json.dumps(flat))


def load_for_quality(path: str, device):
    """A checkpoint as the benchmark samples it: (checkpoint, EMA model, its world, its codec or None, its shift)."""
    ckpt = checkpoint.load_checkpoint(path, need=("world_config",))
    net = checkpoint.model_from_checkpoint(path, device=device)   # the EMA weights
    world = checkpoint.world_from_checkpoint(ckpt, path)          # the world it was trained on
    codec = checkpoint.codec_from_checkpoint(ckpt, path)          # mini-Ovi: samples are latents
    return ckpt, net, world, codec, sample_lib.trained_shift(ckpt)  # sample at the noise levels it trained at


def score_checkpoint(path: str, args, device, label: str) -> tuple[dict, dict]:
    """--quality's table of one checkpoint (titled `label` + what was sampled how) and the script-reading line
    under it: (the checkpoint, the JSON fields). A checkpoint that cannot be read stops with one line."""
    try:
        ckpt, net, world, codec, shift = load_for_quality(path, device)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    guidance = sample_lib.Guidance(mode=args.guidance)  # one guidance for every model compared: fair rows
    scores = quality(net, world, args.cases, steps=args.sample_steps, guidance=guidance, device=device,
                     subsets=args.subsets.split(","), shift=shift, codec=codec)
    flat = print_quality(scores, f"{label}{path} (step {ckpt['step']}, {args.sample_steps} sampling steps, "
                                 f"shift {shift:g}, {args.guidance} guidance)")
    flat.update(print_script_reading(net, world, args.cases, codec, device))
    return ckpt, flat


def print_script_reading(net, world, cases: int, codec, device) -> dict:
    """One line under the table: how the audio tower reads the caption's lines while it says them
    (probes.script_reading on the held-out single cases; attention only, no sampling)."""
    reading = probes.script_reading(net, world, cases, codec, device)
    print(f"the audio tower reading its lines: {reading['read_mass']:.3f} of its text attention on the line's words "
          f"(uniform: {reading['read_uniform']:.3f}), in order {reading['read_order']:.2f} (1: word after word)")
    return {f"single/{name}": value for name, value in reading.items()}


def snapshot_files(run_dir: str) -> list[tuple[float, str]]:
    """(minute, path) of every ckpt_minute{M}.pt a run kept, in time order."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "ckpt_minute*.pt")):
        minute = re.fullmatch(r"ckpt_minute([0-9]+(?:\.[0-9]+)?)\.pt", os.path.basename(path))
        if minute:
            found.append((float(minute.group(1)), path))
    return sorted(found)


def curve_main(args):
    """--curve: the toy benchmark at each snapshot of one run (same cases, same sampling noise), each metric's
    fraction of the way from noise to truth against the minute it was kept; curve.json and curve.png."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    points = []
    for minute, path in snapshot_files(args.curve):
        ckpt, flat = score_checkpoint(path, args, device, f"minute {minute:g}: ")
        points.append(dict(minute=minute, step=ckpt["step"], **flat))
    with open(os.path.join(args.curve, "curve.json"), "w") as f:
        json.dump(points, f)
    subsets = args.subsets.split(",")
    for subset in subsets:  # one plot per subset; the first is curve.png
        name = "curve.png" if subset == subsets[0] else f"curve_{subset}.png"
        progress_lib.plot_curve(points, subset, CURVE_METRICS, os.path.join(args.curve, name))
    print(f"wrote {os.path.join(args.curve, 'curve.json')} and the plot(s) beside it")


CURVE_METRICS = ("face_sim", "t_sim", "sync_c", "per", "sharpness", "text_follow", "confusion")  # the README's


if __name__ == "__main__":
    main()
