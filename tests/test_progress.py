"""Watching a run learn (progress.py): the strip grows by a row per due minute, does not change training,
and the loss plot has axes."""
import os

import pytest
import torch
from PIL import Image

import progress
import train
from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES


def tiny_run(out_dir, every):
    tc = train.TrainConfig(out_dir=str(out_dir), batch_size=2, max_steps=4, log_every=2, ckpt_every=4,
                           warmup_steps=1, interleave_audio=0, progress_every=every)
    return train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)


def test_the_strip_shows_truth_then_a_row_per_due_minute_and_does_not_change_training(tmp_path):
    # every 1e-6 minutes: a row at each of the 2 log steps; 0: no strip at all
    with_strip, without = tiny_run(tmp_path / "a", 1e-6), tiny_run(tmp_path / "b", 0)
    assert with_strip["losses"] == without["losses"]  # own noise, no global RNG, weights untouched
    strip = Image.open(tmp_path / "a" / "progress.png")
    row = progress.row_image(torch.zeros(8, 3, 32, 32), torch.zeros(32, 40), "x")  # the tiny world: 1 s clips
    assert strip.height == 3 * row.height  # truth, step 2, step 4
    page = open(tmp_path / "a" / "index.html").read()
    assert 'src="progress.png"' in page and 'src="loss.png"' in page
    assert os.path.exists(tmp_path / "a" / "loss.png") and not os.path.exists(tmp_path / "b" / "progress.png")


def test_ticks_are_round_numbers_covering_the_range():
    assert progress.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    ticks = progress.nice_ticks(-0.73, 0.12)
    assert all(-0.73 <= t <= 0.12 for t in ticks) and len(ticks) >= 3
    assert ticks[1] - ticks[0] == pytest.approx(0.2)


def test_log_axis_ticks_are_round_losses_inside_the_range():
    assert progress.log_ticks(-0.9, 0.5) == [0.2, 0.5, 1, 2]      # loss 0.126 .. 3.16
    assert len(progress.log_ticks(-0.2, 0.1)) >= 3                   # a narrow range falls back to every digit


def test_the_learning_curve_draws_each_fraction_between_the_noise_and_truth_lines(tmp_path):
    points = [{"minute": m, "single/face_sim_fraction": 1.0, "single/per_fraction": 0.0} for m in (1, 2, 3)]
    progress.plot_curve(points, "single", ("face_sim", "per", "sync_c"), str(tmp_path / "c.png"))
    img = Image.open(tmp_path / "c.png").convert("RGB")
    column = [img.getpixel((313, y)) for y in range(img.height)]   # the middle of the plot's x range
    # y = 352 - (f + 0.5) / 2 x 328: truth (1.0) at 106, noise (0.0) at 270; a metric without fractions is left out
    assert (0, 0, 255) in column[104:109] and (255, 0, 0) in column[268:273]
    assert (0, 128, 0) not in column


def test_bench_curve_scores_every_snapshot_in_time_order(tmp_path, monkeypatch, capsys):
    import shutil
    import sys

    import bench
    tiny_run(tmp_path, 0)
    for minute in ("10.0", "2.5"):   # 10 sorts after 2.5 by minute, not by name
        shutil.copy(tmp_path / "ckpt.pt", tmp_path / f"ckpt_minute{minute}.pt")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--curve", str(tmp_path), "--cases", "1", "--sample_steps", "2",
                                      "--subsets", "single"])
    bench.main()
    import json
    points = json.load(open(tmp_path / "curve.json"))
    assert [p["minute"] for p in points] == [2.5, 10.0] and all("single/face_sim_fraction" in p for p in points)
    assert points[0]["single/face_sim"] == points[1]["single/face_sim"]  # same weights, cases and noise: same score
    assert os.path.exists(tmp_path / "curve.png")
    monkeypatch.setattr(sys, "argv", ["bench.py", "--curve", str(tmp_path / "none")])
    with pytest.raises(SystemExit):
        bench.main()
    assert "holds no ckpt_minute{M}.pt snapshots" in capsys.readouterr().err
