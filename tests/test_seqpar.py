"""Sequence parallelism (seqpar.py): the all-to-alls are inverse, and two ranks sharing one sample give the
loss and gradients of one rank."""
import os

import pytest
import torch

from test_train import HERE, torchrun


def test_two_ranks_sharing_a_sample_equal_one_rank(tmp_path):
    """Padded references (three subjects in one sample, fewer in the other), a dropped voice, 4 heads split
    2 + 2, token counts that do not divide by 2 (padding): loss and every gradient as on one rank."""
    script = os.path.join(HERE, "sp_check.py")
    torchrun(script, str(tmp_path / "one.pt"), nproc=1)
    torchrun(script, str(tmp_path / "two.pt"), nproc=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["subjects"] >= 2
    assert torch.allclose(one["loss"], two["loss"], rtol=1e-5)
    for name, g in one["grads"].items():
        assert torch.allclose(g, two["grads"][name], rtol=1e-3, atol=1e-6), name
    assert sum(g.abs().sum() for g in one["grads"].values()) > 0


@pytest.mark.parametrize("fsdp", ["false", "true"])
def test_train_py_with_seq_parallel_2_trains_like_one_rank(tmp_path, fsdp):
    """The whole loop: the ranks of the group read the same batch and noise, and the loss scaling makes
    DDP's / FSDP2's average the group's sum: losses and weights after 3 steps as on one rank."""
    import json

    import checkpoint
    import sharded
    from tiny import TINY_OVERRIDES
    flags = ["train.py", "--batch_size", "2", "--max_steps", "3", "--log_every", "1", "--ckpt_every", "3",
             "--progress_every", "0", "--clip_seconds", "1.0", "--ref_audio_seconds", "0.5", "--heads", "4",
             "--warmup_steps", "0"] + [f"--{k}={v}" for k, v in TINY_OVERRIDES.items() if k != "heads"]
    torchrun(*flags, "--out_dir", str(tmp_path / "one"), nproc=1)
    torchrun(*flags, "--out_dir", str(tmp_path / "two"), "--seq_parallel", "2", "--fsdp", fsdp, nproc=2)
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / run / "log.jsonl")] for run in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    if fsdp == "true":  # FSDP2 writes a sharded checkpoint: consolidate it into the ckpt.pt form
        sharded.consolidate(str(tmp_path / "two" / "ckpt_sharded"), str(tmp_path / "two" / "ckpt.pt"))
    one, two = (checkpoint.load_checkpoint(str(tmp_path / run / "ckpt.pt"))["model"] for run in ("one", "two"))
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), name
