"""The toy's prompt encoder: a small character transformer standing in for umT5-XXL.

Ovi reads a prompt as umT5-XXL's 4096-d features, computed once outside the model (the `full` preset takes
them precomputed: `--text_layers 0`). The toy world's captions are short strings over a 40-symbol
alphabet (caption.py), so the toy learns its own encoder: token embeddings, a few pre-norm transformer
blocks with rotary positions, a final LayerNorm. `TextBlock` is also the block of Omni-Context Fusion
(ocf.py), which runs it over [text | references | phonemes] with SA-MRoPE positions, and of the reward
model's video trunk (reward.py), without positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import rope
from attention import attention, key_padding
from precision import LayerNorm32


class TextBlock(nn.Module):
    """Pre-norm transformer block: self-attention (with 3D RoPE when given positions' cos / sin), then a GELU
    MLP. The toy text encoder's, Omni-Context Fusion's (ocf.py) and the reward model's trunk (reward.py)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = LayerNorm32(dim), LayerNorm32(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x, cos=None, sin=None, key_mask=None):
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)        # (B, H, L, hd)
        att = attention(q, k, v, key_padding(key_mask))                              # (B, H, L, hd)
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class CharTextEncoder(nn.Module):
    """Caption token ids (B, L) -> text features (B, L, dim); padding rows are returned as zeros."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(TextBlock(dim, heads) for _ in range(layers))
        self.norm = LayerNorm32(dim)
        self.head_dim = dim // heads

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # text positions follow M-RoPE's convention (Qwen2-VL, which SA-MRoPE extends): token i sits at (i, i, i)
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :, None].expand(-1, -1, 3)  # (1, L, 3)
        cos, sin = rope.cos_sin(pos, self.head_dim)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x) * mask[..., None]


class Prompt(nn.Module):
    """What both towers' prompt projections read: the toy encoder's features of the caption ids, or the
    precomputed umT5 features as given (`text_layers` 0). ocf.py's PromptEncoder extends it with Omni-
    Customizer's phoneme encoder, Omni-Context Fusion and MTP-CA."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        if cfg.text_layers > 0:
            self.text_encoder = CharTextEncoder(cfg.text_vocab, cfg.text_dim, cfg.text_layers, cfg.text_heads)

    def forward(self, cond) -> torch.Tensor:
        """cond: a Conditioning -> (B, L, text_dim) prompt features."""
        return self.text_encoder(cond.text, cond.text_mask) if self.cfg.text_layers > 0 else cond.text
