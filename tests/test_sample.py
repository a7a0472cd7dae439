"""Sampling (sample.py): determinism, guidance, the schedule, clear errors, written outputs."""
import os

import numpy as np
import pytest
import torch

import build
import cases
import data
import outputs
import sample
from conditioning import Conditioning
from tiny import TINY, TINY_WORLD, perturbed, tiny_batch


def tiny_net():
    return perturbed(build.build_model(TINY), 0.05).eval()


def run(net, seed, **kw):
    batch = tiny_batch(batch_size=1, scene="single")
    return sample.sample(net, Conditioning.from_batch(batch), batch["video"].shape, batch["audio"].shape, steps=3, seed=seed, **kw)


def test_sampler_is_deterministic_per_seed():
    net = tiny_net()
    a, b, c = run(net, 0), run(net, 0), run(net, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_schedule_runs_from_noise_to_data_and_shift_favours_noise():
    s = sample.schedule(10, 3.0)
    assert s[0] == 1 and s[-1] == 0 and (s[1:] < s[:-1]).all() and s[5] > 0.5


def write_png(path, size=20):
    from PIL import Image
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def test_inputs_are_resized_resampled_and_downmixed(tmp_path):
    write_png(tmp_path / "face.png", size=40)
    import wave
    with wave.open(str(tmp_path / "voice.wav"), "wb") as f:  # stereo, 22.05 kHz
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(22050)
        f.writeframes((np.random.default_rng(0).standard_normal(44100) * 3000).astype("<i2").tobytes())
    batch = cases.prepare_inputs("a <sub1>: red shirt. <sub1> says <S> tamu <E>", [str(tmp_path / "face.png")],
                                  [str(tmp_path / "voice.wav")], TINY_WORLD)
    assert batch["ref_images"].shape == (1, 1, 3, 16, 16)
    assert batch["ref_audio"].shape == (1, 1, TINY_WORLD.ref_mel_frames, TINY_WORLD.n_mels)


@pytest.mark.parametrize("caption, images, audios, message", [
    ("a <sub1>: x. b <sub2>: y. c <sub3>: z. <sub1> says <S> ta <E>", 2, 2, "3 subject"),
    ("a <sub1>: x. <sub1> says <S> <E>", 1, 1, "empty line"),
    ("a <sub1>: x. <sub1> says <S> t@ <E>", 1, 1, "character"),
    ("a <sub1>: x. <sub1> says <S> ta <E>", "missing", 1, "no such file"),
    ("a <sub1>: x. <sub1> says <S> ta <E>", "garbage", 1, "not a readable image"),
    ("a <sub1>: x. <sub1> says <S> ta <E>", 1, "garbage", "not a .wav file"),
])
def test_bad_inputs_stop_with_one_clear_line(tmp_path, caption, images, audios, message):
    write_png(tmp_path / "ok.png")
    (tmp_path / "garbage").write_bytes(b"nonsense")
    import wave
    with wave.open(str(tmp_path / "ok.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.zeros(1600, "<i2").tobytes())
    paths = lambda spec, ok: [str(tmp_path / ok)] * spec if isinstance(spec, int) else [str(tmp_path / spec)]  # noqa: E731
    with pytest.raises(sample.InputError) as err:
        cases.prepare_inputs(caption, paths(images, "ok.png"), paths(audios, "ok.wav"), TINY_WORLD)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_outputs_a_person_can_open(tmp_path):
    clip = data.make_clip(data.sample_rng(0, 2, 0, 0), TINY_WORLD)
    outputs.write_outputs(str(tmp_path), clip["video"], clip["audio"], TINY_WORLD, clip["caption"],
                         clip["ref_images"], clip["ref_audio"], truth=clip)
    for name in ("video.gif", "audio.wav", "index.html", "ref1.png", "ref1.wav", "truth.gif"):
        assert os.path.getsize(tmp_path / name) > 0
    page = open(tmp_path / "index.html").read()
    assert "&lt;sub1&gt;" in page and ("video.gif" in page or "video.mp4" in page)


def test_writing_outputs_never_deletes_what_it_did_not_write(tmp_path):
    """--out_dir may be the run's own folder: the checkpoint and any other file there must survive."""
    (tmp_path / "ckpt.pt").write_bytes(b"the user's checkpoint")
    (tmp_path / "video.mp4").write_bytes(b"stale")  # an earlier run's output: replaced or removed
    clip = data.make_clip(data.sample_rng(0, 2, 0, 0), TINY_WORLD)
    outputs.write_outputs(str(tmp_path), clip["video"], clip["audio"], TINY_WORLD, clip["caption"],
                         clip["ref_images"], clip["ref_audio"])
    assert (tmp_path / "ckpt.pt").read_bytes() == b"the user's checkpoint"
    assert not (tmp_path / "video.mp4").exists() or (tmp_path / "video.mp4").read_bytes() != b"stale"


def test_sampling_visits_the_noise_levels_training_trained_at():
    """The sampler's default shift is the trained one, and training's t distribution puts at least half as
    much mass above each noise level as the sampler spends steps there (the patch-noise failure was 1.4% of
    training samples above t = 0.9 against a quarter of the sampler's steps)."""
    import train
    tc = train.TrainConfig()
    assert sample.trained_shift({"train_config": {"t_shift": tc.t_shift}}) == tc.t_shift
    assert sample.trained_shift(None) == sample.OVI_SHIFT                           # Ovi's released sampler
    t = train.sample_t(200_000, tc, torch.Generator().manual_seed(0))
    sigmas = sample.schedule(30, tc.t_shift)[:-1]                                   # where the 30 steps start
    for level in (0.5, 0.75, 0.9):
        assert (t > level).float().mean() >= 0.5 * (sigmas > level).float().mean(), level
    unshifted = train.sample_t(200_000, train.TrainConfig(t_shift=1.0), torch.Generator().manual_seed(0))
    assert (unshifted > 0.9).float().mean() < 0.1 * (sigmas > 0.9).float().mean()  # the test can fail
