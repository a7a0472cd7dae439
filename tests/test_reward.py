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


def test_a_latent_model_s_lirefl_step_decodes_and_moves_the_reward_up():
    """mini-Ovi predicts codec latents: the pixel LIRM reads the decoded estimate against the pixel reference, and the
    reward's gradient reaches the generator through the frozen decoder."""
    import codec
    import data
    world = data.WorldConfig()
    quick = codec.train_codec(world, codec.CodecConfig(clips=8, max_steps=2, video_seconds=1e9, audio_seconds=1e9,
                                                       batch=64), log=lambda *_: None)
    net = perturbed(build.build_model(dataclasses.replace(build.PRESETS["mini"], dim=64, heads=2, ffn=128, layers=1,
                                                          ocf=False, mtp_ca=False)), 0.05)
    lirm = reward.LIRM(SMALL, frames=world.frames, size=world.image_size, ref_size=world.ref_image_size)
    judge = reward.DecodedReward(lirm.requires_grad_(False), quick)
    batch = quick.encode_batch(data.ToyBatches(dataclasses.replace(world, scene="single"), 2).make_batch(0))
    assert batch["ref_pixels"].shape[-3:] == (3, world.ref_image_size, world.ref_image_size)
    tc = dataclasses.replace(train.TrainConfig(), video_loss_weight=0.0, audio_loss_weight=0.0, reward_weight=1.0,
                             cond_drop=0.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    loss, stats = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), "cpu", reward=judge)
    loss.backward()
    assert not any(p.grad is not None for p in judge.parameters())                 # the reward stays frozen
    opt.step()
    with torch.no_grad():
        _, after = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(1), "cpu", reward=judge)
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
