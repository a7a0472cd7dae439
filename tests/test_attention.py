"""Attention's key masks (model.TwinTower.needed_masks): where every key is real, no mask is passed, so SDPA
may take its flash kernel on a GPU; where one is masked, it is; the outputs agree either way."""
import dataclasses

import torch

import build
import model
from conditioning import Conditioning
from tiny import TINY, perturbed, tiny_batch


def masks_seen(net, cond, batch, monkeypatch):
    """Run one forward, recording the mask of every attention call in model.py (the twin tower's)."""
    seen, real = [], model.attention
    monkeypatch.setattr(model, "attention", lambda q, k, v, mask=None: seen.append(mask) or real(q, k, v, mask))
    out = net(batch["video"], batch["audio"], torch.tensor([0.4]), cond.to("cpu"))
    return seen, out


def test_no_mask_where_every_key_is_real_and_a_mask_where_one_is_not(monkeypatch):
    net = perturbed(build.build_model(TINY)).eval()
    batch = tiny_batch(1, scene="single")
    cond = Conditioning.from_batch(batch)
    assert {"text_mask", "image_mask", "voice_mask"} <= cond.to("cpu").full      # one caption, no padding
    dense, out_dense = masks_seen(net, cond, batch, monkeypatch)
    assert dense and all(m is None for m in dense)
    dropped = cond.drop_references(torch.tensor([True]), images=False)            # the voice is masked out
    assert "voice_mask" not in dropped.to("cpu").full
    masked, _ = masks_seen(net, dropped, batch, monkeypatch)
    assert any(m is not None for m in masked)
    # the same all-True masks passed explicitly give the same outputs: skipping them changes nothing
    explicit = dataclasses.replace(cond.to("cpu"), full=frozenset())
    _, out_explicit = masks_seen(net, explicit, batch, monkeypatch)
    for a, b in zip(out_dense, out_explicit):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_batch_is_full_only_where_every_part_is():
    batch = tiny_batch(2, scene="single")
    cond = Conditioning.from_batch(batch).to("cpu")
    halves = Conditioning.cat([cond[:1], cond[1:].drop_prompt(torch.tensor([True])).to("cpu")])
    assert "text_mask" not in halves.full and "image_mask" in halves.full
