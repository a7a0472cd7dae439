"""Rotary position embeddings and the position layouts of the papers.

One real-valued rotary apply (`apply_rope`) serves every attention that takes positions. Positions
are (t, h, w) triples for every token of every stream; the head dimension's rotary pairs are split
into contiguous temporal / height / width sections, each with its own frequency ladder (Wan / Ovi:
a 128-d head has 64 pairs split 22 / 21 / 21). Audio tokens only move along t: their h = w = 0, so
the h/w pairs are not rotated, which is exactly Ovi's "audio RoPE rotates only the temporal pairs".

Time alignment (Ovi): audio positions are multiplied by `audio_scale` = (video latent frames per
second) / (audio tokens per second), so a video frame and the audio token at the same wall-clock time
get the same temporal phase, in the self-attentions and in the cross-tower attention alike.

Reference layouts (where the clean reference tokens of `<sub1>`, `<sub2>`... sit):
  plain     references right after the content: image k at t = T + k - 1, voice k continues the
            audio axis after the content, one clip after another.
  syn       Syn-RoPE (DreamID-Omni): image of identity k (1-based) at t = margin * k on the
            temporal axis with the normal h/w grid; its voice tokens at floor(margin / s) * k + i
            (s = audio_scale), so face and voice of one identity share a temporal phase, `margin`
            frames away from the content (t = 0..T-1) and from every other identity.
SA-MRoPE (Omni-Customizer Eq. 3-4) places tokens of the OCF sequence; it lives in ocf.py's issue.
"""
from __future__ import annotations

import math

import torch


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs per axis (t, h, w) for a head: h = w = head_dim // 6, t gets the rest."""
    pairs = head_dim // 2
    hw = head_dim // 6
    return pairs - 2 * hw, hw, hw


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(pairs,) angular frequency of each rotary pair; each section has its own ladder theta^(-i/n)."""
    ladders = [theta ** (-torch.arange(n, dtype=torch.float64) / n) for n in rope_sections(head_dim)]
    return torch.cat(ladders).float()


def rope_angles(positions: torch.Tensor, freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """positions (..., S, 3) (t, h, w) -> angles (..., S, pairs): each section uses its own axis."""
    n_t, n_h, _ = rope_sections(head_dim)
    axis = torch.zeros(freqs.numel(), dtype=torch.long, device=positions.device)
    axis[n_t:n_t + n_h], axis[n_t + n_h:] = 1, 2
    return positions.float()[..., axis] * freqs.to(positions.device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x (B, H, S, D) by angles given as cos/sin (B or 1, S, D/2).

    (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos): a real-valued form of multiplying by e^{i angle},
    computed in fp32 (low-precision angles at positions ~1000 lose the phase).
    """
    dtype = x.dtype
    x = x.float().unflatten(-1, (-1, 2))                     # (B, H, S, D/2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos[:, None], sin[:, None]                    # broadcast over heads
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(dtype)


def video_positions(frames: int, height: int, width: int, t0: float = 0.0) -> torch.Tensor:
    """(frames*height*width, 3) grid ids (t, h, w) in token order t-major, then h, then w."""
    t, h, w = torch.meshgrid(torch.arange(frames, dtype=torch.float) + t0, torch.arange(height, dtype=torch.float),
                             torch.arange(width, dtype=torch.float), indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


def audio_positions(tokens: int, audio_scale: float, start: float = 0.0) -> torch.Tensor:
    """(tokens, 3): temporal ids (start + i) * audio_scale, in video-frame units; h = w = 0."""
    pos = torch.zeros(tokens, 3)
    pos[:, 0] = (torch.arange(tokens) + start) * audio_scale
    return pos


def reference_positions(layout: str, n_refs: int, content_frames: int, ref_h: int, ref_w: int,
                        content_audio: int, ref_audio: int, audio_scale: float, margin: float = 150.0):
    """Positions of the reference tokens: image refs (K*h*w, 3) and voice refs (K*T_r, 3).

    layout "plain": after the content; "syn": Syn-RoPE (DreamID-Omni), see the module docstring.
    """
    images, voices = [], []
    for k in range(1, n_refs + 1):
        if layout == "plain":
            images.append(video_positions(1, ref_h, ref_w, t0=content_frames + k - 1))
            voices.append(audio_positions(ref_audio, audio_scale, start=content_audio + (k - 1) * ref_audio))
        elif layout == "syn":
            images.append(video_positions(1, ref_h, ref_w, t0=margin * k))
            voices.append(audio_positions(ref_audio, audio_scale, start=math.floor(margin / audio_scale) * k))
        else:
            raise ValueError(f"unknown reference layout {layout!r}: use plain or syn")
    empty = torch.zeros(0, 3)
    return (torch.cat(images) if images else empty), (torch.cat(voices) if voices else empty)
