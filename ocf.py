"""The prompt side: the toy's text encoder (and, with its own issue, Omni-Context Fusion and MTP-CA).

Ovi encodes the whole prompt once with a frozen umT5-XXL (4096-d) and both towers read that
encoding through their own projection MLP. Nothing can be downloaded here, so the toy trains a small
character-level transformer instead (`CharTextEncoder`); the `full` preset takes precomputed 4096-d
embeddings from the shards and skips it. Text positions follow M-RoPE's convention for text
(Qwen2-VL, used by SA-MRoPE): token i sits at (i, i, i), so a 1D sequence rotates every section.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import rope


class TextBlock(nn.Module):
    """Pre-norm transformer block (self-attention with RoPE, GELU MLP) over the caption tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x, cos, sin, key_mask):
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)            # (B, H, L, hd)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class CharTextEncoder(nn.Module):
    """Caption token ids (B, L) -> text features (B, L, dim); padding rows are returned as zeros."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(TextBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("freqs", rope.rope_frequencies(dim // heads), persistent=False)
        self.head_dim = dim // heads

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)[:, None].expand(-1, 3)  # (L, 3): token i -> (i, i, i)
        angles = rope.rope_angles(pos, self.freqs, self.head_dim)[None]            # (1, L, pairs)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x) * mask[..., None]
