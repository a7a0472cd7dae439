"""The prompt side: text encoder, phoneme (TTS) encoder, Omni-Context Fusion and MTP-CA.

Omni-Customizer Sec. 4.2 enriches the prompt *before* the DiT sees it:

  T  = text embeddings of the structured caption (toy: text.CharTextEncoder; full: precomputed umT5)
  P  = PhonemeEncoder(phoneme ids of every <S> ... <E> line)           F5-TTS style, ConvNeXt-V2 blocks
  OCF:    h_0 = [T, R_v, R_a, P]  (text, reference-image tokens, reference-voice tokens, phonemes)
          h_i = Block_i(h_{i-1})  with SA-MRoPE positions (rope.sa_mrope_positions) or plain 1D ones
          T  <- T + sum_i Z_i(h_i[:, :L])   Z_i zero-initialised: at init T passes through unchanged
  MTP-CA: T  <- T + M * CrossAttn(q = T, kv = P), M = 1 inside a line's <S> ... <E> span (attending
          only to that line's phonemes), 0 everywhere else: exactly zero outside, in value and gradient.

`PromptEncoder` assembles all of it from a `Conditioning` (conditioning.py): the OCF sequence's reference
tokens (OCF's own view of the references: one token per image patch and per voice frame) and their
positions. Both towers then read the enriched T through their own projections (model.py). Text positions
follow M-RoPE's convention (Qwen2-VL, used by SA-MRoPE): text token i sits at (i, i, i).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import rope
from attention import attention
from model import declare
from precision import LayerNorm32
from text import Prompt, TextBlock


@dataclass
class OCFConfig:
    # identity binding on the prompt side (Omni-Customizer Sec. 4.2; defaults as in the paper)
    ocf: bool = True               # Omni-Context Fusion of [text, ref images, ref voices, phonemes]
    ocf_rope: str = "sa_mrope"     # sa_mrope | 1d: positions of the OCF sequence
    mtp_ca: bool = True            # masked TTS-to-prompt cross-attention
    ocf_dim: int = 0               # width of OCF / MTP-CA / phoneme encoder (0 = text_dim)
    ocf_layers: int = 2            # transformer blocks of OCF
    ocf_heads: int = 4             # heads of OCF and MTP-CA
    phoneme_layers: int = 2        # ConvNeXt-V2 blocks of the phoneme encoder (F5-TTS: 4)
    phoneme_vocab: int = 19        # phoneme ids incl. padding and word gap, speech.N_PHONEME_IDS (tests/test_caption.py checks)
    sa_mrope_phoneme_w: float = -1.0  # the distinct last coordinate of phoneme tokens (Eq. 4)

    @property
    def fusion_dim(self) -> int:
        return self.ocf_dim or self.text_dim


# ------------------------------------------------------------------------------------------------
# Phoneme (TTS) encoder: F5-TTS's text embedding
# ------------------------------------------------------------------------------------------------


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2): rescale channels by their share of the global L2."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.zeros(1, 1, dim)), nn.Parameter(torch.zeros(1, 1, dim))
        self.zero_init = ("gamma", "beta")                        # starts as the identity

    def forward(self, x):                                        # (N, P, d)
        norm = x.norm(p=2, dim=1, keepdim=True)                  # over the sequence, per channel
        return self.gamma * (x * (norm / (norm.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv k=7 -> LayerNorm -> Linear(d, 2d) -> GELU -> GRN -> Linear(2d, d), residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm32(dim, eps=1e-6)
        self.up, self.grn, self.down = nn.Linear(dim, 2 * dim), GRN(2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):                                        # (N, P, d)
        y = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.down(self.grn(F.gelu(self.up(self.norm(y)))))


def sinusoidal(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal position table."""
    pos = torch.arange(n, dtype=torch.float)[:, None]
    freqs = torch.exp(-math.log(10000) * torch.arange(0, dim, 2, dtype=torch.float) / dim)
    return torch.cat([torch.sin(pos * freqs), torch.cos(pos * freqs)], dim=-1)


class PhonemeEncoder(nn.Module):
    """Phoneme ids of each line (B, M, P) -> embeddings (B, M, P, dim); padding rows exactly zero.

    F5-TTS: ids (+1, 0 = filler), an embedding, sinusoidal positions, a few ConvNeXt-V2 blocks, with
    the padding re-masked to zero after each block (so convolutions never smear it into real ids).
    """

    def __init__(self, vocab: int, dim: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(ConvNeXtV2Block(dim) for _ in range(layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, M, P = ids.shape
        keep = mask.reshape(B * M, P, 1).float()
        x = (self.embed(ids.reshape(B * M, P)) + sinusoidal(P, self.embed.embedding_dim).to(ids.device)) * keep
        for block in self.blocks:
            x = block(x) * keep                                   # re-mask the padding after every block
        return x.reshape(B, M, P, x.shape[-1])                    # explicit width: M or P may be 0


# ------------------------------------------------------------------------------------------------
# Omni-Context Fusion (Omni-Customizer Sec. 4.2)
# ------------------------------------------------------------------------------------------------


class OmniContextFusion(nn.Module):
    """[T, R_v, R_a, P] through a few transformer blocks; each block's first L outputs return to T
    through a zero-initialised projection (the residual of Sec. 4.2), so OCF starts as the identity."""

    def __init__(self, text_dim: int, dim: int, layers: int, heads: int, image_token_dim: int, voice_token_dim: int):
        super().__init__()
        self.text_in = nn.Linear(text_dim, dim)
        self.image_in = nn.Linear(image_token_dim, dim)
        self.voice_in = nn.Linear(voice_token_dim, dim)
        self.kind = nn.Parameter(torch.zeros(4, dim))             # which stream a token came from
        self.zero_init = ("kind",)
        self.blocks = nn.ModuleList(TextBlock(dim, heads) for _ in range(layers))
        # zero-init: T passes unchanged at start
        self.back = declare(nn.ModuleList(nn.Linear(dim, text_dim) for _ in range(layers)), zero=True)
        self.head_dim = dim // heads

    def forward(self, text, text_mask, image_tokens, image_mask, voice_tokens, voice_mask, phonemes,
                phoneme_mask, positions):
        """text (B, L, text_dim); image_tokens (B, K*h*w, c_img); voice_tokens (B, K*T_r, c_voice);
        phonemes (B, M*P, dim); masks True = real; positions (B, S, 3) for the concatenation."""
        L = text.shape[1]
        seq = torch.cat([self.text_in(text) + self.kind[0], self.image_in(image_tokens) + self.kind[1],
                         self.voice_in(voice_tokens) + self.kind[2], phonemes + self.kind[3]], dim=1)  # (B, S, dim)
        mask = torch.cat([text_mask, image_mask, voice_mask, phoneme_mask], dim=1)
        cos, sin = rope.cos_sin(positions, self.head_dim)                                 # (B, S, pairs)
        for block, back in zip(self.blocks, self.back):
            seq = block(seq, cos, sin, mask)
            text = text + back(seq[:, :L]) * text_mask[..., None]   # the first L tokens return to T
        return text


# ------------------------------------------------------------------------------------------------
# MTP-CA: masked TTS-to-prompt cross-attention (Omni-Customizer Sec. 4.2)
# ------------------------------------------------------------------------------------------------


def speech_token_mask(text_len: int, speech_spans: torch.Tensor, line_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, M) True where prompt token i lies inside line m's <S> ... <E> span (tags included)."""
    i = torch.arange(text_len, device=speech_spans.device)[None, :, None]
    inside = (i >= speech_spans[:, None, :, 0]) & (i < speech_spans[:, None, :, 1])
    return inside & line_mask[:, None, :]


class MaskedPhonemeCrossAttention(nn.Module):
    """Prompt tokens attend to phoneme embeddings under a hard binary mask: a token inside line m's
    <S> ... <E> span sees only line m's phonemes; every other token gets exactly zero (and no gradient)."""

    def __init__(self, text_dim: int, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = LayerNorm32(text_dim)
        self.q, self.k, self.v = nn.Linear(text_dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = declare(nn.Linear(dim, text_dim), zero=True)     # zero-init, like OCF's residuals

    def forward(self, text, phonemes, phoneme_mask, speech_spans, line_mask):
        """text (B, L, text_dim); phonemes (B, M, P, dim); phoneme_mask (B, M, P). Returns the new text."""
        B, L, _ = text.shape
        M, P = phonemes.shape[1:3]
        in_line = speech_token_mask(L, speech_spans, line_mask)                         # (B, L, M)
        allowed = (in_line[..., None] & phoneme_mask[:, None]).reshape(B, L, M * P)     # (B, L, M*P)
        gate = allowed.any(-1, keepdim=True)                                             # (B, L, 1): in some span
        safe = allowed | ~gate                # rows with no key would be NaN: give them all keys, then zero them
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731 (B, H, S, hd)
        kv = phonemes.reshape(B, M * P, -1)
        out = attention(split(self.q(self.norm(text))), split(self.k(kv)), split(self.v(kv)), safe[:, None])
        out = self.o(out.transpose(1, 2).flatten(2))
        return text + out * gate                                   # the hard gate: exact zeros outside spans


# ------------------------------------------------------------------------------------------------
# The whole prompt side, from a Conditioning to the features both towers read
# ------------------------------------------------------------------------------------------------


class PromptEncoder(Prompt):
    """Sec. 4.2 end to end: text encoder (toy) -> phoneme encoder -> OCF -> MTP-CA, each behind its switch.
    It replaces the twin tower's plain `prompt` (build.py); cfg is build.ModelConfig."""

    def __init__(self, cfg):
        super().__init__(cfg)   # the toy's own text encoder; real runs bring precomputed umT5 features
        if cfg.ocf or cfg.mtp_ca:
            self.phoneme_encoder = PhonemeEncoder(cfg.phoneme_vocab, cfg.fusion_dim, cfg.phoneme_layers)
        if cfg.ocf:
            image_token = cfg.patch_h * cfg.patch_w * cfg.video_channels   # one reference-image patch
            self.ocf = OmniContextFusion(cfg.text_dim, cfg.fusion_dim, cfg.ocf_layers, cfg.ocf_heads, image_token,
                                         cfg.audio_token_dim)
        if cfg.mtp_ca:
            self.mtp_ca = MaskedPhonemeCrossAttention(cfg.text_dim, cfg.fusion_dim, cfg.ocf_heads)

    def forward(self, cond) -> torch.Tensor:
        """cond: a Conditioning -> (B, L, text_dim) prompt features (padding rows of the toy encoder are 0)."""
        cfg = self.cfg
        text = super().forward(cond)
        if not (cfg.ocf or cfg.mtp_ca):
            return text
        phonemes = self.phoneme_encoder(cond.line_phonemes, cond.phoneme_mask)         # (B, M, P, fusion_dim)
        if cfg.ocf:
            text = self.fuse(text, phonemes, cond)
        if cfg.mtp_ca and phonemes.shape[1] * phonemes.shape[2] > 0:
            text = self.mtp_ca(text, phonemes, cond.phoneme_mask, cond.speech_spans, cond.line_mask)
        return text

    def reference_tokens(self, cond):
        """OCF's own view of the references: (image patch tokens (B, K*h'*w', ph*pw*C), (h', w'),
        voice frame tokens (B, K*T_r', p*C_a), T_r')."""
        cfg = self.cfg
        B, K = cond.ref_images.shape[:2]
        img = cond.ref_images.unflatten(-2, (-1, cfg.patch_h)).unflatten(-1, (-1, cfg.patch_w))  # (B,K,C,h',ph,w',pw)
        ref_hw = (img.shape[3], img.shape[5])
        img = img.permute(0, 1, 3, 5, 4, 6, 2).flatten(4).flatten(1, 3)   # (B, K*h'*w', ph*pw*C); K may be 0
        T_r = cond.ref_audio.shape[2] // cfg.audio_patch
        voice = cond.ref_audio.reshape(B, K, T_r, cfg.audio_token_dim)                   # (B, K, T_r', p*C_a); K may be 0
        return img, ref_hw, voice.flatten(1, 2), voice.shape[2]

    def fuse(self, text, phonemes, cond):
        """Omni-Context Fusion of [text | reference images | reference voices | phonemes] (Sec. 4.2)."""
        cfg = self.cfg
        B, M, P, _ = phonemes.shape
        images, ref_hw, voices, T_r = self.reference_tokens(cond)
        if cfg.ocf_rope == "sa_mrope":  # Eq. 3-4: references anchored to their descriptor, phonemes to their line
            pos = rope.sa_mrope_positions(text.shape[1], cond.subject_spans, ref_hw, T_r, cond.speech_spans,
                                          cond.phoneme_mask, cfg.sa_mrope_phoneme_w)
        else:                           # Table 2's "+OCF" row: one running 1D index over the concatenation
            pos = rope.sequential_positions(text.shape[1] + images.shape[1] + voices.shape[1] + M * P, B,
                                            device=text.device)
        image_mask = cond.image_mask.repeat_interleave(ref_hw[0] * ref_hw[1], 1)         # (B, K*h'*w')
        voice_mask = cond.voice_mask.repeat_interleave(T_r, 1)                           # (B, K*T_r')
        return self.ocf(text, cond.text_mask, images, image_mask, voices, voice_mask, phonemes.flatten(1, 2),
                        cond.phoneme_mask.flatten(1, 2), pos)
