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


def perturbed(net, scale=0.1, replace=False, skip=(), only=()):
    """Every weight (but names containing a `skip` string; with `only`, just names containing one) nudged by
    noise -- or replaced by it -- seeded by its name alone, so models that share a parameter name get the same
    noise there. Zero-initialised gates, heads and residual paths would otherwise hide most of the model's paths.
    Works on FSDP2 shards too: each rank takes its rows of the full noise."""
    import zlib

    import torch

    import sharded
    with torch.no_grad():
        for name, p in net.named_parameters():
            if any(s in name for s in skip) or (only and not any(s in name for s in only)):
                continue
            noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))) * scale
            start, end = sharded.shard_rows(p)
            local, rows = sharded.local_shard(p)[: end - start], noise[start:end].to(p.dtype)
            local.copy_(rows) if replace else local.add_(rows)
    return net
