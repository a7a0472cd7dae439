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


def test_the_defaults_are_valid():
    tc, model_overrides, world_overrides = train.parse_args([])
    assert train.config_problems(tc, model_overrides, world_overrides) == []


BAD_SAMPLE_FLAGS = [
    (["--steps", "-1"], "--steps must be at least 1"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--shift", "0"], "--shift must be positive"),
    (["--guidance", "loud"], "argument --guidance: invalid choice"),
    (["--keep_source", "ture"], "expected true/false, got 'ture'"),
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
