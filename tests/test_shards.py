"""Latent shards (shards.py): the format round-trips; bad shards are named in one line."""
import pytest
import torch

import shards


def tiny_shard(n=3, k=2, m=1):
    return dict(video=torch.randn(n, 2, 48, 4, 4), audio=torch.randn(n, 10, 20), text_emb=torch.randn(n, 7, 4096),
                text_mask=torch.ones(n, 7, dtype=torch.bool), ref_images=torch.randn(n, k, 48, 4, 4),
                ref_audio=torch.randn(n, k, 5, 20), subject_mask=torch.ones(n, k, dtype=torch.bool),
                subject_spans=torch.zeros(n, k, 2, dtype=torch.long), speech_spans=torch.zeros(n, m, 2, dtype=torch.long),
                line_speaker=torch.zeros(n, m, dtype=torch.long), line_mask=torch.ones(n, m, dtype=torch.bool),
                line_phonemes=torch.ones(n, m, 6, dtype=torch.long))


def test_shards_round_trip(tmp_path):
    written = [tiny_shard(), tiny_shard()]
    for i, s in enumerate(written):
        shards.write_shard(str(tmp_path / f"s{i}.pt"), s)
    stream = iter(shards.LatentShards(str(tmp_path / "*.pt"), batch_size=3))
    got = [next(stream) for _ in range(2)]
    seen = torch.cat([g["video"] for g in got])
    expected = torch.cat([s["video"] for s in written])
    assert sorted(seen.sum((1, 2, 3, 4)).tolist()) == pytest.approx(sorted(expected.sum((1, 2, 3, 4)).tolist()))


def test_bad_shards_are_named_in_one_line(tmp_path):
    missing = tiny_shard()
    del missing["text_emb"]
    torch.save(missing, tmp_path / "missing.pt")
    wrong = tiny_shard()
    wrong["audio"] = torch.randn(3, 10, 16)
    torch.save(wrong, tmp_path / "wrong.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a shard")
    for name, field in [("missing", "text_emb"), ("wrong", "audio"), ("corrupt", "cannot be read")]:
        with pytest.raises(shards.ShardError) as err:
            next(iter(shards.LatentShards(str(tmp_path / f"{name}.pt"), batch_size=1)))
        assert f"{name}.pt" in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_a_shard_holding_nan_is_refused(tmp_path):
    poisoned = tiny_shard()
    poisoned["audio"][1, 3, 0] = float("nan")
    torch.save(poisoned, tmp_path / "nan.pt")
    with pytest.raises(shards.ShardError, match="'audio' holds NaN or inf"):
        next(iter(shards.LatentShards(str(tmp_path / "nan.pt"), batch_size=1)))


def test_shards_smaller_than_a_batch_stop_with_one_line_instead_of_hanging(tmp_path):
    import signal
    for i in range(2):
        shards.write_shard(str(tmp_path / f"s{i}.pt"), tiny_shard(n=3))
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the loader hung"))  # the bug was an endless loop
    signal.alarm(30)
    try:
        with pytest.raises(shards.ShardError, match="lower --batch_size to at most 3") as err:
            next(iter(shards.LatentShards(str(tmp_path / "*.pt"), batch_size=4)))
    finally:
        signal.alarm(0)
    assert "\n" not in str(err.value)
