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
