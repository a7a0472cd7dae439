"""Real clips in, real clips out (prepare.py, encoders.py, sample.py's real path), end to end with tiny
random-initialised encoders of the real classes: diffusers' AutoencoderKLWan in Wan2.2's layout, transformers'
UMT5EncoderModel with a fast tokenizer, and MMAudio's VAE and BigVGAN (audio_vae.py) at a fraction of their width.
No weights can be downloaded here: what these tests show is the plumbing (rates, shapes, spans, files), not
what the released encoders produce."""
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import audio_vae  # noqa: E402
import encoders  # noqa: E402
import prepare  # noqa: E402
import shards  # noqa: E402
import speech  # noqa: E402
import train  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_DIM = 32
AREA = 96 * 128            # a 4:3 clip lands in the 96x128 bucket: 6x8 Wan latents
CAPTION = "the man in grey <sub1>: short hair, low voice. <sub1> says <S> Hello there, friend. <E>"


def write_clip(path, seconds=5.5, fps=30, size=(60, 80), rate=44_100, silent=False):
    """A moving square with a tone (stereo, 44.1 kHz: prepare.py must resample both streams)."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.height, v.width, v.pix_fmt = size[0], size[1], "yuv420p"
        a = out.add_stream("aac", rate=rate, layout="stereo")
        for i in range(int(seconds * fps)):
            img = np.full((*size, 3), 40, np.uint8)
            img[10:30, (2 * i) % 60: (2 * i) % 60 + 20] = (200, 60, 60)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        t = np.arange(int(seconds * rate)) / rate
        tone = np.zeros_like(t) if silent else 0.3 * np.sin(2 * np.pi * 220 * t)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).astype(np.float32).reshape(1, -1), format="flt",
                                           layout="stereo")
        frame.sample_rate = rate
        for p in a.encode(frame):
            out.mux(p)
        for p in a.encode():
            out.mux(p)


def write_encoders(folder):
    """Tiny encoders of the real classes, saved where a user's would be."""
    from diffusers import AutoencoderKLWan
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                     temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                     patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                     latents_mean=[0.1] * 48, latents_std=[2.0] * 48).save_pretrained(folder / "wan")
    words = ["<pad>", "</s>", "<unk>"] + "the man in grey short hair low voice says hello there friend".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()                  # words and punctuation runs, with offsets
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder / "umt5")
    UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1,
                                num_heads=4)).save_pretrained(folder / "umt5")
    vae = audio_vae.MelVAE(dim=16)
    torch.save({audio_vae.mmaudio_vae_key(n): p for n, p in vae.state_dict().items()}, folder / "v1-16.pth")
    voc = audio_vae.BigVGAN(width=64)                                # six halvings: 1 channel at the end
    torch.save({"generator": {audio_vae.bigvgan_key(n): p for n, p in voc.state_dict().items()}},
               folder / "best_netG.pt")


def write_subject(folder, stem):
    from PIL import Image
    Image.fromarray(np.full((40, 30, 3), 120, np.uint8)).save(folder / f"{stem}.sub1.png")
    speech.save_wav(str(folder / f"{stem}.sub1.wav"), 0.2 * torch.sin(torch.arange(22_050) * 0.05), 22_050)
    (folder / f"{stem}.txt").write_text(CAPTION)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    write_encoders(root)
    clips = root / "clips"
    clips.mkdir()
    write_clip(clips / "talk01.mp4")
    write_subject(clips, "talk01")
    write_clip(clips / "short01.mp4", seconds=2.0)                   # too short
    write_subject(clips, "short01")
    write_clip(clips / "quiet01.mp4", silent=True)                   # silent
    write_subject(clips, "quiet01")
    write_clip(clips / "nocap01.mp4")                                # no caption file
    args = prepare.parse_args(["--clips", str(clips), "--out", str(root / "shards"), "--video_vae", str(root / "wan"),
                               "--text_encoder", str(root / "umt5"), "--audio_vae", str(root / "v1-16.pth"),
                               "--area", str(AREA), "--device", "cpu"])
    return dict(root=root, clips=clips, args=args, result=prepare.prepare(args))


def test_prepare_makes_shards_in_ovis_format_and_names_each_bad_clip(world):
    result = world["result"]
    assert result["encoded"] == 1
    reasons = result["skipped"]
    assert set(reasons) == {"short01", "quiet01", "nocap01"}
    assert "5.04 s" in reasons["short01"] and "silent" in reasons["quiet01"] and "caption" in reasons["nocap01"]
    assert all("\n" not in r for r in reasons.values())
    path, = glob.glob(str(world["root"] / "shards" / "shard-*.pt"))
    spec = shards.ShardSpec(C_v=48, C_a=20, D_text=TEXT_DIM, patch=(1, 2, 2))
    shard = shards.LatentShards.load(path, spec)
    assert shard["video"].shape == (1, 31, 48, 6, 8)                 # 121 frames at 96x128 -> Wan's grid
    assert shard["audio"].shape == (1, 157, 20)                      # 80,384 samples -> MMAudio's 157 latents
    assert shard["text_emb"].shape == (1, 512, TEXT_DIM) and shard["ref_images"].shape == (1, 1, 48, 6, 8)
    assert shard["ref_audio"].shape == (1, 1, 157, 20)
    mask = shard["text_mask"][0]
    assert (shard["text_emb"][0][~mask] == 0).all()                  # Ovi's zero padding past the prompt
    # the spans land on the caption's words: the descriptor starts the prompt, the line follows "says"
    text = encoders.TextEncoder(str(world["root"] / "umt5"))
    ids = text.tokens(CAPTION)["input_ids"][0].tolist()
    (a, b), = shard["subject_spans"][0].tolist()
    (s, e), = shard["speech_spans"][0].tolist()
    assert a == 0 and b <= s and ids[s - 1] == text.tokenizer.convert_tokens_to_ids("says")
    assert shard["line_phonemes"][0, 0, 0].item() == ord("H") - 30 and shard["line_speaker"][0, 0] == 0
    assert os.path.exists(world["root"] / "shards" / "negative.pt")


def test_prepare_resumes_without_redoing_finished_clips(world):
    again = prepare.prepare(world["args"])
    assert again["encoded"] == 0 and again["already"] == 1 and len(glob.glob(str(world["root"] / "shards" / "shard-*"))) == 1


def test_ranks_split_the_clips_without_overlap_and_skip_finished_ones():
    stems = [f"c{i:02d}" for i in range(7)]
    shares = [prepare.clips_of_rank(stems, {"c03"}, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == [s for s in stems if s != "c03"] and shares[0] == ["c00", "c06"]


def test_tiny_twin_tower_trains_on_the_shards_and_samples_an_mp4_with_sound(world, tmp_path):
    root = world["root"]
    sizes = dict(dim=32, layers=2, heads=2, ffn=48, audio_stem_hidden=24, text_dim=TEXT_DIM, ocf_dim=16, ocf_heads=2,
                 phoneme_layers=1, ocf_layers=1)
    tc = train.TrainConfig(config="full", data=str(root / "shards" / "shard-*.pt"), out_dir=str(tmp_path / "run"),
                           batch_size=1, max_steps=2, interleave_audio=0, progress_every=0, warmup_steps=0)
    out = train.train(tc, sizes, {})
    assert out["step"] == 2 and all(math.isfinite(x) for x in out["losses"])
    clips = world["clips"]
    cmd = [sys.executable, "sample.py", "--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--caption", CAPTION,
           "--ref_image", str(clips / "talk01.sub1.png"), "--ref_audio", str(clips / "talk01.sub1.wav"),
           "--video_vae", str(root / "wan"), "--text_encoder", str(root / "umt5"), "--audio_vae", str(root / "v1-16.pth"),
           "--vocoder", str(root / "best_netG.pt"), "--area", str(AREA), "--steps", "2", "--device", "cpu",
           "--first_frame", str(clips / "talk01.sub1.png"), "--slg_layer", "1",     # I2AV, skip-layer guidance
           "--out_dir", str(tmp_path / "sample")]
    done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with av.open(str(tmp_path / "sample" / "video.mp4")) as clip:
        video, sound = clip.streams.video[0], clip.streams.audio[0]
        frames = sum(1 for _ in clip.decode(video))
        # the portrait reference (40x30) picks the 3:4 bucket of --area: 128 high, 96 wide
        assert frames == 121 and (video.codec_context.height, video.codec_context.width) == (128, 96)
        duration = float(clip.duration / av.time_base)
    assert abs(duration - 157 * 512 / 16_000) < 0.2                   # 5.02 s of sound under 5.04 s of frames
    assert sound.codec_context.sample_rate == 16_000


def test_a_wrong_encoder_file_or_folder_is_one_line(world, tmp_path):
    (tmp_path / "empty").mkdir()
    for kwargs, words in ((dict(video_vae=str(tmp_path / "nowhere")), "no such folder"),
                          (dict(video_vae=str(tmp_path / "empty")), "not a diffusers AutoencoderKLWan folder"),
                          (dict(text_encoder=str(world["root"] / "wan")), "not a transformers umT5 folder"),
                          (dict(audio_vae_path=str(world["root"] / "best_netG.pt")), "no tensor")):
        with pytest.raises(encoders.EncoderError) as err:
            encoders.Encoders(**kwargs)
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(encoders.EncoderError, match="--text_encoder"):
        encoders.Encoders().require("text")


def test_real_captions_keep_the_toys_structure_rules():
    import caption
    s = caption.text_structure(CAPTION)
    assert [CAPTION[a:b] for a, b in s["subject_spans"]] == ["the man in grey <sub1>: short hair, low voice."]
    assert s["lines"][0]["text"] == "Hello there, friend." and s["lines"][0]["speaker"] == 0
    for bad in ("<sub1> says <S> hi", "<S> hi <E>", "<sub2>: tall. <sub2> says <S> hi <E>", "<sub1> is here."):
        with pytest.raises(caption.CaptionError):
            caption.text_structure(bad)
    assert json.dumps(caption.character_ids("Hé!")) == "[42, 1, 3]"   # non-ASCII reads as 1 (no pinyin here)
