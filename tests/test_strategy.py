"""Training strategy (train.py, sample.py): interleaved audio-only steps, the curriculum, DreamID-Omni's
three tasks, the masked reconstruction loss and multi-condition CFG."""
import json

import pytest
import torch

import build
import checkpoint
import data
import recipes
import sample
import train
from conditioning import Conditioning
from tiny import TINY, TINY_OVERRIDES, TINY_WORLD, TINY_WORLD_OVERRIDES, perturbed, tiny_batch

WORLD = TINY_WORLD_OVERRIDES


def tiny_train(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), batch_size=2, audio_batch_size=4, max_steps=2, log_every=1, ckpt_every=100,
                warmup_steps=1, lr=3e-3)
    base.update(kw)
    return train.TrainConfig(**base)


def test_an_audio_only_step_leaves_video_and_cross_tower_weights_bitwise_unchanged(tmp_path):
    snapshots = {}

    def snap(step, net):
        snapshots[step] = {n: p.detach().clone() for n, p in net.named_parameters()}
    train.train(tiny_train(tmp_path, interleave_audio=1), TINY_OVERRIDES, WORLD, on_step=snap)
    assert recipes.step_plan(1, train.TrainConfig(interleave_audio=1))["audio_only"]  # step 2 = audio-only
    before, after = snapshots[1], snapshots[2]
    frozen = set(build.build_model(TINY).declared("video_side"))
    assert any("k_fusion" in n for n in frozen) and any(n.startswith("video_tower.") for n in frozen)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        if name in frozen:
            assert not changed, f"{name} moved in an audio-only step"
    audio = ["audio_stem.weight", "layers.0.audio.self_attn.q.weight", "audio_tower.head.weight",
             "layers.0.audio.cross_attn.q.weight"]
    assert all(not torch.equal(before[n], after[n]) for n in audio)


def test_ovi_recipe_trains_each_tower_alone_then_fuses(tmp_path):
    """recipes.py's ovi: stage 1 alternates a video-only step (the audio tower, its stem and the cross-tower
    pathway untouched) with an audio-only step; stage 2 runs joint steps. Every record of the log has a loss."""
    tc = train.TrainConfig(recipe="ovi", curriculum=True, stage_steps="4,2", interleave_audio=1)
    plans = [recipes.step_plan(s, tc) for s in range(6)]
    assert [(p["stage"], p["video_only"], p["audio_only"]) for p in plans] == [
        (1, True, False), (1, False, True), (1, True, False), (1, False, True), (2, False, False), (2, False, True)]
    snapshots = {}

    def snap(step, net):
        snapshots[step] = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = tmp_path / "run"
    train.train(tiny_train(out, recipe="ovi", curriculum=True, stage_steps="4,2"), TINY_OVERRIDES, WORLD, on_step=snap)
    before, after = snapshots[2], snapshots[3]  # the third step is video-only (the first runs at lr 0: warm-up)
    untouched = [n for n in after if n.startswith(("audio_tower.", "audio_stem.")) or ".audio." in n
                 or "_fusion" in n]
    moved = ["video_stem.weight", "video_tower.head.weight", "layers.0.video.cross_attn.q.weight"]
    assert untouched
    assert all(torch.equal(before[n], after[n]) for n in untouched), "a video-only step moved the audio side"
    assert all(not torch.equal(before[n], after[n]) for n in moved)
    records = [json.loads(line) for line in open(out / "log.jsonl")]  # audio-only steps log with the step before
    assert [r["stage"] for r in records] == [1, 1, 2]
    assert "loss_video_only" in records[0] and "loss_audio_only" in records[1] and all(r["loss"] > 0 for r in records)


def test_step_plan_interleaves_one_to_one_and_counts_batches():
    tc = train.TrainConfig(interleave_audio=1)
    kinds = [recipes.step_plan(s, tc)["audio_only"] for s in range(6)]
    assert kinds == [False, True, False, True, False, True]
    assert recipes.step_plan(5, tc)["joint_index"] == 3 and recipes.step_plan(5, tc)["audio_index"] == 2
    off = train.TrainConfig(interleave_audio=0)
    assert not any(recipes.step_plan(s, off)["audio_only"] for s in range(6))


def test_each_kind_of_step_keeps_one_stream_per_stage_and_reads_where_a_fresh_one_would(monkeypatch):
    """Joint and audio-only steps alternate: each kind's DataLoader is built once per stage (on a GPU host each
    build starts worker processes: rebuilt every step, it made mini-Ovi 10x slower on an H200), and its batches
    are still exactly those a stream started at that step reads (what a resume does)."""
    import types
    tc = train.TrainConfig(interleave_audio=1, batch_size=2, audio_batch_size=3, curriculum=True,
                           stage_steps="4,2,2,2")
    run = types.SimpleNamespace(tc=tc, wcfg=TINY_WORLD, data_rank=0, device=torch.device("cpu"), codec=None)
    built = []
    real = torch.utils.data.DataLoader
    monkeypatch.setattr(torch.utils.data, "DataLoader", lambda *a, **kw: built.append(1) or real(*a, **kw))
    stream = recipes.StageData(run)
    batches = [stream(recipes.step_plan(s, tc)) for s in range(6)]
    assert len(built) == 3                               # stage 1: joint and audio-only; stage 2: joint
    for s in (3, 5):                                     # a fresh stream from step s reads the same batch
        fresh = recipes.StageData(run)(recipes.step_plan(s, tc))
        assert torch.equal(fresh["audio"], batches[s]["audio"])


def test_curriculum_stages_switch_the_data_as_documented(tmp_path):
    tc = train.TrainConfig(curriculum=True, stage_steps="4,2,2,2", interleave_audio=1)
    plans = [recipes.step_plan(s, tc) for s in range(10)]
    assert [p["stage"] for p in plans] == [1] * 4 + [2] * 2 + [3] * 2 + [4] * 2
    assert [p["audio_only"] for p in plans[:6]] == [False, True, False, True, False, False]  # stage 2: joint only
    for stage, check in [(1, lambda s: s["roles"] == ["speaker"] and not s["cross_pair"]),
                         (2, lambda s: len(s["roles"]) >= 2 and not s["cross_pair"]),
                         (3, lambda s: s["cross_pair"]),
                         (4, lambda s: s["cross_pair"])]:
        world = data.WorldConfig(**recipes.STAGES[stage]["world"])
        assert all(check(data.make_clip(data.sample_rng(0, 0, 0, i), world)) for i in range(6))
    assert recipes.STAGES[4]["task_mix"] == "4,3,3"
    out = tmp_path / "run"
    train.train(tiny_train(out, curriculum=True, stage_steps="2,1,1"), TINY_OVERRIDES, WORLD)
    stages = [json.loads(line)["stage"] for line in open(out / "log.jsonl")]
    assert stages == [1, 2, 3]                          # stage 1's audio-only step logs with its joint step
    assert checkpoint.load_checkpoint(str(out / "ckpt.pt"))["stage"] == 3


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_new_modules_decay_to_a_tenth_while_a_constant_backbone_stays(schedule):
    """make_optimizer puts every addition (OCF, MTP-CA, the phoneme encoder, task inputs) in the group that decays
    on a cosine to a tenth (Omni-Customizer 5.1), and the backbone in the group --backbone_lr_schedule names."""
    tc = train.TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, min_lr_ratio=0.1, backbone_lr_schedule=schedule)
    net = build.build_model(TINY)
    backbone, new = train.make_optimizer(net, tc).param_groups
    names = {id(p): n for n, p in net.named_parameters()}
    assert new["cosine"] and backbone["cosine"] == (schedule == "cosine")
    new_names = {names[id(p)] for p in new["params"]}
    assert any(n.startswith("prompt.ocf.") for n in new_names) and any(n.startswith("prompt.mtp_ca.") for n in new_names)
    assert new_names == {n for n, _ in net.named_parameters() if n.startswith(("prompt.", "source_embed.", "driving_embed."))}
    assert len(backbone["params"]) + len(new["params"]) == len(names)
    assert train.lr_at(100, tc, new["cosine"]) == pytest.approx(0.1)
    assert train.lr_at(100, tc, backbone["cosine"]) == pytest.approx(0.1 if schedule == "cosine" else 1.0)


def test_masked_loss_ignores_everything_inside_the_mask():
    batch = tiny_batch(batch_size=2, scene="single")
    assert (batch["ref_frame"] >= 0).all() and (batch["ref_audio_start"] >= 0).all()
    video_mask, audio_mask = train.loss_masks(batch, batch["video"].shape, batch["audio"].shape,
                                              batch["ref_audio"].shape[2])
    assert video_mask.min() == 0 and audio_mask.min() == 0
    f = int(batch["ref_frame"][0, 0])
    x0, y0, x1, y1 = batch["boxes"][0, 0, f].long().tolist()
    assert video_mask[0, f, 0, y0:y1, x0:x1].abs().max() == 0
    pred, target = torch.randn_like(batch["video"]), batch["video"]
    scribbled = target + (1 - video_mask) * torch.randn_like(target) * 10          # change only the masked part
    assert torch.equal(train.masked_mse(pred, target, video_mask, (1, 2, 3, 4)),
                       train.masked_mse(pred, scribbled, video_mask, (1, 2, 3, 4)))
    cross = tiny_batch(batch_size=2, scene="single", cross_pair=1.0)
    v, a = train.loss_masks(cross, cross["video"].shape, cross["audio"].shape, cross["ref_audio"].shape[2])
    assert v.min() == 1 and a.min() == 1                                          # cross-pair: nothing to copy


def test_task_inputs_follow_the_per_sample_task():
    batch = tiny_batch(batch_size=3, scene="single")
    source, driving = train.task_inputs(batch, torch.tensor([0, 1, 2]), "cpu")
    assert source[0].abs().max() == 0 and source[2].abs().max() == 0                # only the RV2AV sample
    mask = batch["source_mask"][1]
    assert torch.equal(source[1, :, 3:], mask) and (source[1, :, :3] * mask).abs().max() == 0
    assert driving[1].abs().max() == 0 and torch.equal(driving[2], batch["audio"][2])


def test_multi_condition_cfg_reduces_to_the_conditional_prediction():
    v = {k: torch.randn(4) for k in ("pos", "neg", "no_video_ref", "no_audio_ref")}
    a = {k: torch.randn(4) for k in v}
    reduced = sample.Guidance(mode="multi", mc_text_video=1.0, mc_ref_video=0.0, mc_text_audio=1.0, mc_ref_audio=0.0)
    video, audio = reduced.combine(v, a)
    assert torch.allclose(video, v["pos"]) and torch.allclose(audio, a["pos"])
    full = sample.Guidance(mode="multi")
    video, _ = full.combine(v, a)
    expected = v["neg"] + 3.0 * (v["pos"] - v["neg"]) + 1.5 * (v["pos"] - v["no_video_ref"])
    assert torch.allclose(video, expected)


@pytest.mark.parametrize("task", ["r2av", "rv2av", "ra2v"])
@pytest.mark.parametrize("mode", ["plain", "multi"])
def test_each_task_samples_end_to_end(task, mode):
    net = perturbed(build.build_model(TINY), 0.05).eval()  # past the zero-inits (heads, task inputs)
    clip = data.make_clip(data.sample_rng(0, 2, 0, 0), TINY_WORLD)
    batch = data.collate([clip])
    source = torch.cat([clip["video"] * (1 - clip["source_mask"]), clip["source_mask"]], 1)[None] \
        if task == "rv2av" else None
    driving = clip["audio"][None] if task == "ra2v" else None
    cond = Conditioning.from_batch(batch, source, driving)
    video, audio = sample.sample(net, cond, batch["video"].shape, batch["audio"].shape, steps=2,
                                 guidance=sample.Guidance(mode=mode))
    assert video.shape == batch["video"].shape and torch.isfinite(audio).all()
    plain, _ = sample.sample(net, Conditioning.from_batch(batch), batch["video"].shape, batch["audio"].shape, steps=2,
                             guidance=sample.Guidance(mode=mode))
    assert (task == "r2av") == torch.equal(video, plain)             # a task's input changes what is generated


def test_rv2av_keeps_the_unmasked_source_region():
    net = perturbed(build.build_model(TINY), 0.05).eval()  # an arbitrary (untrained) model: the sampler must still keep it
    clip = data.make_clip(data.sample_rng(1, 2, 0, 0), TINY_WORLD)
    batch = data.collate([clip])
    mask = clip["source_mask"]
    source = torch.cat([clip["video"] * (1 - mask), mask], 1)[None]
    cond = Conditioning.from_batch(batch, source)
    video, _ = sample.sample(net, cond, batch["video"].shape, batch["audio"].shape, steps=4)
    keep = (1 - mask).expand_as(clip["video"]).bool()
    assert (video[0][keep] - clip["video"][keep]).abs().max() < 1e-5          # outside the mask: the source
    assert (video[0][~keep] - clip["video"][~keep]).abs().mean() > 0.05        # inside: generated anew
    free, _ = sample.sample(net, cond, batch["video"].shape, batch["audio"].shape, steps=4,
                            keep_source=False)
    assert (free[0][keep] - clip["video"][keep]).abs().mean() > 0.05           # the switch is what keeps it


def test_task_input_weights_get_a_gradient_whatever_the_batch_drew():
    """Under --task_mix every rank must run the same parameters (FSDP2 reduce-scatters per unit): the RV2AV and
    RA2V projections run (on zeros) even when this batch drew only R2AV samples."""
    torch.manual_seed(0)
    net = build.build_model(TINY)
    batch = tiny_batch(batch_size=2, scene="single")
    tc = train.TrainConfig(cond_drop=0.0)
    loss, stats = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(0), "cpu", task_weights=(1.0, 1e-9, 1e-9))
    assert (stats["task"] == 0).all()                    # every sample drew R2AV ...
    loss.backward()
    assert net.source_embed.weight.grad is not None and net.driving_embed.weight.grad is not None   # ... yet both ran
