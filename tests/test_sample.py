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


# --- Ovi's own sampling modes (latent models): I2AV, skip-layer guidance, per-tower negative prompts -----------

def tiny_latent_model_and_case():
    """A `full`-layout twin tower at toy width (prompt features, Wan-like latents) and one case of it."""
    import dataclasses
    import model
    cfg = dataclasses.replace(build.PRESETS["full"], dim=32, layers=3, heads=2, ffn=48, audio_stem_hidden=24,
                              text_dim=16, ocf_dim=16, ocf_heads=2, phoneme_layers=1, ocf_layers=1)
    torch.manual_seed(0)
    net = perturbed(build.build_model(cfg), scale=0.3).eval()
    g = torch.Generator().manual_seed(1)
    batch = dict(text_emb=torch.randn(1, 7, 16, generator=g), text_mask=torch.ones(1, 7, dtype=torch.bool),
                 ref_images=torch.randn(1, 1, 48, 4, 4, generator=g), ref_audio=torch.randn(1, 1, 5, 20, generator=g),
                 subject_mask=torch.ones(1, 1, dtype=torch.bool), subject_spans=torch.tensor([[[0, 3]]]),
                 speech_spans=torch.tensor([[[4, 7]]]), line_speaker=torch.zeros(1, 1, dtype=torch.long),
                 line_mask=torch.ones(1, 1, dtype=torch.bool), line_phonemes=torch.ones(1, 1, 4, dtype=torch.long))
    return net, Conditioning.from_batch(batch), model


def test_i2av_keeps_the_given_first_frame_and_modulates_it_as_clean():
    import dataclasses
    net, cond, model = tiny_latent_model_and_case()
    first = torch.randn(1, 1, 48, 4, 4)
    i2av = dataclasses.replace(cond, first_frame=first)
    video, _ = sample.sample(net, i2av, (1, 3, 48, 4, 4), (1, 10, 20), steps=3, guidance=sample.Guidance(mode="none"))
    assert torch.equal(video[:, :1], first)                       # the clip starts with exactly the given frame
    plain, _ = sample.sample(net, cond, (1, 3, 48, 4, 4), (1, 10, 20), steps=3, guidance=sample.Guidance(mode="none"))
    assert not torch.allclose(video[:, 1:], plain[:, 1:])         # and the rest is generated from it
    # the clean tokens take the references' (t = 0) modulation row: the simple reference, segment by segment
    x, shift, scale = torch.randn(2, 9, 4), torch.randn(2, 2, 4), torch.randn(2, 2, 4)
    rows = [1, 1, 0, 0, 0, 0, 1, 1, 1]                            # 2 clean, 4 noisy content, 3 references
    want = torch.stack([x[:, i] * (1 + scale[:, r]) + shift[:, r] for i, r in enumerate(rows)], 1)
    assert torch.allclose(model.modulate(x, shift, scale, n_content=6, clean=2), want)


def test_skip_layer_guidance_skips_one_layer_for_the_flagged_rows_only():
    net, cond, _ = tiny_latent_model_and_case()
    two = Conditioning.cat([cond, cond])
    video, audio, t = torch.randn(2, 3, 48, 4, 4), torch.randn(2, 10, 20), torch.full((2,), 0.5)
    with torch.no_grad():
        plain = net(video, audio, t, two)
        skipped = net(video, audio, t, two, skip_layer=1, skip_rows=torch.tensor([False, True]))
        v, a, ctx = net.prepare(video, audio, t, two)                # the reference: run layers 0 and 2 only
        for i in (0, 2):
            v, a = net.layers[i](v, a, ctx)
        without = net.outputs(v, a, ctx, video, audio)
    assert torch.equal(skipped[0][0], plain[0][0]) and torch.equal(skipped[1][0], plain[1][0])   # row 0 untouched
    assert torch.allclose(skipped[0][1], without[0][1], atol=1e-5) and not torch.allclose(skipped[0][1], plain[0][1])


def test_ovis_negative_pass_gives_each_tower_its_own_prompt_and_slg_defaults_to_ovis():
    net, cond, _ = tiny_latent_model_and_case()
    negative = dict(video=torch.randn(7, 16), audio=torch.randn(7, 16))
    both = sample.conditionings(cond, ["pos", "neg"], negative)
    assert torch.equal(both.text[1], negative["video"]) and torch.equal(both.text_audio[1], negative["audio"])
    assert torch.equal(both.text_audio[0], both.text[0]) and bool(both.text_mask[1].all())  # Ovi: unmasked
    import dataclasses
    import types
    with torch.no_grad():
        _, _, ctx = net.prepare(torch.randn(2, 3, 48, 4, 4), torch.randn(2, 10, 20), torch.full((2,), 0.5), both)
        neg = both[1:]
        own = net.audio_tower.text_proj(net.prompt(dataclasses.replace(neg, text=neg.text_audio)))
        video_negative = net.audio_tower.text_proj(net.prompt(neg))
    assert torch.allclose(ctx.audio.text[1:], own) and not torch.allclose(ctx.audio.text[1:], video_negative)
    args = types.SimpleNamespace(ref_mode=None, guidance=None, slg_layer=None, ckpt="ours.pt", cfg_video=None,
                                 cfg_audio=None, **{f.name: 1.0 for f in dataclasses.fields(sample.Guidance)
                                                    if f.name not in ("mode", "slg_layer", "cfg_video", "cfg_audio")})
    ours = sample.guidance_for(args, net.cfg)
    assert ours.slg_layer == -1 and (ours.cfg_video, ours.cfg_audio) == (2.0, 2.0)   # ours: off, our scales
    args.ckpt = "ovi/model.safetensors"                           # Ovi's weights: as Ovi's inference samples
    ovi = sample.guidance_for(args, build.PRESETS["full"])
    assert ovi.slg_layer == sample.OVI_SLG_LAYER == 11 and (ovi.cfg_video, ovi.cfg_audio) == (4.0, 3.0)
    args.cfg_video = 5.0                                          # a given scale wins
    assert sample.guidance_for(args, build.PRESETS["full"]).cfg_video == 5.0
