"""Training (train.py): the flow objective, overfitting, exact resume, DDP and FSDP2 on gloo."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import build
import checkpoint
import progress
import train
from tiny import TINY, TINY_OVERRIDES, tiny_batch, TINY_WORLD_OVERRIDES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def tiny_config(out_dir, **kw):
    base = dict(out_dir=str(out_dir), batch_size=2, max_steps=6, log_every=1, ckpt_every=3, warmup_steps=2, lr=3e-3)
    base.update(kw)
    return train.TrainConfig(**base)


def test_lr_warms_up_then_decays_to_the_floor():
    tc = train.TrainConfig(lr=1.0, warmup_steps=10, decay_steps=110, min_lr_ratio=0.1)
    assert train.lr_at(0, tc) == pytest.approx(0.1) and train.lr_at(9, tc) == pytest.approx(1.0)
    assert train.lr_at(60, tc) == pytest.approx(0.55) and train.lr_at(500, tc) == pytest.approx(0.1)


def test_ema_warms_up_so_short_runs_are_not_stuck_at_the_initial_weights():
    tc = train.TrainConfig(ema_decay=0.999)
    assert train.ema_decay_at(0, tc) == pytest.approx(0.1) and train.ema_decay_at(100, tc) < 0.92
    assert train.ema_decay_at(10 ** 6, tc) == 0.999
    kept = 1.0
    for step in range(400):  # share of the initial weights left in the EMA after 400 steps
        kept *= train.ema_decay_at(step, tc)
    assert kept < 0.01


def test_a_fixed_batch_is_overfit():
    torch.manual_seed(0)
    net = build.build_model(dataclasses.replace(TINY, dim=64, heads=4, ffn=128))  # a little room to memorise
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    batch = tiny_batch(batch_size=2, scene="single")
    tc = train.TrainConfig(cond_drop=0.0, masked_loss=False)   # the plain objective
    losses = []
    for _ in range(200):
        loss, _ = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(0), "cpu")  # same t and noise
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5


def test_killed_run_resumes_with_identical_losses_and_log(tmp_path):
    """Losses bitwise, and the log reads as if the run never stopped: log_every 2 does not divide ckpt_every
    3, so the record at step 4 spans the checkpoint (the window is saved with it), and the record the killed
    run wrote at step 4 after its last save is not kept twice."""
    cfg = dict(log_every=2, interleave_audio=2)
    straight = train.train(tiny_config(tmp_path / "a", **cfg), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)["losses"]

    def crash(step, net):
        if step == 5:  # dies after step 5, whose checkpoint was never written (last one: step 3)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_config(tmp_path / "b", **cfg), TINY_OVERRIDES, TINY_WORLD_OVERRIDES, on_step=crash)
    (tmp_path / "b" / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")  # as a kill during save would leave
    resumed = train.train(tiny_config(tmp_path / "b", **cfg), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    assert resumed["losses"] == straight[3:]          # steps 4, 5, 6 exactly as in the straight run
    assert not (tmp_path / "b" / "ckpt.pt.tmp").exists()
    clocked = ("samples_per_s", "minutes")            # wall-clock fields differ between any two runs
    read = lambda run: [{k: v for k, v in json.loads(line).items() if k not in clocked}  # noqa: E731
                        for line in open(tmp_path / run / "log.jsonl")]
    assert read("a") == read("b") and [r["step"] for r in read("a")] == [2, 4]  # 5 and 6: audio-only steps
    assert all("loss_audio_only" in r for r in read("b"))
    assert os.path.exists(tmp_path / "a" / "loss.png")


def test_corrupt_checkpoint_stops_with_one_line(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_checkpoint(str(path))
    assert "ckpt.pt" in str(err.value) and "\n" not in str(err.value)


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_rank_run_matches_one_rank_at_the_same_global_batch(tmp_path, mode):
    script = os.path.join(HERE, "dist_check.py")
    torchrun(script, str(tmp_path / "one.pt"), mode, nproc=1)
    torchrun(script, str(tmp_path / "two.pt"), mode, nproc=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name in one:
        # summation order differs across ranks; a wrong average would be off by ~1e-2, not 1e-4
        assert torch.allclose(one[name], two[name], atol=1e-4), name


def test_fsdp_run_saves_sharded_resumes_exactly_and_consolidates(tmp_path):
    """FSDP2 under --precision bf16 writes a sharded checkpoint (sharded.py, nothing gathered); a run stopped
    at step 2 and resumed gives the uninterrupted run's losses bitwise; `sharded.py` makes the ckpt.pt that
    sample.py reads, with the full EMA."""
    flags = ["train.py", "--fsdp", "true", "--precision", "bf16", "--batch_size", "1", "--ckpt_every", "2",
             "--interleave_audio", "0", "--decay_steps", "4", "--warmup_steps", "1", "--log_every", "1",
             "--progress_every", "0", "--clip_seconds", "1.0", "--ref_audio_seconds", "0.5"]
    flags += [f"--{k}={v}" for k, v in TINY_OVERRIDES.items()]
    torchrun(*flags, "--out_dir", str(tmp_path / "straight"), "--max_steps", "4")
    torchrun(*flags, "--out_dir", str(tmp_path / "resumed"), "--max_steps", "2")
    torchrun(*flags, "--out_dir", str(tmp_path / "resumed"), "--max_steps", "4")
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / run / "log.jsonl")] for run in ("straight", "resumed")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    folder = tmp_path / "resumed" / "ckpt_sharded"
    assert (folder / ".metadata").exists() and not (tmp_path / "resumed" / "ckpt.pt").exists()
    done = subprocess.run([sys.executable, "sharded.py", str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "step 4" in done.stdout, done.stderr[-2000:]
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))
    net = checkpoint.model_from_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))
    one_rank = build.build_model(checkpoint.config_from_checkpoint(ckpt))
    assert {n: p.shape for n, p in net.named_parameters()} == {n: p.shape for n, p in one_rank.named_parameters()}
    assert all(torch.equal(ckpt["ema"][n], p) for n, p in net.named_parameters())  # the full EMA was gathered


def test_a_diverged_run_stops_with_one_line_and_keeps_its_last_finite_checkpoint(tmp_path, monkeypatch):
    """A NaN loss (a learning rate far too high, or NaN data) must not train on to 'done' and overwrite
    ckpt.pt with non-finite weights: the run stops at the next log / checkpoint step, naming the step."""
    train.train(tiny_config(tmp_path, max_steps=2, ckpt_every=2, interleave_audio=0), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    real = train.flow_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats
    monkeypatch.setattr(train, "flow_loss", poisoned)
    with pytest.raises(progress.Diverged) as err:
        train.train(tiny_config(tmp_path, max_steps=6, ckpt_every=3, log_every=3, interleave_audio=0),
                    TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    assert "at step 3" in str(err.value) and "--lr" in str(err.value) and "\n" not in str(err.value)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_checkpoint_from_before_the_removed_switches_loads_unless_it_used_them():
    """--precond edm and --input_skip were removed: a checkpoint that has them off (as every default run did)
    still loads; one trained with either on cannot be rebuilt, and says so in one line."""
    fields = dict(dataclasses.asdict(build.PRESETS["toy"]), input_skip=False, precond="none", sigma_video=0.4,
                  sigma_audio=1.0)
    assert checkpoint.config_from_checkpoint(dict(model_config=fields)) == build.PRESETS["toy"]
    with pytest.raises(checkpoint.CheckpointError, match="trained with --precond edm") as err:
        checkpoint.config_from_checkpoint(dict(model_config=dict(fields, precond="edm")), "old.pt")
    assert "\n" not in str(err.value)


def test_a_bad_flag_under_torchrun_is_said_once_by_rank_0(tmp_path):
    """Every rank checks the flags and stops, but only rank 0 says why: before, each of the N ranks printed it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "train.py",
           "--seq_parallel", "2", "--ref_mode", "presence", "--out_dir", str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=120)
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error: --seq_parallel")]
    assert done.returncode != 0 and len(said) == 1, done.stderr[-2000:]


def test_resuming_with_flags_for_another_model_is_one_line(tmp_path):
    """--config small (or a rank-16 LoRA) over an --out_dir holding a toy run: before, the run's own model
    silently won; now the resume refuses in one line and names the difference."""
    tc = train.TrainConfig(out_dir=str(tmp_path), batch_size=2, max_steps=1, progress_every=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    with pytest.raises(checkpoint.CheckpointError) as err:
        train.train(dataclasses.replace(tc, max_steps=2), dict(TINY_OVERRIDES, dim=64), TINY_WORLD_OVERRIDES)
    assert "holds a run of another model (--dim 32 there, 64 asked)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(checkpoint.CheckpointError, match="another world"):
        train.train(dataclasses.replace(tc, max_steps=2), TINY_OVERRIDES, dict(TINY_WORLD_OVERRIDES, scene="single"))
    assert train.train(dataclasses.replace(tc, max_steps=2), TINY_OVERRIDES, TINY_WORLD_OVERRIDES)["step"] == 2


def test_a_time_capped_run_says_the_cap_stopped_it(tmp_path, monkeypatch, capsys):
    """--max_minutes before --max_steps: the last line says the time cap stopped the run and cut the cosine."""
    monkeypatch.setattr(sys, "argv", ["train.py", "--out_dir", str(tmp_path), "--batch_size", "2", "--max_steps", "50",
                                      "--max_minutes", "0.0001", "--log_every", "1", "--progress_every", "0",
                                      *[f"--{k}={v}" for k, v in {**TINY_OVERRIDES, **TINY_WORLD_OVERRIDES}.items()]])
    train.main()
    out = capsys.readouterr().out
    assert "done: step 1," in out and "note: --max_minutes 0.0001 stopped the run at step 1 of 50" in out


@pytest.mark.parametrize("missing", ["layers.0.video.ffn.0.weight", "prompt.text_encoder.embed.weight"],
                         ids=["a backbone tensor", "a tensor of an addition the run had"])
def test_init_from_a_checkpoint_missing_a_tensor_is_one_line(tmp_path, missing):
    """Only the modules the command line adds may start fresh over an --init_from checkpoint of ours. Before, a
    missing tensor of the prompt side (an addition, but one the saved model had) was silently re-initialised."""
    tc = train.TrainConfig(out_dir=str(tmp_path / "base"), batch_size=2, max_steps=1, progress_every=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    ckpt = torch.load(tmp_path / "base" / "ckpt.pt", weights_only=True)
    for part in ("model", "ema", "checksums"):
        ckpt[part] = {k: v for k, v in ckpt[part].items() if not k.endswith(missing)}
    torch.save(ckpt, tmp_path / "damaged.pt")
    fine_tune = dataclasses.replace(tc, out_dir=str(tmp_path / "ft"), init_from=str(tmp_path / "damaged.pt"))
    with pytest.raises(checkpoint.CheckpointError) as err:
        train.train(fine_tune, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    assert f"lacks tensor '{missing}'" in str(err.value) and "\n" not in str(err.value)
