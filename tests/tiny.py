"""A tiny model and world shared by the tests (seconds on a CPU)."""
import dataclasses

import build
import data

TINY = dataclasses.replace(build.PRESETS["toy"], dim=32, layers=2, heads=2, ffn=64, text_dim=32, text_layers=1,
                           text_heads=2)
TINY_WORLD_OVERRIDES = dict(clip_seconds=1.0, ref_audio_seconds=0.5)  # a voice stretch shorter than the clip
TINY_WORLD = data.WorldConfig(**TINY_WORLD_OVERRIDES)
TINY_OVERRIDES = dict(dim=32, layers=2, heads=2, ffn=64, text_dim=32, text_layers=1, text_heads=2)


def tiny_batch(batch_size=2, seed=0, **world):
    return data.ToyBatches(dataclasses.replace(TINY_WORLD, **world), batch_size, seed=seed).make_batch(0)


def perturbed(net, scale=0.1):
    """Every weight nudged by seeded noise: zero-initialised gates and heads would otherwise hide most paths."""
    import torch
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name) + p.numel())) * scale)
    return net
