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
  condition DreamVideo-Omni's condition-aware RoPE: every reference image at the one time index T'
            right after the content (voices as plain); its trajectory tokens sit at the position of
            the video token their point lies on (`trajectory_positions`).
  presence  Identity-as-Presence (presence.py): the face of subject k at t = T' + k - 1, h and w from
            0; its voice at a fixed audio offset (`voice_offset`) past the content.
For the Omni-Context Fusion sequence [text | reference images | reference voices | phonemes]:
  1d        every token of the concatenation at (i, i, i), in order (the "+OCF" row of Table 2)
  sa_mrope  Semantic-Anchored Multimodal RoPE (Omni-Customizer Sec. 4.2, Eq. 3-4), see
            `sa_mrope_positions`: references anchored to their subject's descriptor, phonemes
            interpolated over their <S> ... <E> span.
"""
from __future__ import annotations

import math

import torch


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs per axis (t, h, w) for a head: h = w = head_dim // 6, t gets the rest."""
    pairs = head_dim // 2
    hw = head_dim // 6
    return pairs - 2 * hw, hw, hw


_FREQUENCIES: dict = {}  # (head_dim, theta, device) -> table: made once, never a module buffer (meta-safe)


def rope_frequencies(head_dim: int, theta: float = 10000.0, device="cpu") -> torch.Tensor:
    """(pairs,) angular frequency of each rotary pair; each section has its own ladder theta^(-i/n)."""
    key = (head_dim, theta, str(device))
    if key not in _FREQUENCIES:
        ladders = [theta ** (-torch.arange(n, dtype=torch.float64) / n) for n in rope_sections(head_dim)]
        _FREQUENCIES[key] = torch.cat(ladders).float().to(device)
    return _FREQUENCIES[key]


def rope_angles(positions: torch.Tensor, freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """positions (..., S, 3) (t, h, w) -> angles (..., S, pairs): each section uses its own axis."""
    n_t, n_h, _ = rope_sections(head_dim)
    axis = torch.zeros(freqs.numel(), dtype=torch.long, device=positions.device)
    axis[n_t:n_t + n_h], axis[n_t + n_h:] = 1, 2
    return positions.float()[..., axis] * freqs.to(positions.device)


def cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (..., S, 3) -> the (cos, sin) tables (..., S, pairs) `apply_rope` takes."""
    angles = rope_angles(positions, rope_frequencies(head_dim, theta, positions.device), head_dim)
    return angles.cos(), angles.sin()


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
                        content_audio: int, ref_audio: int, audio_scale: float, margin: float = 150.0,
                        voice_offset: float = 630.0):
    """Positions of the reference tokens: image refs (K*h*w, 3) and voice refs (K*T_r, 3).

    layout "plain": after the content; "syn": Syn-RoPE (DreamID-Omni); "condition": DreamVideo-Omni's shared
    reference time (see the module docstring); "presence": Identity-as-Presence's structured positions.
    Its release (single subject) puts the face frame at t = number of content latent frames, h and w from
    0, and the voice at a fixed audio offset
    (630 audio tokens in Ovi's units, about four clips past the start). Several subjects are ours: subject
    k's face one frame later (t = T' + k - 1), its voice right after subject k-1's (offset + (k-1) T_r).
    """
    images, voices = [], []
    for k in range(1, n_refs + 1):
        if layout == "plain":
            images.append(video_positions(1, ref_h, ref_w, t0=content_frames + k - 1))
            voices.append(audio_positions(ref_audio, audio_scale, start=content_audio + (k - 1) * ref_audio))
        elif layout == "presence":
            images.append(video_positions(1, ref_h, ref_w, t0=content_frames + k - 1))
            voices.append(audio_positions(ref_audio, audio_scale, start=voice_offset + (k - 1) * ref_audio))
        elif layout == "condition":  # DreamVideo-Omni: every reference image shares one time index, T'
            images.append(video_positions(1, ref_h, ref_w, t0=content_frames))
            voices.append(audio_positions(ref_audio, audio_scale, start=content_audio + (k - 1) * ref_audio))
        elif layout == "syn":
            images.append(video_positions(1, ref_h, ref_w, t0=margin * k))
            voices.append(audio_positions(ref_audio, audio_scale, start=math.floor(margin / audio_scale) * k))
        else:
            raise ValueError(f"unknown reference layout {layout!r}: use plain, syn, condition or presence")
    empty = torch.zeros(0, 3)
    return (torch.cat(images) if images else empty), (torch.cat(voices) if voices else empty)


def trajectory_positions(points: torch.Tensor, patch: tuple[int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """DreamVideo-Omni's condition-aware 3D RoPE for trajectory tokens: a point inherits the position of the
    video token it lies on. points (B, K, T, P, 2) as (x, y) fractions of the frame, one per video frame;
    patch (pt, ph, pw); size (H, W) in pixels. Returns (B, K*T'*P, 3): one token per subject, latent frame
    (the first frame of each temporal patch) and point, at (t', y H / ph - 0.5, x W / pw - 0.5) -- the
    continuous grid coordinate, so a point between two tokens sits between their positions."""
    pt, ph, pw = patch
    H, W = size
    p = points[:, :, ::pt]                                                   # (B, K, T', P, 2)
    B, K, Tl, P, _ = p.shape
    t = torch.arange(Tl, dtype=torch.float, device=points.device)[None, None, :, None].expand(B, K, Tl, P)
    h, w = p[..., 1] * H / ph - 0.5, p[..., 0] * W / pw - 0.5
    return torch.stack([t, h, w], dim=-1).reshape(B, K * Tl * P, 3)


def sequential_positions(lengths_total: int, batch: int, device=None) -> torch.Tensor:
    """(B, S, 3): token i of a concatenated sequence at (i, i, i) (OCF with plain 1D RoPE)."""
    return torch.arange(lengths_total, dtype=torch.float, device=device)[None, :, None].expand(batch, -1, 3)


def sa_mrope_positions(text_len: int, subject_spans: torch.Tensor, ref_hw: tuple[int, int], ref_voice_len: int,
                       speech_spans: torch.Tensor, phoneme_mask: torch.Tensor,
                       phoneme_w: float = -1.0) -> torch.Tensor:
    """SA-MRoPE (Omni-Customizer Eq. 3-4): 3D positions of the OCF sequence, batched, no Python loop per sample.

    Sequence order: [text (L) | image refs (K*h*w) | voice refs (K*T_r) | phonemes (M*P)].
    The paper fixes the idea, not every coordinate (its equations are not in our copy); our choices,
    following Qwen2-VL's M-RoPE, where an inserted block takes grid ids offset by the running position
    and what follows resumes at max id + 1:
      text token i               (p, p, p), p = i + block * (number of descriptors that end at or before i)
      image ref of subject k     (b_k, b_k + y, b_k + x): inserted right after subject k's descriptor,
                                 b_k = (position of the descriptor's last token) + 1   [Eq. 3]
      voice ref of subject k     (a, a, a), a = b_k + max(h, w) + tau: a 1D run after the image block  [Eq. 3]
      phoneme j of line m        (q, q, phoneme_w), q interpolated strictly inside the <S> ... <E> span:
                                 q = pos(<S>) + (pos(<E>) - pos(<S>)) (j + 1) / (n_m + 1)   [Eq. 4]
    with block = max(h, w) + T_r. `phoneme_w` is the distinct last coordinate of Eq. 4 (our choice: -1,
    a value no prompt token has). Padded subjects / phonemes get positions too; they are masked anyway.

    Args: subject_spans (B, K, 2) descriptor [start, end) with end <= 0 for padding; speech_spans (B, M, 2);
        phoneme_mask (B, M, P). Returns (B, L + K*h*w + K*T_r + M*P, 3) float positions, on the spans'
        device (computed there: no copy to the host and back in every forward).
    """
    B, K, _ = subject_spans.shape
    dev = subject_spans.device
    h, w = ref_hw
    block = max(h, w) + ref_voice_len
    ends = subject_spans[..., 1].float()
    ends = torch.where(ends > 0, ends, torch.full_like(ends, float("inf")))         # padding never shifts text
    token = torch.arange(text_len, dtype=torch.float, device=dev)
    text_pos = token + block * (ends[:, None, :] <= token[None, :, None]).sum(-1)    # (B, L)
    earlier = (ends[:, None, :] < ends[:, :, None]).sum(-1)                           # (B, K) descriptors before k
    base = torch.where(ends.isfinite(), ends + block * earlier, torch.zeros_like(ends))  # b_k (B, K)
    grid_y, grid_x = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    image = torch.stack([base[..., None].expand(B, K, h * w), base[..., None] + grid_y.flatten(),
                         base[..., None] + grid_x.flatten()], dim=-1).reshape(B, K * h * w, 3)
    voice_t = base[..., None] + max(h, w) + torch.arange(ref_voice_len, device=dev)              # (B, K, T_r)
    voice = voice_t.reshape(B, -1, 1).expand(-1, -1, 3)
    # phonemes: interpolate over the positions of their line's <S> and <E> tokens
    s_tok = speech_spans[..., 0].clamp(0, text_len - 1)
    e_tok = (speech_spans[..., 1] - 1).clamp(0, text_len - 1)
    s_pos, e_pos = text_pos.gather(1, s_tok), text_pos.gather(1, e_tok)              # (B, M)
    n = phoneme_mask.sum(-1, keepdim=True).clamp_min(1).float()                       # (B, M, 1)
    j = torch.arange(phoneme_mask.shape[-1], dtype=torch.float, device=dev)
    q = s_pos[..., None] + (e_pos - s_pos)[..., None] * (j + 1) / (n + 1)            # (B, M, P)
    phon = torch.stack([q, q, torch.full_like(q, phoneme_w)], dim=-1).reshape(B, -1, 3)
    text = text_pos[..., None].expand(-1, -1, 3)
    return torch.cat([text, image, voice, phon], dim=1)
