"""Latent shards (shards.py): the format round-trips; bad shards are named in one line."""
import pytest
import torch

import shards


def tiny_shard(n=3, k=2, m=1):
    return dict(video=torch.randn(n, 2, 48, 4, 4), audio=torch.randn(n, 10, 20), text_emb=torch.randn(n, 7, 4096),
                text_mask=torch.ones(n, 7, dtype=torch.bool), ref_images=torch.randn(n, k, 48, 4, 4),
                ref_audio=torch.randn(n, k, 5, 20), subject_mask=torch.ones(n, k, dtype=torch.bool),
                subject_spans=torch.tensor([[i, i + 1] for i in range(k)], dtype=torch.long).reshape(k, 2).expand(n, k, 2),
                speech_spans=torch.tensor([[k, 7]] * m, dtype=torch.long).reshape(m, 2).expand(n, m, 2),
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
    stream = iter(shards.LatentShards(str(tmp_path / "nan.pt"), batch_size=1))
    with pytest.raises(shards.ShardError, match="'audio' holds NaN or inf"):   # refused before it is trained on
        [next(stream) for _ in range(3)]


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


def replaced(field, value):
    s = tiny_shard()
    s[field] = value
    return s


BAD_SHARDS = [  # (what is wrong, shard, a fragment of the one line)
    ("int masks", replaced("text_mask", torch.ones(3, 7, dtype=torch.long)), "store masks as torch.bool"),
    ("float text_mask", replaced("text_mask", torch.ones(3, 7)), "store masks as torch.bool"),
    ("float phoneme ids", replaced("line_phonemes", torch.ones(3, 1, 6)), "store indices as torch.long"),
    ("integer video", replaced("video", torch.zeros(3, 2, 48, 4, 4, dtype=torch.long)), "expected a float dtype"),
    ("phoneme id past the table", replaced("line_phonemes", torch.full((3, 1, 6), 97)), "ids outside 0..96"),
    ("negative phoneme id", replaced("line_phonemes", torch.full((3, 1, 6), -1)), "ids outside 0..96"),
    ("span past the text", replaced("speech_spans", torch.tensor([[[2, 9]]]).expand(3, 1, 2)), "span outside"),
    ("empty span", replaced("subject_spans", torch.zeros(3, 2, 2, dtype=torch.long)), "span outside"),
    ("speaker who is not a subject", replaced("line_speaker", torch.full((3, 1), 2)), "outside 0..1"),
    ("lines without phonemes", replaced("line_phonemes", torch.ones(3, 1, 0, dtype=torch.long)), "0 phonemes"),
    ("reference voices of no frames", replaced("ref_audio", torch.randn(3, 2, 0, 20)), "0 latent frames"),
    ("a prompt of no real token", replaced("text_mask", torch.zeros(3, 7, dtype=torch.bool)), "no real text token"),
]


@pytest.mark.parametrize("what, shard, message", BAD_SHARDS, ids=[c[0] for c in BAD_SHARDS])
def test_a_shard_of_wrong_types_or_ranges_is_named_in_one_line(tmp_path, what, shard, message):
    """Before: an int mask crashed deep in attention, a float text_mask silently flipped the meaning of
    padding, out-of-range ids indexed past the embedding table."""
    torch.save(shard, tmp_path / "s.pt")
    with pytest.raises(shards.ShardError) as err:
        shards.LatentShards.load(str(tmp_path / "s.pt"), shards.ShardSpec())
    assert "s.pt" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_padding_entries_are_not_range_checked_and_float64_is_read_as_float32(tmp_path):
    """Masked-out subjects and lines may hold anything (zeros, usually); any float dtype is accepted."""
    s = tiny_shard(k=2)
    s["subject_mask"][:, 1] = False
    s["subject_spans"] = s["subject_spans"].clone()
    s["subject_spans"][:, 1] = 0                    # a padded subject's empty span: fine
    s["video"] = s["video"].double()
    torch.save(s, tmp_path / "s.pt")
    loaded = shards.LatentShards.load(str(tmp_path / "s.pt"), shards.ShardSpec())
    assert loaded["video"].dtype == torch.float32 and torch.equal(loaded["video"], s["video"].float())


def test_ranks_and_workers_split_the_batches_without_repeats(tmp_path):
    """Two ranks on ONE shard read disjoint samples; 2 DataLoader workers give the same stream as none (a
    loader without get_worker_info() repeated every batch once per worker); start_batch resumes it."""
    shards.write_shard(str(tmp_path / "s0.pt"), tiny_shard(n=8))
    ids = lambda b: b["audio"][:, 0, 0].tolist()  # noqa: E731  (each sample's own value)

    def stream(rank=0, world=1, workers=0, start=0, n=4):
        data = shards.LatentShards(str(tmp_path / "*.pt"), 1, rank=rank, world=world, start_batch=start)
        it = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers))
        return [ids(next(it))[0] for _ in range(n)]
    r0, r1 = stream(0, 2), stream(1, 2)
    assert not set(r0) & set(r1) and len(set(r0 + r1)) == 8              # one epoch, split, nothing twice
    assert stream(0, 2, workers=2) == r0 and stream(0, 2, start=1, n=3) == r0[1:]


def test_latents_the_patches_do_not_tile_are_named(tmp_path):
    """720 x 720 pixels are 45 x 45 Wan2.2 latents: a 2 x 2 patch cannot tile them (was a reshape error)."""
    s = tiny_shard()
    s["video"] = torch.randn(3, 2, 48, 5, 5)
    torch.save(s, tmp_path / "s.pt")
    with pytest.raises(shards.ShardError, match="do not tile; encode frames whose sides are multiples of 32"):
        shards.LatentShards.load(str(tmp_path / "s.pt"), shards.ShardSpec())


@pytest.mark.parametrize("extra", [{}, dict(ref_mode="presence"), dict(motion=True)], ids=["concat", "presence", "motion"])
def test_footage_without_identities_or_speech_trains(tmp_path, extra):
    """Ovi's own data: clips with a prompt and no subject (no references) and no spoken line. Before: refused
    ("0 subject(s)"), and with OCF on the model could not have taken them anyway."""
    import train
    shard = tiny_shard(n=2, k=0, m=0)
    shard["text_emb"] = torch.randn(2, 7, 16)                   # the small model's prompt width
    shards.write_shard(str(tmp_path / "s.pt"), shard, shards.ShardSpec(48, 20, 16))
    sizes = dict(dim=32, layers=2, heads=2, ffn=48, audio_stem_hidden=24, text_dim=16, ocf_dim=16, ocf_heads=2,
                 phoneme_layers=1, ocf_layers=1)
    tc = train.TrainConfig(config="full", data=str(tmp_path / "s.pt"), out_dir=str(tmp_path / "run"), batch_size=2,
                           max_steps=2, interleave_audio=0, progress_every=0, warmup_steps=0)
    out = train.train(tc, dict(sizes, **extra), {})
    assert out["step"] == 2 and all(torch.isfinite(torch.tensor(out["losses"])))
