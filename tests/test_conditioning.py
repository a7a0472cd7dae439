"""The typed conditioning seam (conditioning.py): building it, and the drops that training and guidance share."""
import caption
import dataclasses

import pytest
import torch

import build
import data
import sample
from conditioning import Conditioning
from tiny import TINY, perturbed, tiny_batch


def test_built_from_a_toy_batch_with_every_field():
    batch = tiny_batch(batch_size=2, scene="dialogue")
    cond = Conditioning.from_batch(batch)
    assert cond.batch_size == 2 and cond.subjects == batch["ref_images"].shape[1]
    assert torch.equal(cond.voice_mask, batch["subject_mask"]) and torch.equal(cond.image_mask, batch["ref_image_mask"])
    assert torch.equal(cond[1:].text, batch["text_ids"][1:])
    both = Conditioning.cat([cond, cond[:1]])
    assert both.batch_size == 3 and torch.equal(both.ref_audio[2], cond.ref_audio[0])


def test_the_empty_prompt_keeps_nothing_of_the_caption():
    cond = Conditioning.from_batch(tiny_batch(batch_size=2, scene="dialogue"))
    dropped = cond.drop_prompt(torch.tensor([True, False]))
    assert dropped.text_mask[0].sum() == 1 and dropped.text[0].abs().sum() == 0         # one null token
    assert not dropped.line_mask[0].any() and not dropped.phoneme_mask[0].any() and dropped.subject_spans[0].abs().sum() == 0
    assert torch.equal(dropped.text[1], cond.text[1]) and torch.equal(dropped.line_mask[1], cond.line_mask[1])


def random_net(cfg):
    """Every weight perturbed, seeded by its name: configs that share a name share its value."""
    return perturbed(build.build_model(cfg), 0.05).eval()


def forward(net, cond, batch):
    return net(batch["video"], batch["audio"], torch.full((batch["audio"].shape[0],), 0.6), cond)


@pytest.mark.parametrize("images, voices", [(True, False), (False, True)])
def test_guidance_drops_references_exactly_as_training_does(images, voices):
    """The multi-condition CFG passes are the training drops (the same method), and a dropped reference is
    absent: what it holds no longer changes the prediction."""
    batch = tiny_batch(batch_size=1, scene="single")
    cond = Conditioning.from_batch(batch)
    name = "no_video_ref" if images else "no_audio_ref"
    guided = sample.conditionings(cond, [name])
    trained = cond.drop_references(torch.ones(1, dtype=torch.bool), images=images, voices=voices)
    for f in dataclasses.fields(Conditioning):
        a, b = getattr(guided, f.name), getattr(trained, f.name)
        assert (a is None and b is None) or (a == b if f.name == "full" else torch.equal(a, b)), f.name
    net = random_net(TINY)
    scribbled = dataclasses.replace(trained, ref_images=-trained.ref_images if images else trained.ref_images,
                                    ref_audio=-trained.ref_audio if voices else trained.ref_audio)
    v1, a1 = forward(net, trained, batch)
    v2, a2 = forward(net, scribbled, batch)
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)
    v3, _ = forward(net, cond, batch)
    assert not torch.allclose(v1, v3, atol=1e-4)                 # and it was used when not dropped


@pytest.mark.parametrize("switch, off, on", [
    ("ref_rope", "plain", "syn"), ("ref_rope", "plain", "condition"), ("ocf_rope", "1d", "sa_mrope"), ("ocf", False, True), ("mtp_ca", False, True),
    ("task_inputs", False, True)])
def test_each_switch_changes_the_forward_pass(switch, off, on):
    batch = tiny_batch(batch_size=1, scene="dialogue")
    source = torch.cat([batch["video"], batch["source_mask"]], 2)
    cond = Conditioning.from_batch(batch, source, batch["audio"])   # task inputs given, for the task_inputs switch
    outs = [forward(random_net(dataclasses.replace(TINY, **{switch: value})), cond, batch) for value in (off, on)]
    assert not torch.allclose(outs[0][0], outs[1][0], atol=1e-5) or not torch.allclose(outs[0][1], outs[1][1], atol=1e-5)


def test_toy_sizes_held_by_the_model_agree_with_the_world():
    world = data.WorldConfig()
    assert build.TOY_CLIP == dict(frames=world.frames, image_size=world.image_size, mel_frames=world.mel_frames,
                                  ref_image_size=world.ref_image_size, ref_mel_frames=world.ref_mel_frames)
    import conditioning
    assert conditioning.NULL_TOKEN == caption.PAD_ID
