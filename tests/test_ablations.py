"""The ablation harness (ablations.py): verdicts are computed from paired seeds and can come out any of three
ways; every table's rows are valid train.py runs; a tiny table trains, reuses its runs and prints verdicts."""
import dataclasses
import json

import pytest
import torch

import ablations
import bench
import caption
import checkpoint
import data
import train
from ablations import Claim, Row, Table
from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES


def results_of(better, worse, metric="face_sim", subset="single"):
    return {"A": {(subset, metric): better}, "B": {(subset, metric): worse}}


def test_the_verdict_reads_the_paired_interval_in_the_papers_direction():
    claim = Claim("A", "B", "face_sim", "single", "")
    # a small gain in every seed: the rows' own intervals overlap, the paired difference's does not
    assert ablations.verdict(claim, results_of([0.80, 0.70, 0.60], [0.79, 0.69, 0.59]))["verdict"] == "reproduced"
    assert ablations.verdict(claim, results_of([0.79, 0.69, 0.59], [0.80, 0.70, 0.60]))["verdict"] == "not reproduced"
    assert ablations.verdict(claim, results_of([0.80, 0.60, 0.70], [0.70, 0.70, 0.70]))["verdict"] == "inconclusive"
    assert ablations.verdict(claim, results_of([0.9], [0.1]))["verdict"] == "inconclusive"   # one seed: no interval
    lower = Claim("A", "B", "per", "complex", "")           # lower is better: A's lower PER is the paper's side
    v = ablations.verdict(lower, results_of([0.50, 0.40, 0.45], [0.60, 0.50, 0.55], "per", "complex"))
    assert v["verdict"] == "reproduced" and v["gain"] == pytest.approx(0.10)


def test_every_table_is_well_formed_and_its_rows_are_valid_runs_over_the_base(tmp_path):
    assert tuple(ablations.TABLES) == bench.PAPERS
    for table in ablations.TABLES.values():
        names = [r.name for r in table.rows]
        assert len(set(names)) == len(names) and not ablations.check_table(table, 100, str(tmp_path)), table.paper
        for i, row in enumerate(table.rows):
            assert row.start in ("", "base") or row.start in names[:i]            # starts from something trained
            assert row.start != "base" or table.base
            if row.claim:
                assert {row.claim.better, row.claim.worse} <= set(names) and row.name in (row.claim.better,
                                                                                            row.claim.worse)
                assert row.claim.metric in bench.metrics.HIGHER_IS_BETTER
                assert row.claim.subset in bench.SUBSETS + (bench.MOTION,)


def test_captions_without_anchors_name_people_by_label_and_exclude_ocf():
    world = dataclasses.replace(data.WorldConfig(), anchors=False)
    anchored, plain = data.held_out_case(data.WorldConfig(), "dialogue", 0), data.held_out_case(world, "dialogue", 0)
    text = caption.detokenize(plain["text_ids"].tolist())
    assert "<sub" not in text and "<sub1>" in anchored["caption"] and torch.equal(anchored["video"], plain["video"])
    label = anchored["caption"].split(" <sub1>")[0]                                       # "the one in green"
    assert f"{label} says <S>" in text and anchored["caption"] == plain["caption"]       # metrics read the same
    audio_only = data.ToyBatches(world, 2, audio_only=True).make_batch(0)               # the audio-only corpus too
    assert not any("<sub" in caption.detokenize(ids.tolist()) for ids in audio_only["text_ids"])
    assert all("the voice says <S>" in caption.detokenize(ids.tolist()) for ids in audio_only["text_ids"])
    problems = train.config_problems(train.TrainConfig(), {}, dict(anchors=False))
    assert any("--anchors false needs --ocf false" in p for p in problems)
    assert not train.config_problems(train.TrainConfig(), dict(ocf=False, mtp_ca=False), dict(anchors=False))


def tiny_table(steps=2):
    tiny, run = dict(TINY_OVERRIDES, ocf=False, mtp_ca=False), dict(batch_size=2, interleave_audio=0)
    return Table(paper="tiny", source="a tiny table", why="the test's", steps=steps, cases=1,
                 world=dict(TINY_WORLD_OVERRIDES), model=tiny, train=run,
                 base=ablations.Base(steps=2, model=tiny, world=dict(TINY_WORLD_OVERRIDES), train=run), rows=(
                     Row("base row", share=0.0),
                     Row("from base", dict(ref_rope="syn", ocf=True),   # switched on over the base's weights
                         claim=Claim("from base", "base row", "face_sim", "single", "")),
                     Row("scratch", start="", claim=Claim("from base", "scratch", "t_sim", "single", "")),
                 ))


def test_a_tiny_table_trains_scores_prints_verdicts_and_reuses_its_runs(tmp_path, capsys):
    table = tiny_table()
    logs = []
    results = ablations.run_table(table, 2, 1.0, str(tmp_path), 1, 2, torch.device("cpu"), log=logs.append)
    assert set(results) == {"base row", "from base", "scratch"}
    assert all(len(v) == 2 for r in results.values() for v in r.values())        # one value per seed
    assert sum("trained" in line for line in logs) == 1 + 2 * 2                    # one base; 2 rows x 2 seeds
    assert not ablations.check_table(table, 2, str(tmp_path))
    flat = ablations.print_table(table, results, "header")
    out = capsys.readouterr().out
    assert flat["from base/verdict"] in ("reproduced", "not reproduced", "inconclusive") and "scratch" in out
    json.dumps(flat)
    logs.clear()
    ablations.run_table(table, 2, 1.0, str(tmp_path), 1, 2, torch.device("cpu"), log=logs.append)
    assert not any("trained" in line for line in logs)                           # finished runs are reused
    # a table whose steps changed must not resume (or reuse) the old runs: one line, before any training
    with pytest.raises(checkpoint.CheckpointError, match="a run of 2 steps, where this table now asks 3"):
        ablations.run_table(dataclasses.replace(table, base=dataclasses.replace(table.base, steps=3)), 2, 1.0,
                            str(tmp_path), 1, 2, torch.device("cpu"), log=logs.append)
    assert ablations.budget_dir(str(tmp_path), 2.0) == str(tmp_path / "budget2")  # a budget's runs: own folder
    # a longer base alone (--base_budget): its own base, and rows fine-tuned from it, in their own folder
    ablations.run_table(table, 1, 1.0, str(tmp_path), 1, 2, torch.device("cpu"), log=logs.append, base_budget=2.0)
    stronger = tmp_path / "budget1_base2"
    assert checkpoint.load_checkpoint(str(stronger / "base" / "ckpt.pt"))["step"] == 4        # 2 base steps x 2
    assert checkpoint.load_checkpoint(str(stronger / "tiny" / "from_base" / "seed0" / "ckpt.pt"))["step"] == 2


def test_ablate_flags_are_checked_before_any_training():
    with pytest.raises(SystemExit):
        bench.parse_args(["--ablate", "nobody"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--ablate", "presence", "--budget", "nan"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--ablate", "presence", "--base_budget", "0"])
    args = bench.parse_args(["--ablate", "presence"])
    assert args.cases is None and args.seeds == 3                 # the table's own cases; intervals need 3 seeds


def test_a_row_that_changes_more_than_additions_is_refused_before_training(tmp_path):
    """The presence rows without the base's --ocf false would stop at their first run, after the base trained."""
    table = dataclasses.replace(ablations.PRESENCE, model={})
    problems = ablations.check_table(table, 100, str(tmp_path))
    assert problems and all("in the base" in p for p in problems) and any("--ocf False" in p for p in problems)


def test_rows_fine_tune_a_given_mini_base_with_its_codec_and_print_their_probes(tmp_path, capsys):
    """--base_ckpt: a latent (mini) base trained elsewhere; rows take its preset, sizes and codec, are scored
    through that codec, and the table's probes come out next to the claims (cached, so a rerun samples nothing)."""
    import codec
    quick = codec.train_codec(data.WorldConfig(), codec.CodecConfig(clips=8, max_steps=2, video_seconds=1e9,
                                                                    audio_seconds=1e9, batch=64), log=lambda *_: None)
    torch.save(quick.state(), tmp_path / "codec.pt")
    sizes = dict(dim=64, heads=2, ffn=128, layers=1, ocf=False, mtp_ca=False)
    base = train.train(train.TrainConfig(config="mini", out_dir=str(tmp_path / "base"), codec=str(tmp_path / "codec.pt"),
                                         max_steps=1, batch_size=2, audio_batch_size=2, log_every=1, progress_every=0),
                       model_overrides=sizes)["checkpoint"]
    table = Table(paper="tiny", source="a tiny table", why="the test's", steps=1, cases=1, base=ablations.BASE,
                  model=dict(ocf=False, mtp_ca=False), train=dict(batch_size=2, interleave_audio=0),
                  probes=ablations.BINDING + (("dialogue", "copy"),), rows=(
                      Row("plain"),
                      Row("syn", dict(ref_rope="syn"), claim=Claim("syn", "plain", "t_sim", "dialogue", "")),
                  ))
    assert not ablations.check_table(table, 1, str(tmp_path / "ab"), base)
    logs = []
    results = ablations.run_table(table, 1, 1.0, str(tmp_path / "ab"), 1, 2, torch.device("cpu"), log=logs.append,
                                  base_ckpt=base)
    assert sum("trained" in line for line in logs) == 2                        # no base trained: the given one
    run = checkpoint.load_checkpoint(str(next((tmp_path / "ab").glob("budget1_base-*")) / "tiny" / "syn" / "seed0" /
                                         "ckpt.pt"))
    assert run["train_config"]["config"] == "mini" and run["model_config"]["dim"] == 64 and "codec" in run
    for row in results.values():
        assert 0 <= row[("dialogue", "bind_ref_text")][0] <= 1 and 0 < row[("dialogue", "copy")][0] <= 1
        assert row[("dialogue", "truth copy")][0] > 0                           # the world's own, for comparison
    flat = ablations.print_table(table, results, "header")
    assert "probes" in capsys.readouterr().out and "syn/probe/dialogue/bind_ref_text" in flat
    logs.clear()
    again = ablations.run_table(table, 1, 1.0, str(tmp_path / "ab"), 1, 2, torch.device("cpu"), log=logs.append,
                                base_ckpt=base)
    assert repr(again) == repr(results) and not any("trained" in line for line in logs)  # runs and scores reused


def test_seeds_to_settle_grow_as_the_gain_shrinks_against_its_spread():
    assert ablations.seeds_to_settle([0.10, 0.12, 0.08]) <= 3                    # already clear of 0 at 3 seeds
    small, smaller = ablations.seeds_to_settle([0.05, -0.03, 0.04]), ablations.seeds_to_settle([0.02, -0.03, 0.04])
    assert 3 < small < smaller
    assert ablations.seeds_to_settle([0.0, 0.0, 0.0]) == 0 and ablations.seeds_to_settle([0.1]) == 0


def test_the_bases_strip_has_a_row_per_checkpoint_and_the_truth(tmp_path):
    from PIL import Image
    from tiny import TINY_OVERRIDES
    base = train.train(train.TrainConfig(out_dir=str(tmp_path / "base"), max_steps=1, batch_size=2, log_every=1,
                                         progress_every=0, interleave_audio=0),
                       dict(TINY_OVERRIDES, ocf=False, mtp_ca=False))["checkpoint"]
    png = str(tmp_path / "bases.png")
    ablations.draw_bases([base, base], png, steps=2, labels=["one", "two"])
    one = ablations.draw_bases([base], str(tmp_path / "one.png"), steps=2)
    assert one is None and Image.open(png).height > Image.open(tmp_path / "one.png").height   # 3 rows against 2
