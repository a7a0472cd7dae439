"""The toy's latent codecs (codec.py): patching is exact, a briefly trained codec reconstructs held-out clips
within a bound and its latents are normalised, a toy batch moves onto the latent grid consistently, and a
mini-Ovi run trains, checkpoints its codec and samples a decoded clip."""
import dataclasses
import os

import pytest
import torch

import codec
import data
from conditioning import relative_boxes

WORLD = data.WorldConfig()
# a codec trained for a fixed number of steps (not seconds: the bound must not depend on the machine's speed)
QUICK = codec.CodecConfig(clips=120, max_steps=300, video_seconds=1e9, audio_seconds=1e9, batch=512)


@pytest.fixture(scope="module")
def quick_codec():
    return codec.train_codec(WORLD, QUICK, log=lambda *_: None)


def test_patching_is_an_exact_inverse():
    video = torch.randn(2, 16, 3, 32, 32)
    rows = codec.video_patches(video, (4, 4, 4))
    assert rows.shape == (2, 4, 8, 8, 192)
    assert torch.equal(codec.video_from_patches(rows, (4, 4, 4)), video)
    # one row is one 4x4x4 block of pixels: the first row is the top-left block of the first 4 frames
    assert torch.equal(rows[0, 0, 0, 0].reshape(4, 3, 4, 4), video[0, :4, :, :4, :4])


def test_round_trip_of_held_out_clips_is_within_bound(quick_codec):
    """Held-out clips (a seed training never drew) come back close: 300 steps already give about 24 dB;
    the cached codec train.py makes (100 s) reaches about 28 dB (the README quotes it)."""
    errors = codec.round_trip_errors(quick_codec, WORLD, clips=8, seed=77)
    assert errors["video_psnr"] > 21, errors
    assert errors["audio_error"] < 0.35 * errors["audio_spread"], errors


def test_latents_are_normalised_per_channel(quick_codec):
    """Ovi normalises Wan2.2's latents per channel; ours are normalised with the training clips' statistics,
    so held-out latents have about zero mean and unit spread in every channel."""
    clips = codec.training_clips(WORLD, dataclasses.replace(QUICK, clips=32), seed=78)
    with torch.no_grad():
        z_v = quick_codec.encode_video(clips["video"])                  # (N, t, C, h, w)
        z_a = quick_codec.encode_audio(clips["audio"])                  # (N, T_a, C)
    per_channel_v = z_v.transpose(0, 2).flatten(1)
    per_channel_a = z_a.flatten(0, 1).T
    for z in (per_channel_v, per_channel_a):
        # a clip's room colour moves every latent of it together: 32 clips leave each channel's mean within ~0.5
        means, stds = z.mean(1).abs(), z.std(1)
        assert means.mean() < 0.2 and means.max() < 0.5 and ((stds > 0.6) & (stds < 1.5)).all(), (means, stds)


def test_a_batch_moves_onto_the_latent_grid(quick_codec):
    batch = data.collate([data.make_clip(data.sample_rng(0, 0, 0, i), dataclasses.replace(WORLD, scene="dialogue"))
                          for i in range(2)])
    lat = quick_codec.encode_batch(batch)
    assert lat["video"].shape == (2, 4, 16, 8, 8) and lat["audio"].shape == (2, 64, 16)
    assert lat["ref_images"].shape[-3:] == (16, 4, 4) and lat["ref_audio"].shape[-2:] == (32, 16)
    assert lat["source_mask"].shape == (2, 4, 1, 8, 8)
    # boxes keep their place as fractions of the frame, one per latent frame (its first pixel frame's), so the box
    # loss and the motion conditions line up with the latent video
    assert torch.allclose(relative_boxes(lat), relative_boxes(batch)[:, :, ::4])
    assert lat["boxes"].shape[2] == lat["trajectories"].shape[2] == lat["video"].shape[1]
    inpair = batch["ref_frame"] >= 0
    assert torch.equal(lat["ref_frame"][inpair], batch["ref_frame"][inpair] // 4)
    # a latent counts as masked for RV2AV if any of its pixels is
    assert lat["source_mask"].sum() >= batch["source_mask"].sum() / 64


def test_mini_ovi_trains_checkpoints_its_codec_and_samples_pixels(tmp_path, quick_codec):
    import sample as sample_lib
    import train
    import checkpoint
    path = str(tmp_path / "codec.pt")
    torch.save(quick_codec.state(), path)
    tc = train.TrainConfig(config="mini", out_dir=str(tmp_path / "run"), codec=path, max_steps=2, batch_size=2,
                           audio_batch_size=2, log_every=1, progress_every=0, stage=1)
    out = train.train(tc, model_overrides=dict(dim=64, heads=2, ffn=128, layers=1))
    ckpt = checkpoint.load_checkpoint(out["checkpoint"])
    saved = checkpoint.codec_from_checkpoint(ckpt)
    assert torch.equal(saved.video.decoder[0].weight, quick_codec.video.decoder[0].weight)
    net = checkpoint.model_from_checkpoint(out["checkpoint"])
    case = data.collate([data.held_out_case(WORLD, "single", 0)])
    from conditioning import Conditioning
    video, mel = sample_lib.sample_pixels(net, Conditioning.from_batch(case), case["video"].shape, case["audio"].shape,
                                          saved, steps=2)
    assert video.shape == case["video"].shape and mel.shape == case["audio"].shape
    assert video.abs().max() <= 1 and torch.isfinite(mel).all()


def test_a_damaged_codec_file_is_one_line(tmp_path):
    path = tmp_path / "codec.pt"
    path.write_bytes(b"not a codec")
    with pytest.raises(codec.CodecError, match="not a readable codec file"):
        codec.load_codec(str(path))
    assert os.path.exists(path)
