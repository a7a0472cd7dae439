"""DreamVideo-Omni's latent identity reward (reward.py): LIRM learns to tell a clip's own person from another
on held-out people, and one LIReFL step raises the reward on a fixed batch."""
import dataclasses

import torch

import build
import reward
import train
from tiny import TINY, TINY_WORLD, perturbed, tiny_batch

SMALL = reward.RewardConfig(dim=48, layers=1, heads=2)


def test_lirm_ranks_the_own_reference_above_another_persons_on_held_out_people():
    torch.set_num_threads(1)
    lirm = reward.train_lirm(200, batch=16, pool=256, log=lambda *_: None, cfg=SMALL)
    assert reward.held_out_accuracy(lirm, cases=48) > 0.65                       # chance: 0.5


def test_one_lireFL_step_moves_the_reward_up_on_a_fixed_batch():
    net = perturbed(build.build_model(TINY), 0.05)
    lirm = reward.LIRM(SMALL, frames=TINY_WORLD.frames, size=TINY_WORLD.image_size, ref_size=TINY_WORLD.ref_image_size)
    for p in lirm.parameters():
        p.requires_grad_(False)
    batch = tiny_batch(4, scene="single")
    tc = dataclasses.replace(train.TrainConfig(), video_loss_weight=0.0, audio_loss_weight=0.0, reward_weight=1.0,
                             cond_drop=0.0)                                      # the reward term alone
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def mean_reward():
        return train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), "cpu", reward=lirm)
    loss, stats = mean_reward()
    loss.backward()
    opt.step()
    with torch.no_grad():
        _, after = mean_reward()
    assert after["reward"].mean() > stats["reward"].mean()


def save_tiny_lirm(path):
    lirm = reward.LIRM(SMALL, frames=TINY_WORLD.frames, size=TINY_WORLD.image_size, ref_size=TINY_WORLD.ref_image_size)
    torch.save(dict(model=lirm.state_dict(), config=dataclasses.asdict(SMALL),
                    sizes=dict(frames=TINY_WORLD.frames, size=TINY_WORLD.image_size, ref_size=TINY_WORLD.ref_image_size)),
               path)
    return str(path)


def test_a_lirefl_run_logs_its_reward(tmp_path):
    """Reward hacking shows as the reward rising while the losses do: both are in log.jsonl."""
    import json

    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    tc = train.TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, log_every=1, progress_every=0,
                           reward_model=save_tiny_lirm(tmp_path / "lirm.pt"), interleave_audio=0)
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert all("reward" in r and "loss_video" in r for r in records)


def test_the_dreamvideo_recipe_runs_motion_sft_then_lirefl(tmp_path):
    """--recipe dreamvideo: stage 1 trains motion control without the reward, stage 2 adds LIReFL."""
    import json

    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    problems = train.config_problems(train.TrainConfig(recipe="dreamvideo", stage=2), {"motion": True}, {})
    assert len(problems) == 1 and "--reward_model" in problems[0]   # the default --stage_steps is no problem
    tc = train.TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, recipe="dreamvideo", curriculum=True,
                           stage_steps="1,1", log_every=1, progress_every=0,
                           reward_model=save_tiny_lirm(tmp_path / "lirm.pt"))
    train.train(tc, dict(TINY_OVERRIDES, motion=True), TINY_WORLD_OVERRIDES)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [(r["stage"], "reward" in r) for r in records] == [(1, False), (2, True)]


def test_a_lirm_file_of_the_earlier_layout_still_loads(tmp_path):
    """Its trunk blocks are text.TextBlock now (output projection `proj`); files that name it `o` still load."""
    lirm = reward.LIRM(SMALL)
    path = str(tmp_path / "lirm.pt")
    reward.save_lirm(lirm, path)
    saved = torch.load(path, weights_only=True)
    saved.pop("checksums")                                   # files of that version had none
    saved["model"] = {k.replace(".proj.", ".o.") if k.startswith("trunk.") else k: v for k, v in saved["model"].items()}
    assert any(".o." in k for k in saved["model"] if k.startswith("trunk."))
    torch.save(saved, path)
    loaded = reward.load_lirm(path)
    assert all(torch.equal(a, b) for a, b in zip(lirm.state_dict().values(), loaded.state_dict().values()))


def quick_codec(world):
    import codec
    return codec.train_codec(world, codec.CodecConfig(clips=8, max_steps=2, video_seconds=1e9, audio_seconds=1e9,
                                                      batch=64), log=lambda *_: None)


def tiny_mini():
    """A one-layer mini-Ovi model (codec latents), its weights nudged off their initial values."""
    return perturbed(build.build_model(dataclasses.replace(build.PRESETS["mini"], dim=64, heads=2, ffn=128, layers=1,
                                                           ocf=False, mtp_ca=False)), 0.05)


def lirefl_step_on_mini_ovi(make_judge):
    """One LIReFL step (the reward term alone) of a tiny mini-Ovi on a fixed batch: (rewards before, after)."""
    import data
    world = data.WorldConfig()
    quick = quick_codec(world)
    net, judge = tiny_mini(), make_judge(quick, world)
    batch = quick.encode_batch(data.ToyBatches(dataclasses.replace(world, scene="single"), 2).make_batch(0))
    assert batch["ref_pixels"].shape[-3:] == (3, world.ref_image_size, world.ref_image_size)
    tc = dataclasses.replace(train.TrainConfig(), video_loss_weight=0.0, audio_loss_weight=0.0, reward_weight=1.0,
                             cond_drop=0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss, stats = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), "cpu", reward=judge)
    loss.backward()
    assert not any(p.grad is not None for p in judge.parameters())                 # the reward stays frozen
    assert net.video_stem.weight.grad is not None                                  # ... and reaches the generator
    opt.step()
    with torch.no_grad():
        _, after = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), "cpu", reward=judge)
    return stats["reward"].mean(), after["reward"].mean()


def test_a_latent_model_s_lirefl_step_decodes_and_moves_the_reward_up():
    """mini-Ovi predicts codec latents: the pixel LIRM reads the decoded estimate against the pixel reference, and the
    reward's gradient reaches the generator through the frozen decoder."""
    def pixel_judge(quick, world):
        lirm = reward.LIRM(SMALL, frames=world.frames, size=world.image_size, ref_size=world.ref_image_size)
        return reward.DecodedReward(lirm.requires_grad_(False), quick)
    before, after = lirefl_step_on_mini_ovi(pixel_judge)
    assert after > before


def test_the_paper_s_lirm_reads_latents_through_a_frozen_copy_and_lirefl_moves_its_reward_up():
    """The paper's form: LIReFL scores the one-step latent estimate with a LatentLIRM whose backbone is a frozen
    copy of the generator; no decoder, the gradient reaches the generator and none of the reward's weights."""
    before, after = lirefl_step_on_mini_ovi(lambda quick, world: reward.LatentLIRM(tiny_mini()).requires_grad_(False))
    assert after > before


def test_the_paper_s_lirm_scores_under_bf16_autocast():
    """On a GPU LIReFL runs under bf16 autocast: the LatentLIRM's reward stays finite and near its fp32 value."""
    import data
    quick = quick_codec(data.WorldConfig())
    judge = reward.LatentLIRM(tiny_mini()).requires_grad_(False)
    video, ref = reward.latent_pool(quick, reward.reward_world(), 0, 7, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r16 = judge(video, ref)
    r32 = judge(video, ref)
    assert torch.isfinite(r16).all() and torch.allclose(r16.float(), r32, atol=0.05 + 0.05 * r32.abs().max().item())


def test_the_latent_lirm_learns_identity_and_its_file_stands_alone(tmp_path):
    """Trained over a backbone's features, it ranks held-out people's own references first more often than chance,
    and its file rebuilds the same reward (backbone included) and refuses a damaged copy."""
    import pytest

    import checkpoint
    import data
    quick = quick_codec(data.WorldConfig())
    model = reward.train_latent_lirm(tiny_mini(), quick, 300, pool=128, log=lambda *_: None)
    assert reward.held_out_accuracy(model, cases=64, codec=quick) > 0.6                 # chance: 0.5 (sd 0.06)
    path = str(tmp_path / "lirm_latent.pt")
    reward.save_latent_lirm(model, path)
    video, ref = reward.latent_pool(quick, reward.reward_world(), 3, 7, 4)
    assert torch.allclose(reward.load_lirm(path, reward.reward_world())(video, ref), model(video, ref))
    saved = torch.load(path, weights_only=True)
    name = next(iter(saved["backbone"]))
    saved["backbone"][name] = saved["backbone"][name] + 1
    torch.save(saved, path)
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        reward.load_lirm(path)
