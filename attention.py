"""Scaled dot-product attention: the one attention function of the whole project.

Every attention here (both towers' self-, text- and cross-tower attention in model.py; the toy text
encoder, Omni-Context Fusion and MTP-CA in ocf.py) goes through `attention`, so one switch chooses
the implementation everywhere:

  BACKEND = "sdpa"   torch's fused F.scaled_dot_product_attention (flash / memory-efficient kernels
                     on GPU, a fused CPU kernel): the default
  BACKEND = "math"   softmax(q k^T / sqrt(d) + mask) v spelled out: the reference the tests compare
                     against, and what bench.py times beside the fast path

Masks are boolean, True = may attend, broadcastable to (B, H, S_q, S_k); `key_padding` turns a
per-key mask (B, S_k) into that form. Both backends treat a fully masked row the same way (NaN), so
callers never hand them one (MTP-CA gives such rows every key, then zeroes them).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

BACKEND = "sdpa"  # sdpa | math
WATCHERS: list = []  # functions called with (q, k, v, mask) before every attention (`watching`)


def key_padding(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S_k) True = real key -> (B, 1, 1, S_k), broadcast over heads and queries."""
    return None if key_mask is None else key_mask[:, None, None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, S_q, d), k/v (B, H, S_k, d), mask broadcastable to (B, H, S_q, S_k) -> (B, H, S_q, d)."""
    for watch in WATCHERS:
        watch(q, k, v, mask)
    if BACKEND == "math":
        return attention_math(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_math(q, k, v, mask=None):
    """The reference: softmax(q k^T / sqrt(d) + mask) v, spelled out."""
    return attention_weights(q, k, mask) @ v


def attention_weights(q, k, mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask): (B, H, S_q, S_k), each query's weights over the keys (probes.py reads them)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])                  # (B, H, S_q, S_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))                      # masked keys get weight 0
    return scores.softmax(dim=-1)


@contextlib.contextmanager
def watching(fn):
    """Call fn(q, k, v, mask) before every attention of the project while inside the block (gpucheck.py lists
    the kernel SDPA picks for each call this way)."""
    WATCHERS.append(fn)
    try:
        yield
    finally:
        WATCHERS.remove(fn)
