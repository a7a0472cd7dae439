"""The twin tower (model.py): gradients, zero-init identities, masks, parameter and FLOP accounting."""
import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import attention
import build
import model
from conditioning import Conditioning
from tiny import TINY, perturbed, tiny_batch


def forward(net, batch, t=None, **kw):
    t = torch.full((batch["audio"].shape[0],), 0.5) if t is None else t
    return net(batch["video"], batch["audio"], t, Conditioning.from_batch(batch, **kw))


def random_net(cfg=TINY):
    """A tiny twin tower with every weight perturbed, so no zero-init hides a wiring mistake."""
    return perturbed(build.build_model(cfg), 0.05)


@pytest.mark.parametrize("extra", [{}, dict(motion=True), dict(lora_rank=4), dict(ref_mode="presence")],
                         ids=["base", "motion", "lora", "presence"])
def test_every_parameter_gets_a_gradient(extra):
    """Every module a switch adds is wired in: each of its parameters (boxes, trajectories and group codes under
    --motion; both adapter matrices under LoRA; the identity stream under presence) gets a non-zero gradient."""
    net = random_net(dataclasses.replace(TINY, **extra))  # past the zero-inits, which block gradients by design
    batch = tiny_batch()
    source = torch.cat([batch["video"], batch["source_mask"]], 2)
    v, a = forward(net, batch, source_video=source, driving_audio=batch["audio"])   # boxes and trajectories too
    (v.square().mean() + a.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_zero_init_is_identity_where_it_says_so():
    torch.manual_seed(0)
    net = build.build_model(TINY)
    batch = tiny_batch()
    v, a = forward(net, batch)
    assert v.abs().max() == 0 and a.abs().max() == 0                 # zero output heads
    block = net.layers[0].video
    x = torch.randn(2, 7, TINY.dim)
    # time_proj is zero at init: gates come only from the (zero) gate bias
    e_init = net.video_tower.timestep(torch.rand(2))[1]
    assert e_init[:, :, [2, 5]].abs().max() == 0
    io = model.TowerInputs(e=e_init, emb=None, n=4, mask=None, rope=None, text=None)
    assert torch.equal(block.ffn_part(x, io), x)                    # gated FFN adds exactly nothing
    perturbed(net.video_tower.head, 0.05)  # now a non-zero output: task inputs must still be no-ops
    source = torch.cat([batch["video"], batch["source_mask"]], 2)
    v1, _ = forward(net, batch)
    v2, _ = forward(net, batch, source_video=source, driving_audio=batch["audio"])
    assert torch.equal(v1, v2)


def test_text_and_time_embeddings_start_small_as_in_wan():
    """Wan draws its text and time embeddings' weights from N(0, 0.02); with Xavier (4x larger here) AdamW drove
    every hidden unit of the prompt projection below zero, where GELU is flat, and the caption was lost."""
    net = build.build_model(dataclasses.replace(build.PRESETS["mini"], ocf=False, mtp_ca=False))
    for tower in (net.video_tower, net.audio_tower):
        for mlp in (tower.text_proj, tower.time_embed):
            for layer in (mlp[0], mlp[2]):
                assert abs(layer.weight.std().item() - 0.02) < 0.002 and layer.bias.abs().max() == 0
    # the other linear layers keep Xavier's scale, sqrt(2 / (fan_in + fan_out))
    q = net.layers[0].video.self_attn.q.weight
    assert abs(q.std().item() - (2 / sum(q.shape)) ** 0.5) < 0.01


def test_padded_subjects_change_nothing():
    net = random_net()
    batch = tiny_batch(batch_size=1, scene="single")
    v1, a1 = forward(net, batch)
    padded = dict(batch)
    padded["ref_images"] = torch.cat([batch["ref_images"], torch.randn_like(batch["ref_images"])], 1)
    padded["ref_audio"] = torch.cat([batch["ref_audio"], torch.randn_like(batch["ref_audio"])], 1)
    padded["subject_mask"] = padded["ref_image_mask"] = torch.tensor([[True, False]])
    padded["subject_spans"] = torch.cat([batch["subject_spans"], torch.zeros(1, 1, 2, dtype=torch.long)], 1)
    v2, a2 = forward(net, padded)
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)


def test_references_reach_the_output():
    net = random_net()
    batch = tiny_batch(batch_size=1, scene="single")
    v1, a1 = forward(net, batch)
    other = dict(batch, ref_images=-batch["ref_images"], ref_audio=-batch["ref_audio"])
    v2, a2 = forward(net, other)
    assert not torch.allclose(v1, v2) and not torch.allclose(a1, a2)


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_flop_formula_matches_flop_counter(stem):
    cfg = dataclasses.replace(TINY, audio_stem=stem, audio_patch=1 if stem == "conv" else 2, audio_stem_hidden=48)
    net = build.build_model(cfg)
    perturbed(net, 0.05)
    batch = tiny_batch(batch_size=1, scene="dialogue")
    # the math backend spells attention as matmuls the counter sees (it has no formula for CPU flash)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        v, a = forward(net, batch)
        (v.square().mean() + a.square().mean()).backward()
    K = 2
    tokens = dict(video_tokens=batch["video"][0].numel() // cfg.video_patch_dim * cfg.video_channels // 3,
                  audio_tokens=batch["audio"].shape[1] // cfg.audio_patch, text_tokens=batch["text_ids"].shape[1],
                  ref_video_tokens=K * 16, ref_audio_tokens=K * batch["ref_audio"].shape[2] // cfg.audio_patch,
                  phoneme_tokens=batch["line_phonemes"][0].numel())
    estimate = build.estimate_flops(cfg, **tokens)
    assert abs(estimate / counter.get_total_flops() - 1) < 0.05


def test_sdpa_matches_the_math_reference_in_value_and_gradient():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    fast = attention.attention(q, k, v, attention.key_padding(key_mask))
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    reference = attention.attention_math(q, k, v, attention.key_padding(key_mask))
    grads_ref = torch.autograd.grad(reference.square().sum(), (q, k, v))
    assert torch.allclose(fast, reference, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_fast, grads_ref))
    assert grads_fast[1][1, :, 3:].abs().max() == 0          # masked keys get no gradient


def test_model_py_is_ovi_alone():
    """model.py imports no paper's file (and neither LoRA nor sequence parallel): the papers extend it from theirs."""
    import ast
    import os
    tree = ast.parse(open(os.path.join(os.path.dirname(model.__file__), "model.py")).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"ocf", "caption", "presence", "motion", "reward", "lora", "seqpar", "recipes", "build"}


@pytest.mark.parametrize("extra", [{}, dict(ref_mode="presence"), dict(motion=True)], ids=["concat", "presence", "motion"])
def test_a_prompt_alone_text_to_audio_video_runs_in_every_mode(extra):
    """Ovi's own use: a prompt and no subject at all (OCF and MTP-CA on, the full preset's default). Before:
    `cannot reshape tensor of 0 elements` in ocf.PromptEncoder.reference_tokens."""
    import caption
    import data
    net = random_net(dataclasses.replace(TINY, **extra))
    batch = tiny_batch(batch_size=1)
    prompt = data.collate([dict(caption.caption_fields("a grey room with dots."), ref_images=torch.zeros(0, 3, 8, 8),
                                ref_audio=torch.zeros(0, 16, 40))])
    cond = Conditioning.from_batch(prompt)
    assert cond.subjects == 0 and cond.line_mask.shape[1] == 0
    v, a = net(batch["video"], batch["audio"], torch.tensor([0.5]), cond)
    (v.square().mean() + a.square().mean()).backward()
    assert torch.isfinite(v).all() and torch.isfinite(a).all() and net.prompt.ocf.text_in.weight.grad is not None
