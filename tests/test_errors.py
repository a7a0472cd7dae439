"""Bad input stops with one line naming the problem, before any work: a table of flag values through the
real command-line entry point (train.py's parse_args), each must exit 2 with one line and no traceback."""
import pytest

import train

BAD_TRAIN_FLAGS = [
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--grad_accum", "0"], "--grad_accum must be at least 1"),
    (["--log_every", "0"], "--log_every must be at least 1"),
    (["--max_steps", "0"], "--max_steps must be at least 1"),
    (["--config", "huge"], "--config must be one of"),
    (["--stage", "9"], "--stage must be 0"),
    (["--task_mix", "0,0,0"], "--task_mix takes three"),
    (["--task_mix", "1,x"], "--task_mix takes three"),
    (["--heads", "5"], "--heads 5 must divide --dim 192"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--lr", "-1"], "--lr must be 0 or more"),
    (["--t_shift", "0"], "--t_shift and --t_std positive"),
    (["--scene", "garden"], "--scene must be one of"),
    (["--lr", "fast"], "argument --lr: invalid float value"),
    (["--no_such_flag"], "unrecognized arguments"),
    (["--threads", "-1"], "--threads must be 0 or more"),
    (["--workers", "-2"], "--workers must be -1 (auto) or 0 or more"),
    (["--weight_decay", "-1"], "--weight_decay must be 0 or more"),
    (["--t_mean", "nan"], "--t_mean must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--stage_steps", "300,x"], "--stage_steps takes 1 to 4 positive step counts"),
    (["--video_loss_weight", "0", "--audio_loss_weight", "0"], "the run would learn nothing"),
    (["--audio_stem", "conv", "--audio_patch", "2"], "--audio_stem conv reads one audio frame per token"),
    (["--box_loss_weight", "-2"], "--box_loss_weight must be 0 or more (or -1: the recipe's)"),
    (["--recipe", "dreamvideo", "--motion", "false"], "--recipe dreamvideo trains motion control: leave --motion on"),
    (["--ref_mode", "presence", "--ref_rope", "syn"], "--ref_mode presence has its own identity positions"),
    (["--lora_rank", "1000000", "--init_from", "base.pt"], "--lora_rank 1000000 exceeds the layers' width"),
    (["--motion", "true", "--max_groups", "1"], "--max_groups 1 must be at least 4"),
    (["--motion", "true", "--max_groups", "-3"], "--max_groups -3 must be at least 4"),
    (["--curriculum", "true", "--stage", "3"], "drop --stage 3"),
    (["--recipe", "dreamvideo", "--stage", "1", "--reward_model", "requirements.txt"], "this run never reaches it"),
    (["--config", "full", "--data", "shards/*.pt", "--reward_model", "requirements.txt"], "scores toy-world pixels"),
    (["--seed", str(2 ** 70)], "--seed must be in 0 .. 2**63 - 1"),
    (["--out_dir", "README.md/run"], "README.md is a file, so no folder can be made under it"),
]


@pytest.mark.parametrize("argv, message", BAD_TRAIN_FLAGS)
def test_a_bad_train_flag_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        train.parse_args(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err


def test_an_out_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit):
        train.parse_args(["--out_dir", str(tmp_path / "file")])
    assert "is a file; give a folder" in capsys.readouterr().err


BAD_SAMPLE_FLAGS = [
    (["--steps", "-1"], "--steps must be at least 1"),
    (["--seed", "-1"], "--seed must be in 0 .. 2**63 - 1"),
    (["--shift", "0"], "--shift must be positive"),
    (["--guidance", "loud"], "argument --guidance: invalid choice"),
    (["--keep_source", "ture"], "expected true/false, got 'ture'"),
    (["--cfg_video", "nan"], "--cfg_video must be a finite number"),
    (["--latent_index", "-1"], "--latent_index must be 0 or more"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    ([], "the following arguments are required: --ckpt"),
]


@pytest.mark.parametrize("argv, message", BAD_SAMPLE_FLAGS)
def test_a_bad_sample_flag_is_one_line_before_any_model_work(argv, message, capsys):
    import sample
    with pytest.raises(SystemExit) as done:
        sample.parse_args((["--ckpt", "x.pt"] if argv else []) + argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1 and "usage:" not in err


def test_sample_refuses_an_out_dir_that_is_a_file_before_sampling(tmp_path, capsys):
    import sample
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        sample.parse_args(["--ckpt", "x.pt", "--out_dir", str(tmp_path / "file")])
    assert "is a file; give a folder" in capsys.readouterr().err


BAD_WORLD_AND_MODEL_FLAGS = [
    (["--image_size", "30"], "--image_size 30 must be a multiple of --patch_h"),
    (["--clip_seconds", "1.1"], "--clip_seconds x --fps must be whole frames"),
    (["--n_mels", "30"], "--audio_channels 40 must equal --n_mels 30"),
    (["--config", "full"], "train it on latent shards"),
    (["--max_subjects", "4"], "the toy world's scenes hold 3"),
    (["--cross_pair", "2"], "--cross_pair is a probability"),
    (["--ref_audio_seconds", "3"], "--ref_audio_seconds 3.0 must be at most --clip_seconds"),
    (["--audio_stem", "lstm"], "--audio_stem must be one of linear | conv"),
    (["--ocf_heads", "5"], "--ocf_heads 5 must divide"),
    (["--layers", "0"], "--layers must be at least 1"),
]


@pytest.mark.parametrize("argv, message", BAD_WORLD_AND_MODEL_FLAGS)
def test_a_model_or_world_that_cannot_be_built_is_refused_by_its_flags(argv, message, capsys):
    """A size the patches do not tile or a world the scenes cannot render used to end in a reshape
    traceback at the first step (or, for --config full on the toy world, an hour building 11.7B weights)."""
    with pytest.raises(SystemExit) as done:
        train.parse_args(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# Through sample.py's main(): the user's files and checkpoints
# ------------------------------------------------------------------------------------------------

CAPTION = "the one in red <sub1>: red shirt, deep voice. <sub1> says <S> ka ta <E>"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny trained checkpoint, a good reference image and wav, and bad variants of each."""
    import wave

    import numpy as np
    import torch
    from PIL import Image

    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    d = tmp_path_factory.mktemp("inputs")
    train.train(train.TrainConfig(out_dir=str(d / "run"), batch_size=2, max_steps=1, progress_every=0),
                TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    Image.new("RGB", (16, 16), (200, 40, 40)).save(d / "face.png")
    with wave.open(str(d / "voice.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((np.random.default_rng(0).standard_normal(8000) * 3000).astype("<i2").tobytes())
    voice = (d / "voice.wav").read_bytes()
    (d / "rate0.wav").write_bytes(voice[:24] + (0).to_bytes(4, "little") + voice[28:])
    (d / "alaw.wav").write_bytes(voice[:20] + (6).to_bytes(2, "little") + voice[22:])
    (d / "header_only.wav").write_bytes(voice[:30])
    (d / "folder.wav").mkdir()
    Image.new("L", (9000, 9000)).save(d / "huge.png")          # a few KB on disk, 243 MB decoded
    (d / "cut.png").write_bytes((d / "face.png").read_bytes()[:40])
    ckpt = torch.load(d / "run" / "ckpt.pt", weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "world_config"}, d / "no_world.pt")
    torch.save(dict(ckpt, model_config=dict(ckpt["model_config"], heads=5)), d / "bad_heads.pt")
    torch.save(dict(ckpt, world_config=dict(ckpt["world_config"], colour=1)), d / "unknown_world.pt")
    nan = {k: torch.full_like(v, float("nan")) for k, v in ckpt["ema"].items()}
    import checkpoint   # a diverged run's checkpoint: NaN weights, with their (valid) checksums
    torch.save(dict(ckpt, ema=nan, model=nan, checksums=checkpoint.tensor_checksums(dict(model=nan, ema=nan))),
               d / "nan.pt")
    torch.save(dict(ckpt, model=[1, 2]), d / "not_tensors.pt")
    torch.save(dict(ckpt, world_config=dict(ckpt["world_config"], image_size=30)), d / "world_30px.pt")
    torch.save(dict(ckpt, world_config=dict(ckpt["world_config"], n_mels=41)), d / "world_41_mels.pt")
    torch.save(dict(ckpt, step="10"), d / "step_text.pt")
    blob = bytearray((d / "run" / "ckpt.pt").read_bytes())   # 20 flipped bytes inside a weight's data
    weight = ckpt["model"]["layers.0.video.ffn.0.weight"].contiguous().numpy().tobytes()
    at = blob.find(weight[:64]) + 100
    blob[at:at + 20] = bytes(b ^ 0xFF for b in blob[at:at + 20])
    (d / "flipped.pt").write_bytes(bytes(blob))
    (d / "a_file").write_text("not a folder")
    return d


BAD_SAMPLE_INPUTS = [  # (what is wrong, flags, a fragment of the one line)
    ("reference wav at 0 Hz", dict(ref_audio="rate0.wav"), "the wav header says 0 Hz"),
    ("A-law wav", dict(ref_audio="alaw.wav"), "format 0x0006"),
    ("wav with no data chunk", dict(ref_audio="header_only.wav"), "no 'data' chunk"),
    ("a folder named .wav", dict(ref_audio="folder.wav"), "is a folder; give a file"),
    ("missing wav", dict(ref_audio="nowhere.wav"), "no such file"),
    ("9000x9000 png", dict(ref_image="huge.png"), "the image is 9000x9000"),
    ("truncated png", dict(ref_image="cut.png"), "not a readable image"),
    ("two voices for one subject", dict(ref_audio=["voice.wav", "voice.wav"]),
     "names 1 subject (<sub1>) but 2 --ref_audio were given"),
    ("anchor inside a line", dict(caption="a <sub1>: red. <S> ku <sub1> ta <E>"), "<sub1> inside a line"),
    ("100,000-character caption", dict(caption="a <sub1>: red. <S> " + "ka " * 33000 + "<E>"), "the limit is 2,000"),
    ("checkpoint without world_config", dict(ckpt="no_world.pt"), "lacks 'world_config'"),
    ("checkpoint whose heads do not divide dim", dict(ckpt="bad_heads.pt"), "cannot build a model (--heads 5"),
    ("checkpoint with an unknown world key", dict(ckpt="unknown_world.pt"), "unknown key(s) ['colour']"),
    ("checkpoint of NaN weights", dict(ckpt="nan.pt"), "holds NaN or inf"),
    ("checkpoint whose model is not tensors", dict(ckpt="not_tensors.pt"), "is not a dict of tensors"),
    ("a run folder as --ckpt", dict(ckpt="run"), "is a folder with no .safetensors"),
    ("checkpoint whose frames its patches do not tile", dict(ckpt="world_30px.pt"), "--image_size 30 must be a multiple"),
    ("checkpoint whose mels are not its audio channels", dict(ckpt="world_41_mels.pt"), "must equal --n_mels 41"),
    ("checkpoint whose step is text", dict(ckpt="step_text.pt"), "its 'step' is a str, not a int"),
    ("checkpoint with 20 flipped bytes", dict(ckpt="flipped.pt"), "does not match its checksum"),
    ("absurd guidance", dict(extra=["--cfg_video", "1e30", "--cfg_audio", "1e30"]), "came out NaN/inf or absurdly large"),
    ("a 70-bit seed", dict(extra=["--seed", str(2 ** 70)]), "--seed must be in 0 .. 2**63 - 1"),
    ("--demo with a caption", dict(extra=["--demo"]), "--demo samples the built-in case"),
    ("--out_dir under a file", dict(out="a_file/out"), "is a file, so no folder can be made under it"),
]


@pytest.mark.parametrize("what, flags, message", BAD_SAMPLE_INPUTS, ids=[c[0] for c in BAD_SAMPLE_INPUTS])
def test_a_bad_file_stops_sample_py_with_one_line(files, what, flags, message, monkeypatch, capsys):
    import sys

    import sample
    given = dict(ckpt=str(files / "run" / "ckpt.pt"), caption=CAPTION, ref_image="face.png", ref_audio="voice.wav",
                 out="out", extra=[])
    given.update(flags)
    refs = [(flag, p) for flag in ("ref_image", "ref_audio")
            for p in ([given[flag]] if isinstance(given[flag], str) else given[flag])]
    argv = ["sample.py", "--ckpt", str(files / given["ckpt"]), "--caption", given["caption"], "--steps", "1",
            *[x for flag, p in refs for x in (f"--{flag}", str(files / p))],
            "--out_dir", str(files / given["out"]), *given["extra"]]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        sample.main()
    # a bad file or checkpoint ends main() with the line; a bad flag exits 2 after printing it
    line = done.value.code if isinstance(done.value.code, str) else capsys.readouterr().err.rstrip("\n")
    assert line.startswith("error: ") and message in line and "\n" not in line, line


def test_good_files_sample(files, monkeypatch, capsys):
    """The table's baseline: the same command with good files writes the page (so a refusal above is the
    bad file's doing)."""
    import sys

    import sample
    monkeypatch.setattr(sys, "argv", ["sample.py", "--ckpt", str(files / "run" / "ckpt.pt"), "--caption", CAPTION,
                                      "--steps", "1", "--ref_image", str(files / "face.png"),
                                      "--ref_audio", str(files / "voice.wav"), "--out_dir", str(files / "out")])
    sample.main()
    assert "wrote" in capsys.readouterr().out and (files / "out" / "index.html").exists()


@pytest.mark.parametrize("caption", [CAPTION, "a grey room with dots."], ids=["described subject", "no subject"])
def test_a_caption_without_reference_files_samples_text_to_audio_video(files, caption, monkeypatch, capsys, tmp_path):
    """Ovi's own use: a prompt and no references. Each subject is drawn from its description alone (its references
    absent, as guidance's dropped ones); a caption naming nobody samples too. Before: one line asking for files,
    and with OCF on, a reshape error for a conditioning with no subjects."""
    import sys

    import sample
    monkeypatch.setattr(sys, "argv", ["sample.py", "--ckpt", str(files / "run" / "ckpt.pt"), "--caption", caption,
                                      "--steps", "1", "--out_dir", str(tmp_path)])
    sample.main()
    assert "wrote" in capsys.readouterr().out and (tmp_path / "video.gif").exists()
    assert not (tmp_path / "ref1.png").exists()                          # no reference to show


# ------------------------------------------------------------------------------------------------
# Through train.py's main(): checkpoints to resume or start from
# ------------------------------------------------------------------------------------------------


def run_train(monkeypatch, *flags):
    import sys

    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    size = [f"--{k}={v}" for k, v in {**TINY_OVERRIDES, **TINY_WORLD_OVERRIDES}.items()]
    monkeypatch.setattr(sys, "argv", ["train.py", "--batch_size", "2", "--progress_every", "0", *size, *flags])
    train.main()


def test_resuming_a_checkpoint_without_optimizer_state_is_one_line(files, tmp_path, monkeypatch):
    import torch
    ckpt = torch.load(files / "run" / "ckpt.pt", weights_only=True)
    (tmp_path / "run").mkdir()
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, tmp_path / "run" / "ckpt.pt")
    with pytest.raises(SystemExit) as done:
        run_train(monkeypatch, "--out_dir", str(tmp_path / "run"), "--max_steps", "2")
    assert "lacks 'optimizer'" in str(done.value.code) and "\n" not in str(done.value.code)


def test_init_from_another_model_size_is_refused_not_silently_trained(files, tmp_path, monkeypatch):
    """--init_from a checkpoint of another size used to train that size under the asked preset's name."""
    with pytest.raises(SystemExit) as done:
        run_train(monkeypatch, "--out_dir", str(tmp_path / "s2"), "--max_steps", "2", "--init_from",
                  str(files / "run" / "ckpt.pt"), "--dim", "64")
    line = str(done.value.code)
    assert "is a different model" in line and "dim 32 there, 64 here" in line and "\n" not in line


def test_init_from_on_a_resume_says_it_is_not_read_again(files, tmp_path, monkeypatch, capsys):
    import shutil
    shutil.copytree(files / "run", tmp_path / "run")
    run_train(monkeypatch, "--out_dir", str(tmp_path / "run"), "--max_steps", "2", "--init_from",
              str(files / "run" / "ckpt.pt"))
    assert "is not read again" in capsys.readouterr().out


OTHER_ENTRY_POINTS = [  # (module, flags, a fragment of the one line)
    ("bench", ["--batch_size", "0"], "--batch_size must be at least 1"),
    ("bench", ["--quality"], "--quality needs --ckpt"),
    ("bench", ["--quality", "--ckpt", "x.pt", "--subsets", "single,duet"], "--subsets takes some of"),
    ("bench", ["--cases", "-2"], "--cases must be at least 1"),
    ("bench", ["--guidance", "loud"], "invalid choice"),
    ("data", ["--clips", "0"], "--clips must be at least 1"),
    ("data", ["--scene", "garden"], "invalid choice"),
    ("build", ["--config", "huge"], "invalid choice"),
]


@pytest.mark.parametrize("module, argv, message", OTHER_ENTRY_POINTS)
def test_the_other_entry_points_refuse_a_bad_flag_in_one_line(module, argv, message, monkeypatch, capsys):
    import importlib
    import sys
    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [f"{module}.py", *argv])
    with pytest.raises(SystemExit) as done:
        mod.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1 and "usage:" not in err


def test_a_ref_mode_the_checkpoint_was_not_trained_with_is_one_line(files, monkeypatch):
    import sys

    import sample
    monkeypatch.setattr(sys, "argv", ["sample.py", "--ckpt", str(files / "run" / "ckpt.pt"), "--demo",
                                      "--ref_mode", "presence", "--out_dir", str(files / "out")])
    with pytest.raises(SystemExit) as done:
        sample.main()
    assert "was trained with ref_mode concat" in str(done.value.code)
