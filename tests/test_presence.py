"""Identity-as-Presence (presence.py, ref_mode presence): the identity stream never reads the content, its
decoupled weights start as copies, cached identity keys/values equal recomputed ones, and every new
parameter learns."""
import dataclasses

import pytest
import torch

import build
import presence
import tiny
from conditioning import Conditioning
from tiny import TINY, tiny_batch

PRESENCE = dataclasses.replace(TINY, ref_mode="presence", layers=3)


def perturbed(net):
    """Random weights everywhere (zero-init gates would hide every path)."""
    return tiny.perturbed(net).eval()


def inputs(batch_size=2, seed=0):
    b = tiny_batch(batch_size, seed=seed, scene="dialogue")
    return b["video"], b["audio"], Conditioning.from_batch(b)


def identity_states(net, video, audio, t, cond):
    """The identity tokens' states after every layer but the last (hooked on the TwinLayers' outputs)."""
    states = []
    hooks = [layer.register_forward_hook(lambda m, i, out: states.append(tuple(
        x[:, n:].clone() for x, n in zip(out, (i[2].video.n, i[2].audio.n))))) for layer in net.layers]
    net(video, audio, t, cond)
    for h in hooks:
        h.remove()
    return states


def test_content_never_influences_the_identity_stream():
    """Perturb the content (the noisy clip, t, the caption): the identity states are bitwise unchanged."""
    net = perturbed(build.build_model(PRESENCE))
    video, audio, cond = inputs()
    before = identity_states(net, video, audio, torch.tensor([0.3, 0.8]), cond)
    other = cond.drop_prompt(torch.ones(2, dtype=torch.bool))
    after = identity_states(net, torch.randn_like(video), torch.randn_like(audio), torch.tensor([0.9, 0.1]), other)
    assert all(torch.equal(x, y) for b, a in zip(before, after) for x, y in zip(b, a))
    # and the content does read the identity: other references change the output
    out = net(video, audio, torch.tensor([0.3, 0.8]), cond)[0]
    swapped = dataclasses.replace(cond, ref_images=cond.ref_images.flip(0), ref_audio=cond.ref_audio.flip(0))
    assert not torch.allclose(out, net(video, audio, torch.tensor([0.3, 0.8]), swapped)[0])


def test_a_subjects_identity_does_not_depend_on_the_other_subjects():
    net = perturbed(build.build_model(PRESENCE))
    video, audio, cond = inputs()
    changed = cond.ref_images.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])           # subject 2's face only
    m = changed.shape[-1] // PRESENCE.patch_w * changed.shape[-2] // PRESENCE.patch_h
    a = identity_states(net, video, audio, torch.tensor([0.5, 0.5]), cond)
    b = identity_states(net, video, audio, torch.tensor([0.5, 0.5]), dataclasses.replace(cond, ref_images=changed))
    assert all(torch.equal(x[0][:, :m], y[0][:, :m]) for x, y in zip(a, b))            # subject 1's tokens
    assert not torch.equal(a[0][0][:, m:], b[0][0][:, m:])


def test_decoupled_weights_start_as_copies_of_the_content_weights():
    """At initialisation the decoupled model is exactly the shared-weight one; after Ovi-style loading of the
    content weights, copy_identity_from_content makes the identity weights those."""
    decoupled = build.build_model(dataclasses.replace(PRESENCE, decouple_audio=True))
    shared = build.build_model(dataclasses.replace(PRESENCE, decouple_video=False, decouple_audio=False))
    for name, p in decoupled.named_parameters():
        if ".identity." in name:
            twin = decoupled.get_parameter(name.replace(".identity.", "."))
            assert torch.equal(p, twin[tuple(slice(0, s) for s in p.shape)]), name
    video, audio, cond = inputs()
    t = torch.tensor([0.4, 0.7])
    for net in (decoupled, shared):  # gates are zero at init: give the blocks something to do first, alike in both
        tiny.perturbed(net, replace=True, skip=(".identity.",))
    decoupled.copy_identity_from_content()
    for x, y in zip(decoupled(video, audio, t, cond), shared(video, audio, t, cond)):
        assert torch.allclose(x, y, atol=1e-6)


def test_cached_identity_keys_and_values_equal_recomputed_ones():
    """One IdentityCache per clip: the first call fills it, later calls (other noise, other t) skip the identity
    tokens and must give the same prediction as a full forward."""
    net = perturbed(build.build_model(PRESENCE))
    video, audio, cond = inputs()
    cache = presence.IdentityCache()
    first = net(video, audio, torch.tensor([1.0, 1.0]), cond, cache=cache)
    assert cache.filled and len(cache.layers) == PRESENCE.layers
    assert all(torch.equal(x, y) for x, y in zip(first, net(video, audio, torch.tensor([1.0, 1.0]), cond)))
    for t in (0.7, 0.2):
        x_v, x_a, tt = torch.randn_like(video), torch.randn_like(audio), torch.full((2,), t)
        for x, y in zip(net(x_v, x_a, tt, cond, cache=cache), net(x_v, x_a, tt, cond)):
            assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("decouple_audio", [False, True])
def test_every_new_parameter_gets_a_gradient(decouple_audio):
    net = perturbed(build.build_model(dataclasses.replace(PRESENCE, decouple_audio=decouple_audio))).train()
    video, audio, cond = inputs()
    v, a = net(video, audio, torch.tensor([0.4, 0.7]), cond)
    (v.square().mean() + a.square().mean()).backward()
    new = [n for n, _ in net.named_parameters() if ".identity." in n or "identity_embed" in n]
    assert new and any(".audio.identity." in n for n in new) == decouple_audio
    for name in new:
        g = net.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name


def test_the_identity_stream_counts_as_additions():
    with torch.device("meta"):
        concat = build.count_parameters(build.build_model(TINY))
        presence = build.count_parameters(build.build_model(dataclasses.replace(TINY, ref_mode="presence")))
    assert presence["backbone"] == concat["backbone"] and presence["additions"] > concat["additions"]


# ------------------------------------------------------------------------------------------------
# The three-stage recipe (train.py --recipe presence) and the released guidance (sample.py)
# ------------------------------------------------------------------------------------------------


def test_the_three_presence_stages_are_reached_in_one_run(tmp_path):
    import json

    import checkpoint
    import data
    import recipes
    import train
    from tiny import TINY_OVERRIDES, TINY_WORLD_OVERRIDES
    tc = train.TrainConfig(recipe="presence", curriculum=True, stage_steps="1,1,1", out_dir=str(tmp_path),
                           batch_size=2, log_every=1, ckpt_every=3, progress_every=0)
    assert [recipes.step_plan(s, tc)["stage"] for s in range(3)] == [1, 2, 3]
    assert not any(recipes.step_plan(s, tc)["audio_only"] for s in range(3))      # the paper names none
    for stage, check in [(1, lambda c: len(c["roles"]) == 1 and not c["cross_pair"]),
                         (3, lambda c: c["cross_pair"])]:
        world = data.WorldConfig(**recipes.PRESENCE_STAGES[stage]["world"])
        assert all(check(data.make_clip(data.sample_rng(0, 0, 0, i), world)) for i in range(4))
    train.train(tc, TINY_OVERRIDES, TINY_WORLD_OVERRIDES)               # the recipe switches ref_mode presence on
    assert [json.loads(line)["stage"] for line in open(tmp_path / "log.jsonl")] == [1, 2, 3]
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["model_config"]["ref_mode"] == "presence"
    problems = train.config_problems(train.TrainConfig(recipe="presence", stage=4), dict(ref_mode="concat"), {})
    assert any("--stage must be" in p for p in problems) and any("leave --ref_mode presence" in p for p in problems)


def test_stage_one_gives_each_sample_exactly_one_kind_of_reference():
    """Unimodal identity: the face or the voice, never both (the usual dropout may remove the one left)."""
    import train
    seen = []

    def spy(video, audio, t, cond):
        seen.append(cond)
        return torch.zeros_like(video), torch.zeros_like(audio)
    batch = tiny_batch(64, scene="single")
    train.flow_loss(spy, batch, train.TrainConfig(cond_drop=0.0), torch.Generator().manual_seed(0), "cpu",
                    unimodal=True)
    faces, voices = seen[0].image_mask[:, 0], seen[0].voice_mask[:, 0]
    assert torch.equal(faces, ~voices) and 10 < int(faces.sum()) < 54


def test_presence_guidance_keeps_the_face_and_drops_the_voice_in_its_negative():
    import sample
    g = sample.Guidance(mode="presence")
    assert g.passes() == ["pos", "neg_keep_face"] and (g.presence_video, g.presence_audio) == (4.0, 3.0)
    _, _, cond = inputs()
    neg = sample.conditionings(cond, ["neg_keep_face"])
    assert torch.equal(neg.image_mask, cond.image_mask) and not neg.voice_mask.any() and not neg.line_mask.any()


def test_sampling_with_the_identity_cache_equals_sampling_without():
    import sample
    net = perturbed(build.build_model(PRESENCE))
    b = tiny_batch(1, scene="dialogue")
    cond = Conditioning.from_batch(b)
    run = lambda cached: sample.sample(net, cond, b["video"].shape, b["audio"].shape, steps=3,  # noqa: E731
                                       guidance=sample.Guidance(mode="presence"), identity_cache=cached)
    for x, y in zip(run(True), run(False)):
        assert torch.allclose(x, y, atol=1e-5)
