"""CUDA's precision regime rehearsed on the CPU (precision.py): bf16 weights and bf16 autocast run every path,
the fp32 islands stay fp32, and the real entry points (train.py under torchrun: FSDP2 + activation
checkpointing + gradient accumulation, LoRA's bf16 base, sequence parallel, compile) train under
`--precision bf16` to losses within a stated bf16 tolerance of the fp32 run."""
import copy
import dataclasses
import json
import os

import pytest
import torch

import build
import memory
import model
import precision
import train
from conditioning import Conditioning
from test_train import HERE, torchrun
from tiny import TINY, TINY_OVERRIDES, TINY_WORLD_OVERRIDES, perturbed, tiny_batch

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%); through a few layers and a handful of optimizer
# steps the tiny model's losses stay within 2% of fp32. A dtype bug (a bf16 t, a bf16 norm) shows as more.
LOSS_RTOL = 0.02


def bf16_copy(net):
    """The model as FSDP2 gathers it (or a LoRA base stores it) under --precision bf16: every weight bf16."""
    return copy.deepcopy(net).to(torch.bfloat16)


def forward(net, batch, video=True, regime="fp32"):
    cond = Conditioning.from_batch(batch)
    with precision.autocast("cpu", regime):
        return net(batch["video"] if video else None, batch["audio"], torch.tensor([0.3, 0.8]), cond)


@pytest.mark.parametrize("extra", [dict(), dict(ref_mode="presence"), dict(motion=True)], ids=["concat", "presence", "motion"])
@pytest.mark.parametrize("video", [True, False], ids=["joint", "audio_only"])
def test_bf16_weights_under_bf16_autocast_run_and_stay_near_fp32(extra, video):
    net = perturbed(build.build_model(dataclasses.replace(TINY, **extra)).eval())
    batch = tiny_batch(2, scene="dialogue", move_prob=1.0)
    ref_v, ref_a = forward(net, batch, video)
    out_v, out_a = forward(bf16_copy(net), batch, video, "bf16")
    for ref, out in ((ref_a, out_a), (ref_v, out_v)) if video else ((ref_a, out_a),):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()      # the head runs in fp32
        err = (out - ref).norm() / ref.norm()
        assert 1e-4 < err < 0.05, err                                          # bf16 did run, and stays close


def test_the_fp32_islands_stay_fp32_with_bf16_weights():
    """Timestep MLP, modulation and norms compute in fp32 from bf16 weights (Wan's explicit fp32), so a
    flow time of 0.7431 is not rounded to bf16's 0.7422 before 1000 t enters the sinusoids."""
    net = bf16_copy(perturbed(build.build_model(TINY)))
    t = torch.tensor([0.7431])
    with precision.autocast("cpu", "bf16"):
        emb, e = net.video_tower.timestep(t)
        x = torch.randn(1, 5, TINY.dim, dtype=torch.bfloat16)
        normed = net.layers[0].video.self_attn.norm_q(x)
    assert emb.dtype == e.dtype == torch.float32
    tower = net.video_tower
    hidden = torch.nn.functional.silu(model.timestep_features(torch.tensor([0.7431, 0.0]), TINY.freq_dim)
                                      @ tower.time_embed[0].weight.float().T + tower.time_embed[0].bias.float())
    expected = hidden @ tower.time_embed[2].weight.float().T + tower.time_embed[2].bias.float()
    assert torch.allclose(emb, expected, atol=1e-5)
    norm = net.layers[0].video.self_attn.norm_q
    assert normed.dtype == torch.bfloat16
    assert torch.equal(normed, torch.nn.functional.rms_norm(x.float(), (TINY.dim,), norm.weight.float(), norm.eps).bfloat16())


def test_fsdp2_bf16_policy_with_checkpointing_matches_fp32_and_keeps_t_exact(tmp_path):
    """2 gloo ranks, train.build_model's FSDP2 wrapping with activation checkpointing inside each layer: the
    backward runs (main crashed here: CheckpointError, or a bf16 weight meeting an fp32 input), gradients are
    finite, and the flow time reaches the timestep features as the fp32 value the sampler uses."""
    script = os.path.join(HERE, "precision_check.py")
    for regime in ("fp32", "bf16"):
        torchrun(script, str(tmp_path / f"{regime}.pt"), regime)
    fp32, bf16 = (torch.load(tmp_path / f"{r}.pt") for r in ("fp32", "bf16"))
    assert bf16["grads_finite"] and fp32["grads_finite"]
    assert torch.equal(bf16["seen"], torch.stack([bf16["t"], torch.zeros(2)], 1).flatten())   # t, then 0 per sample
    assert 0 < abs(bf16["loss"] - fp32["loss"]) < LOSS_RTOL * fp32["loss"]


def train_losses(tmp_path, name, regime, *flags, nproc=2):
    """Losses of a tiny train.py run through torchrun (every step joint, logged)."""
    out = tmp_path / f"{name}_{regime}"
    base = ["train.py", "--out_dir", str(out), "--precision", regime, "--batch_size", "1", "--max_steps", "4",
            "--log_every", "1", "--ckpt_every", "4", "--progress_every", "0", "--interleave_audio", "0",
            "--warmup_steps", "0", "--lr", "1e-2", "--cond_drop", "0"]
    overrides = {**TINY_OVERRIDES, **TINY_WORLD_OVERRIDES}
    torchrun(*base, *[f"--{k}={v}" for k, v in overrides.items() if f"--{k}" not in flags], *flags, nproc=nproc)
    return [json.loads(line)["loss"] for line in open(out / "log.jsonl")]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A full (not LoRA) tiny checkpoint for LoRA to adapt."""
    out = tmp_path_factory.mktemp("base")
    tc = train.TrainConfig(out_dir=str(out), batch_size=2, max_steps=2, progress_every=0, interleave_audio=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    return str(out / "ckpt.pt")


@pytest.mark.parametrize("mode", ["fsdp_ckpt_accum", "fsdp_lora", "seq_parallel"])
def test_train_py_precision_bf16_trains_near_fp32(tmp_path, base_ckpt, mode):
    """The README's GPU commands, rehearsed: each runs under --precision bf16 to finite losses within
    LOSS_RTOL of the same run in fp32, and not bitwise equal to it (bf16 was really on)."""
    flags = {"fsdp_ckpt_accum": ["--fsdp", "true", "--grad_ckpt", "true", "--grad_accum", "2"],
             "fsdp_lora": ["--fsdp", "true", "--lora_rank", "4", "--init_from", base_ckpt],
             "seq_parallel": ["--seq_parallel", "2", "--heads", "4"]}[mode]
    fp32, bf16 = (train_losses(tmp_path, mode, regime, *flags) for regime in ("fp32", "bf16"))
    assert len(bf16) == len(fp32) == 4 and all(map(torch.isfinite, torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=LOSS_RTOL)
    assert bf16 != fp32


@pytest.mark.slow
def test_compiled_bf16_step_matches_eager(tmp_path):
    """One compiled step (torch.compile of each TwinLayer, ~2 minutes on a CPU) under --precision bf16."""
    eager = train_losses(tmp_path, "eager", "bf16", "--max_steps", "2", nproc=1)
    compiled = train_losses(tmp_path, "compiled", "bf16", "--max_steps", "2", "--compile", "true", nproc=1)
    assert compiled == pytest.approx(eager, rel=LOSS_RTOL)


def test_precision_flag_defaults_to_the_device():
    assert precision.resolve("", "cuda") == "bf16" and precision.resolve("", "cpu") == "fp32"
    assert precision.resolve("fp32", "cuda") == "fp32"
    assert not precision.fsdp_policy("bf16").cast_forward_inputs


def test_gpu_check_says_so_in_one_line_without_a_gpu_and_rehearses_on_the_cpu(capsys):
    import gpucheck
    if not torch.cuda.is_available():
        assert gpucheck.run("toy", 1, "cuda") == 1
        assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert gpucheck.run("toy", 1, "cpu", compile_too=False) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "samples/s" in out and "all checks agree" in out


def test_gpu_check_at_ovis_layout_runs_the_lora_row_on_a_synthetic_clip():
    """`bench.py --gpu_check --config full`: the one-GPU LoRA row (frozen bf16 base, --grad_ckpt) on a synthetic
    clip in the shard format; rehearsed here on Ovi's layout at toy width, with finite losses and bf16 attention."""
    import gpucheck
    cfg = dataclasses.replace(build.PRESETS["full"], dim=64, layers=2, heads=2, ffn=128, text_dim=32,
                              audio_stem_hidden=64, ocf_dim=32, ocf_heads=2, phoneme_layers=1)
    clip = dict(frames=3, height=4, width=4, audio=10, text=12, subjects=2, ref_audio=6, phonemes=5)
    lines, bad = gpucheck.check_latent(cfg, clip, torch.device("cpu"), lora_rank=4, steps=1)
    assert bad == [] and "bfloat16" in "\n".join(lines) and "train step" in "\n".join(lines)
    net, _ = gpucheck.lora_model(memory.with_lora(cfg, 4), torch.device("cpu"))
    frozen = [p for p in net.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the base as a GPU holds it
