"""The twin-tower DiT (Ovi's backbone) that every paper here starts from, at toy, small and full size.

Two towers with identical blocks, one denoising video tokens, one denoising audio tokens, read the
same prompt and each other (REFERENCE.md "Ovi"; DreamID-Omni and Omni-Customizer Sec. 4.1, Eq. 1):

  per layer, in both towers:
    x = x + gate1 * SelfAttn(adaLN(x))                       q/k RMSNorm, 3D RoPE (video) / 1D (audio)
    x = x + CrossAttn(LN(x); text) + CrossAttn(rope(q); rope(other tower))   not modulated
    x = x + gate2 * FFN(adaLN(x))                            GELU-tanh, not gated
  the cross sublayer shares q and the output projection; each direction has its own k/v and k-norm;
  both towers read the other tower's state from *after* self-attention (symmetric exchange).

Modulation (Wan / Ovi): one timestep MLP per tower gives 6*dim (shift, scale, gate for self-attention
and FFN), each block adds a learned (1, 6, dim) bias; computed and applied in fp32. It is per token:
the noisy content tokens get the flow time t, the clean reference tokens get t = 0.

References (DreamID-Omni / Omni-Customizer Eq. 1): reference image k is one clean latent frame and
reference voice k a clean audio clip, embedded by the towers' own stems and appended to the noisy
sequences; their positions come from rope.py (`ref_rope` plain | syn); padded subjects are masked
from every attention; predictions for them are dropped, so they never enter the loss.

DreamID-Omni's task inputs (RV2AV source video, RA2V driving audio) are added to the content tokens
through zero-initialised projections, so the architecture does not change between tasks.

`python model.py` prints every preset's parameter count and training FLOPs per sample.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import data
import ocf
import rope


@dataclass
class ModelConfig:
    dim: int = 192
    layers: int = 3
    heads: int = 4
    ffn: int = 768
    freq_dim: int = 256            # sinusoidal timestep features
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # video stream: (toy) RGB pixels; (full) Wan2.2 VAE latents
    video_channels: int = 3
    patch_t: int = 4               # a toy video token covers 4 frames x 4 x 4 pixels, like a VAE latent
    patch_h: int = 4
    patch_w: int = 4
    # audio stream: (toy) log-mel frames patched along time; (full) MMAudio VAE latents + conv stem
    audio_channels: int = 40
    audio_patch: int = 2
    audio_stem: str = "linear"     # linear | conv (Ovi: Conv1d k7 + SiLU + convolutional SwiGLU k7)
    audio_stem_hidden: int = 0     # hidden width of the convolutional SwiGLU (Ovi: 8192)
    audio_scale: float = 1 / 16    # video latent frames per audio token: toy 2 fps / 32 tokens/s
    # prompt: (toy) a small character transformer; (full) precomputed umT5 embeddings (4096-d)
    text_dim: int = 128
    text_layers: int = 2           # 0 = text arrives as precomputed embeddings
    text_heads: int = 4
    text_vocab: int = len(data.VOCAB)
    # identity binding on the prompt side (Omni-Customizer Sec. 4.2; defaults as in the paper)
    ocf: bool = True               # Omni-Context Fusion of [text, ref images, ref voices, phonemes]
    ocf_rope: str = "sa_mrope"     # sa_mrope | 1d: positions of the OCF sequence
    mtp_ca: bool = True            # masked TTS-to-prompt cross-attention
    ocf_dim: int = 0               # width of OCF / MTP-CA / phoneme encoder (0 = text_dim)
    ocf_layers: int = 2
    ocf_heads: int = 4
    phoneme_layers: int = 2        # ConvNeXt-V2 blocks of the phoneme encoder (F5-TTS: 4)
    sa_mrope_phoneme_w: float = -1.0  # the distinct last coordinate of phoneme tokens (Eq. 4)
    # references and task inputs
    ref_rope: str = "plain"        # plain | syn (Syn-RoPE, DreamID-Omni)
    syn_margin: float = 150.0
    task_inputs: bool = True       # RV2AV source video / RA2V driving audio projections (zero-init)
    input_skip: bool = False       # toy: an identity-initialised linear map from each input token to its output

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def fusion_dim(self) -> int:
        return self.ocf_dim or self.text_dim

    @property
    def video_patch_dim(self) -> int:
        return self.patch_t * self.patch_h * self.patch_w * self.video_channels

    @property
    def audio_token_dim(self) -> int:
        return self.audio_patch * self.audio_channels


PRESETS = {
    # ~5.5M parameters: trains on a 2-core CPU in minutes at 256 video + 64 audio tokens per clip.
    # The width must be at least a token's size (4x4x4 RGB = 192 numbers): near t = 1 the target velocity is
    # mostly the input noise itself, which a narrower stream cannot carry through (at width 128 the toy
    # learned audio, 80 numbers a token, but its video stayed noise). One layer each for the text encoder,
    # OCF and the phoneme encoder keeps the long character captions cheap.
    "toy": ModelConfig(text_layers=1, ocf_layers=1, phoneme_layers=1),
    # one GPU, hours: the same toy world, a wider and deeper twin tower
    "small": ModelConfig(dim=512, layers=12, heads=8, ffn=2048, text_dim=256, text_layers=4),
    # Ovi size (REFERENCE.md): 3072 x 30 layers x 24 heads, FFN 14336, over VAE latents and umT5
    "full": ModelConfig(dim=3072, layers=30, heads=24, ffn=14336, video_channels=48, patch_t=1, patch_h=2,
                        patch_w=2, audio_channels=20, audio_patch=1, audio_stem="conv", audio_stem_hidden=8192,
                        audio_scale=31 / 157.55, text_dim=4096, text_layers=0, task_inputs=False,
                        ocf_dim=1024, ocf_heads=16, phoneme_layers=4),
}
OVI_PARAMETERS = 11_660_753_108
# ours, not Ovi's backbone: the toy text encoder, task inputs, OCF, MTP-CA and the phoneme encoder
ADDITION_PREFIXES = ("text_encoder.", "source_embed.", "driving_embed.", "ocf.", "mtp_ca.", "phoneme_encoder.")


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) flow time in [0, 1] -> (N, dim) sinusoidal features of 1000 t (Wan's convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float64) / half)
    angles = 1000 * t.double()[:, None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


ATTENTION = "sdpa"  # sdpa | math: bench.py times both; tests compare them


def attention(q, k, v, key_mask=None):
    """Attention over (B, H, S, hd) with a key padding mask (B, S_k), True = attend; same on CPU and GPU."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if ATTENTION == "math":
        return attention_math(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_math(q, k, v, mask=None):
    """The reference: softmax(q k^T / sqrt(d) + mask) v, spelled out."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])                  # (B, H, S_q, S_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def modulate(x, shift, scale, n_content):
    """adaLN in fp32: content tokens [:n] use the noisy-t row of (B, 2, D) shift/scale, refs the clean one."""
    x32 = x.float()
    out = torch.cat([x32[:, :n_content] * (1 + scale[:, :1]) + shift[:, :1],
                     x32[:, n_content:] * (1 + scale[:, 1:]) + shift[:, 1:]], dim=1)
    return out.to(x.dtype)


def gate(y, g, n_content):
    """Per-segment gate of a residual branch: y (B, S, D) times g (B, 2, D)."""
    return torch.cat([y[:, :n_content] * g[:, :1].to(y.dtype), y[:, n_content:] * g[:, 1:].to(y.dtype)], dim=1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(d, eps=cfg.eps), nn.RMSNorm(d, eps=cfg.eps)

    def split(self, x):  # (B, S, D) -> (B, H, S, hd)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x, cos, sin, key_mask):
        q = rope.apply_rope(self.split(self.norm_q(self.q(x))), cos, sin)
        k = rope.apply_rope(self.split(self.norm_k(self.k(x))), cos, sin)
        out = attention(q, k, self.split(self.v(x)), key_mask)                     # (B, H, S, hd)
        return self.o(out.transpose(1, 2).flatten(2))


class CrossAttention(SelfAttention):
    """attn(q, text) + attn(rope(q), rope(k_other)): Ovi's cross sublayer with the fusion keys.

    The same q/k/v/o and norms as self-attention (k, v read the text), plus the other tower's own k/v."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.dim
        # the other tower's keys and values: the "fusion" weights (1.13B of Ovi's 11.7B)
        self.k_other, self.v_other = nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k_other = nn.RMSNorm(d, eps=cfg.eps)

    def forward(self, x, text, text_mask, other, other_mask, rope_self, rope_other):
        q = self.split(self.norm_q(self.q(x)))                                     # (B, H, S, hd)
        out = attention(q, self.split(self.norm_k(self.k(text))), self.split(self.v(text)), text_mask)
        if other is not None:  # absent in an audio-only step: the cross-tower pathway is inactive
            k = rope.apply_rope(self.split(self.norm_k_other(self.k_other(other))), *rope_other)
            out = out + attention(rope.apply_rope(q, *rope_self), k, self.split(self.v_other(other)), other_mask)
        return self.o(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """One tower's layer: modulated self-attention, (unmodulated) cross-attention, modulated FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn, d))
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))   # per-block bias on the shared timestep MLP

    def mod(self, e):  # e (B, 2, 6, D) fp32 -> six (B, 2, D): shift/scale/gate for attention and FFN
        return (e + self.modulation.float()[:, None]).unbind(2)

    def self_part(self, x, e, rope_cs, key_mask, n):
        shift, scale, g, _, _, _ = self.mod(e)
        return x + gate(self.self_attn(modulate(self.norm1(x), shift, scale, n), *rope_cs, key_mask), g, n)

    def ffn_part(self, x, e, n):
        _, _, _, shift, scale, g = self.mod(e)
        return x + gate(self.ffn(modulate(self.norm2(x), shift, scale, n)), g, n)


class TwinLayer(nn.Module):
    """Layer i of both towers: the unit of activation checkpointing, compile and FSDP sharding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.video, self.audio = Block(cfg), Block(cfg)

    def forward(self, v, a, ctx: dict):
        if v is not None:
            v = self.video.self_part(v, ctx["e_v"], ctx["rope_v"], ctx["mask_v"], ctx["n_v"])
        a = self.audio.self_part(a, ctx["e_a"], ctx["rope_a"], ctx["mask_a"], ctx["n_a"])
        # both towers read the other's post-self-attention state: compute both before updating either
        a_new = a + self.audio.cross_attn(self.audio.norm3(a), ctx["text_a"], ctx["text_mask"], v,
                                          ctx["mask_v"], ctx["rope_a"], ctx["rope_v"])
        if v is not None:
            v = v + self.video.cross_attn(self.video.norm3(v), ctx["text_v"], ctx["text_mask"], a,
                                          ctx["mask_a"], ctx["rope_v"], ctx["rope_a"])
            v = self.video.ffn_part(v, ctx["e_v"], ctx["n_v"])
        return v, self.audio.ffn_part(a_new, ctx["e_a"], ctx["n_a"])


class ConvAudioStem(nn.Module):
    """Ovi's audio stem: Conv1d k=7 + SiLU, then a convolutional SwiGLU MLP (k=7), residual."""

    def __init__(self, channels: int, dim: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, dim, 7, padding=3)
        self.w1, self.w3 = nn.Conv1d(dim, hidden, 7, padding=3), nn.Conv1d(dim, hidden, 7, padding=3)
        self.w2 = nn.Conv1d(hidden, dim, 7, padding=3)

    def forward(self, x):                                       # (N, T, C) -> (N, T, D)
        x = F.silu(self.conv(x.transpose(1, 2)))
        return (x + self.w2(F.silu(self.w1(x)) * self.w3(x))).transpose(1, 2)


class Tower(nn.Module):
    """What one tower has besides its blocks: prompt projection, timestep MLP, output head."""

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        d = cfg.dim
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.head_norm = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, d))
        self.head = nn.Linear(d, out_dim)
        self.freq_dim = cfg.freq_dim

    def timestep(self, t):
        """(B,) flow time -> (B, 2, 6, D) fp32 modulation rows for (noisy content, clean references)."""
        with torch.autocast(t.device.type, enabled=False):
            both = torch.stack([t.float(), torch.zeros_like(t, dtype=torch.float)], dim=1).flatten()  # (2B,)
            emb = self.time_embed(timestep_features(both, self.freq_dim))
            return emb, self.time_proj(emb).unflatten(-1, (6, -1)).unflatten(0, (-1, 2))

    def output(self, x, emb, n):
        """Head on the content tokens only (references are dropped here, so never in the loss)."""
        with torch.autocast(x.device.type, enabled=False):
            # Wan's head: (1, 2, D) bias + the content tokens' timestep embedding -> shift, scale (B, D)
            shift, scale = (self.head_modulation.float() + emb.unflatten(0, (-1, 2))[:, :1]).unbind(1)
            y = self.head_norm(x[:, :n].float()) * (1 + scale[:, None]) + shift[:, None]
            return self.head(y.to(self.head.weight.dtype))


# ------------------------------------------------------------------------------------------------
# The twin tower
# ------------------------------------------------------------------------------------------------


class TwinTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_ckpt = False
        d = cfg.dim
        if cfg.text_layers > 0:
            self.text_encoder = ocf.CharTextEncoder(cfg.text_vocab, cfg.text_dim, cfg.text_layers, cfg.text_heads)
        if cfg.ocf or cfg.mtp_ca:
            self.phoneme_encoder = ocf.PhonemeEncoder(data.N_PHONEME_IDS, cfg.fusion_dim, cfg.phoneme_layers)
        if cfg.ocf:
            self.ocf = ocf.OmniContextFusion(cfg.text_dim, cfg.fusion_dim, cfg.ocf_layers, cfg.ocf_heads,
                                             cfg.patch_h * cfg.patch_w * cfg.video_channels, cfg.audio_token_dim)
        if cfg.mtp_ca:
            self.mtp_ca = ocf.MaskedPhonemeCrossAttention(cfg.text_dim, cfg.fusion_dim, cfg.ocf_heads)
        self.video_stem = nn.Linear(cfg.video_patch_dim, d)
        if cfg.audio_stem == "conv":
            self.audio_stem = ConvAudioStem(cfg.audio_channels, d, cfg.audio_stem_hidden)
        else:
            self.audio_stem = nn.Linear(cfg.audio_token_dim, d)
        if cfg.task_inputs:
            # RV2AV: masked source video (+ its mask channel); RA2V: driving audio. Zero-init: no-ops at start.
            # bias-free: a sample without the input (zeros) gets exactly nothing added
            self.source_embed = nn.Linear(cfg.video_patch_dim // cfg.video_channels * (cfg.video_channels + 1), d, bias=False)
            self.driving_embed = nn.Linear(cfg.audio_token_dim, d, bias=False)
        if cfg.input_skip:
            self.video_skip = nn.Linear(cfg.video_patch_dim, cfg.video_patch_dim, bias=False)
            self.audio_skip = nn.Linear(cfg.audio_token_dim, cfg.audio_token_dim, bias=False)
        self.video_tower = Tower(cfg, cfg.video_patch_dim)
        self.audio_tower = Tower(cfg, cfg.audio_token_dim)
        self.layers = nn.ModuleList(TwinLayer(cfg) for _ in range(cfg.layers))
        self.register_buffer("freqs", rope.rope_frequencies(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.init_weights()

    def init_weights(self):
        """Initialisation, in one place:
        | parameter                                   | init                               |
        | every Linear / Conv weight                  | Xavier uniform, bias 0             |
        | Block.modulation, Tower.head_modulation     | shift/scale rows N(0, 1/dim), gates 0 (adaLN-zero) |
        | Tower.time_proj (the 6*dim modulation MLP)  | 0, so gates start at exactly 0      |
        | Tower.head (output projection)              | 0: the model first predicts v = 0   |
        | source_embed, driving_embed                 | 0: task inputs start as no-ops      |
        | ocf.back[i] (OCF residuals), mtp_ca.o       | 0: the prompt passes unchanged      |
        | phoneme / text embeddings                   | N(0, 0.02)                          |
        | norms                                       | weight 1, bias 0                    |
        """
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for layer in self.layers:
            for block in (layer.video, layer.audio):
                nn.init.normal_(block.modulation, std=self.cfg.dim ** -0.5)
                block.modulation.data[:, [2, 5]] = 0                                 # the two gates
        for tower in (self.video_tower, self.audio_tower):
            nn.init.normal_(tower.head_modulation, std=self.cfg.dim ** -0.5)
            for lin in (tower.time_proj[1], tower.head):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        zero_init = [self.source_embed, self.driving_embed] if self.cfg.task_inputs else []
        zero_init += list(self.ocf.back) if self.cfg.ocf else []       # OCF starts as the identity
        zero_init += [self.mtp_ca.o] if self.cfg.mtp_ca else []        # so does MTP-CA
        if self.cfg.input_skip:  # start as v = x_t: exact at t = 1 up to the mean (a constant c_skip, as in EDM)
            nn.init.eye_(self.video_skip.weight)
            nn.init.eye_(self.audio_skip.weight)
        for lin in zero_init:
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    # --- patchify: pixels / latents <-> tokens -----------------------------------------------------
    def patchify_video(self, x):
        """(B, T, C, H, W) -> (B, T'*H'*W', pt*ph*pw*C) tokens in t-major order."""
        c = self.cfg
        B, T, C, H, W = x.shape
        x = x.reshape(B, T // c.patch_t, c.patch_t, C, H // c.patch_h, c.patch_h, W // c.patch_w, c.patch_w)
        return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(B, -1, c.patch_t * c.patch_h * c.patch_w * C)

    def unpatchify_video(self, tokens, shape):
        c = self.cfg
        B, T, C, H, W = shape
        x = tokens.reshape(B, T // c.patch_t, H // c.patch_h, W // c.patch_w, c.patch_t, c.patch_h, c.patch_w, C)
        return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(B, T, C, H, W)

    def patchify_audio(self, x):
        """(B, T_a, C) -> (B, T_a / p, p*C)."""
        return x.reshape(x.shape[0], x.shape[1] // self.cfg.audio_patch, -1)

    def embed_audio(self, x):
        return self.audio_stem(x if self.cfg.audio_stem == "conv" else self.patchify_audio(x))

    def video_grid(self, shape):
        c = self.cfg
        return shape[-4] // c.patch_t, shape[-2] // c.patch_h, shape[-1] // c.patch_w  # (B, T, C, H, W)

    # --- the forward pass ----------------------------------------------------------------------------
    def encode_text(self, text, text_mask, ref_images=None, ref_audio=None, subject_mask=None, subject_spans=None,
                    speech_spans=None, line_mask=None, line_phonemes=None, phoneme_mask=None, ref_image_mask=None):
        """The prompt both towers read: text features, enriched by OCF and MTP-CA when they are on.

        Token ids (B, L) go through the toy encoder, precomputed embeddings (B, L, text_dim) as they are.
        """
        cfg = self.cfg
        text = self.text_encoder(text, text_mask) if cfg.text_layers > 0 else text
        if not (cfg.ocf or cfg.mtp_ca) or line_phonemes is None:
            return text
        phonemes = self.phoneme_encoder(line_phonemes, phoneme_mask)                  # (B, M, P, fusion_dim)
        B, M, P, _ = phonemes.shape
        if cfg.ocf:
            K = ref_images.shape[1]
            # OCF's own view of the references: image patches and voice frames, one token each
            img = ref_images.unflatten(-2, (-1, cfg.patch_h)).unflatten(-1, (-1, cfg.patch_w))  # (B,K,C,h',ph,w',pw)
            ref_hw = (img.shape[3], img.shape[5])
            img = img.permute(0, 1, 3, 5, 4, 6, 2).reshape(B, K * ref_hw[0] * ref_hw[1], -1)
            voice = ref_audio.reshape(B, K, -1, cfg.audio_token_dim)                   # (B, K, T_r', p*C_a)
            T_r = voice.shape[2]
            if cfg.ocf_rope == "sa_mrope":
                pos = rope.sa_mrope_positions(text.shape[1], subject_spans.cpu(), ref_hw, T_r, speech_spans.cpu(),
                                              phoneme_mask.cpu(), cfg.sa_mrope_phoneme_w)
            else:
                pos = rope.sequential_positions(text.shape[1] + img.shape[1] + K * T_r + M * P, B)
            image_mask = subject_mask if ref_image_mask is None else ref_image_mask
            text = self.ocf(text, text_mask, img, image_mask.repeat_interleave(ref_hw[0] * ref_hw[1], 1),
                            voice.flatten(1, 2), subject_mask.repeat_interleave(T_r, 1), phonemes.flatten(1, 2),
                            phoneme_mask.flatten(1, 2), pos)
        if cfg.mtp_ca and M * P > 0:
            text = self.mtp_ca(text, phonemes, phoneme_mask, speech_spans, line_mask)
        return text

    def forward(self, video, audio, t, text, text_mask, ref_images=None, ref_audio=None, subject_mask=None,
                source_video=None, driving_audio=None, ref_image_mask=None, **caption):
        """Predict the flow velocity of both streams.

        Args:
            video: (B, T, C, H, W) noisy video, or None for an audio-only step.
            audio: (B, T_a, C_a) noisy audio (mel frames or latents).
            t: (B,) flow time in [0, 1] (1 = pure noise).
            text: (B, L) caption ids (toy) or (B, L, text_dim) embeddings (full); text_mask (B, L).
            ref_images: (B, K, C, h, w) clean reference frames; ref_audio: (B, K, T_r, C_a);
                subject_mask: (B, K), True for real subjects (padding subjects are masked out);
                ref_image_mask: (B, K), subjects that have a face (default: subject_mask; the audio-only
                corpus has voices without faces).
            source_video: (B, T, C+1, H, W) RV2AV source with subject regions zeroed + mask channel.
            driving_audio: (B, T_a, C_a) RA2V driving audio.
            caption: the caption's structure for OCF / MTP-CA: subject_spans (B, K, 2), speech_spans (B, M, 2),
                line_mask (B, M), line_phonemes (B, M, P), phoneme_mask (B, M, P).
        Returns: (video velocity like `video` or None, audio velocity like `audio`).
        """
        cfg = self.cfg
        B = audio.shape[0]
        ref_image_mask = subject_mask if ref_image_mask is None else ref_image_mask
        text_feats = self.encode_text(text, text_mask, ref_images, ref_audio, subject_mask, ref_image_mask=ref_image_mask,
                                      **caption)                                    # (B, L, text_dim)
        emb_v, e_v = self.video_tower.timestep(t) if video is not None else (None, None)
        emb_a, e_a = self.audio_tower.timestep(t)
        K = 0 if ref_images is None else ref_images.shape[1]
        ones = lambda n: torch.ones(B, n, dtype=torch.bool, device=audio.device)  # noqa: E731

        # audio stream: [content tokens | reference voice tokens]
        a = self.embed_audio(audio)                                                # (B, S_a, D)
        if driving_audio is not None and cfg.task_inputs:
            a = a + self.driving_embed(self.patchify_audio(driving_audio))
        n_a, T_r = a.shape[1], 0
        mask_a = ones(n_a)
        if K and ref_audio is not None:
            ref_a = self.embed_audio(ref_audio.flatten(0, 1))                      # (B*K, T_r', D)
            T_r = ref_a.shape[1]
            a = torch.cat([a, ref_a.reshape(B, K * T_r, -1)], dim=1)
            mask_a = torch.cat([mask_a, subject_mask.repeat_interleave(T_r, dim=1)], dim=1)

        # video stream: [content tokens | one clean latent frame per reference image]
        v = mask_v = None
        n_v, grid, ref_hw = 0, (0, 0, 0), (0, 0)
        if video is not None:
            grid = self.video_grid(video.shape)
            v = self.video_stem(self.patchify_video(video))                        # (B, T'H'W', D)
            if source_video is not None and cfg.task_inputs:
                v = v + self.source_embed(self.patchify_video(source_video))
            n_v = v.shape[1]
            mask_v = ones(n_v)
            if K:
                # a still image becomes one latent frame: repeat it over the temporal patch
                frames = ref_images.flatten(0, 1)[:, None].expand(-1, cfg.patch_t, -1, -1, -1)
                ref_hw = (frames.shape[-2] // cfg.patch_h, frames.shape[-1] // cfg.patch_w)
                ref_v = self.video_stem(self.patchify_video(frames))               # (B*K, h'w', D)
                v = torch.cat([v, ref_v.reshape(B, K * ref_v.shape[1], -1)], dim=1)
                mask_v = torch.cat([mask_v, ref_image_mask.repeat_interleave(ref_v.shape[1], dim=1)], dim=1)

        # positions: content grids, then the references' layout (rope.py)
        pos_v = rope.video_positions(*grid)
        pos_a = rope.audio_positions(n_a, cfg.audio_scale)
        ref_pos_v, ref_pos_a = rope.reference_positions(cfg.ref_rope, K, grid[0], *ref_hw, n_a, T_r,
                                                        cfg.audio_scale, cfg.syn_margin)
        pos_v = torch.cat([pos_v, ref_pos_v]) if video is not None and K else pos_v
        pos_a = torch.cat([pos_a, ref_pos_a]) if T_r else pos_a

        def cos_sin(pos):
            angles = rope.rope_angles(pos.to(audio.device), self.freqs, cfg.head_dim)[None]  # (1, S, pairs)
            return angles.cos(), angles.sin()

        ctx = dict(e_v=e_v, e_a=e_a, n_v=n_v, n_a=n_a, mask_v=mask_v, mask_a=mask_a, text_mask=text_mask,
                   rope_v=cos_sin(pos_v) if video is not None else None, rope_a=cos_sin(pos_a),
                   text_v=self.video_tower.text_proj(text_feats) if video is not None else None,
                   text_a=self.audio_tower.text_proj(text_feats))
        for layer in self.layers:
            if self.grad_ckpt and self.training:
                v, a = torch.utils.checkpoint.checkpoint(layer, v, a, ctx, use_reentrant=False)
            else:
                v, a = layer(v, a, ctx)

        audio_out = self.audio_tower.output(a, emb_a, n_a)                         # (B, S_a, p*C_a)
        if cfg.input_skip:
            audio_out = audio_out + self.audio_skip(self.patchify_audio(audio))
        audio_out = audio_out.reshape(audio.shape)
        if video is None:
            return None, audio_out
        video_tokens = self.video_tower.output(v, emb_v, n_v)                     # (B, T'H'W', pt*ph*pw*C)
        if cfg.input_skip:
            video_tokens = video_tokens + self.video_skip(self.patchify_video(video))
        video_out = self.unpatchify_video(video_tokens, video.shape)
        return video_out, audio_out

    def frozen_in_audio_only_steps(self) -> list[str]:
        """Parameters an audio-only step must not touch (Omni-Customizer Sec. 4.3): the video tower and
        the cross-tower pathway (the fusion k/v of both directions) -- "structurally inactive"."""
        video = ("video_stem.", "video_tower.", "source_embed.")
        return [n for n, _ in self.named_parameters()
                if n.startswith(video) or ".video." in n or "_other" in n]

    # --- accounting --------------------------------------------------------------------------------
    def count_parameters(self) -> dict:
        backbone = additions = 0
        for name, p in self.named_parameters():
            if name.startswith(ADDITION_PREFIXES):
                additions += p.numel()
            else:
                backbone += p.numel()
        return dict(backbone=backbone, additions=additions, total=backbone + additions)


def estimate_flops(cfg: ModelConfig, video_tokens: int, audio_tokens: int, text_tokens: int,
                   ref_video_tokens: int = 0, ref_audio_tokens: int = 0, phoneme_tokens: int = 0,
                   video: bool = True) -> float:
    """Training FLOPs (forward + backward) per sample, REFERENCE.md "FLOP accounting".

    6 x weights each token passes through (stems and heads, q/k/v/o, FFN, cross q/o, prompt
    projections over text tokens, fusion k/v over the *other* stream's tokens), plus attention
    12 x layers x heads x head_dim x (keys seen) per query, plus the per-sample timestep MLPs,
    plus the prompt side: text encoder, phoneme encoder, OCF over [text, refs, phonemes], MTP-CA.
    phoneme_tokens counts the padded (lines x phonemes) grid, as the encoders see it.
    """
    d, f, L = cfg.dim, cfg.ffn, cfg.layers
    s_v = (video_tokens + ref_video_tokens) if video else 0
    s_a = audio_tokens + ref_audio_tokens
    text_w = cfg.text_dim * d + d * d
    block = 6 * d * d + 2 * d * f                       # self q,k,v,o + cross q,o + FFN, per token
    macs = 0.0
    for s, s_other, content, stem_in, head_out in (
            (s_v, s_a, video_tokens, cfg.video_patch_dim, cfg.video_patch_dim),
            (s_a, s_v, audio_tokens, cfg.audio_token_dim, cfg.audio_token_dim)):
        if s == 0:
            continue
        if cfg.audio_stem == "conv" and stem_in == cfg.audio_token_dim:
            stem = 7 * cfg.audio_channels * d + 3 * 7 * d * cfg.audio_stem_hidden
        else:
            stem = stem_in * d
        macs += s * (L * block + stem) + content * d * head_out
        macs += L * 2 * d * d * (text_tokens + s_other)  # text k/v and fusion k/v
        macs += text_tokens * text_w                      # this tower's prompt projection
        macs += 2 * (cfg.freq_dim * d + d * d + 6 * d * d)  # timestep MLP for t and for 0
        attn_keys = s * (s + text_tokens + s_other)
        macs += L * 2 * d * attn_keys                     # QK^T and AV: 2 x d MACs per (query, key)
    td, fd = cfg.text_dim, cfg.fusion_dim
    if cfg.text_layers:
        macs += cfg.text_layers * (text_tokens * 12 * td * td + 2 * td * text_tokens ** 2)
    if cfg.ocf or cfg.mtp_ca:   # phoneme encoder: pointwise MLP (d -> 2d -> d) + depthwise conv k7
        macs += cfg.phoneme_layers * phoneme_tokens * (4 * fd * fd + 7 * fd)
    if cfg.ocf:
        s_ocf = text_tokens + ref_video_tokens + ref_audio_tokens + phoneme_tokens
        image_in = cfg.patch_h * cfg.patch_w * cfg.video_channels
        macs += text_tokens * td * fd + ref_video_tokens * image_in * fd + ref_audio_tokens * cfg.audio_token_dim * fd
        macs += cfg.ocf_layers * (s_ocf * 12 * fd * fd + 2 * fd * s_ocf ** 2 + text_tokens * fd * td)
    if cfg.mtp_ca:              # q and o over the prompt, k and v over the phonemes, attention to them all
        macs += 2 * text_tokens * td * fd + 2 * phoneme_tokens * fd * fd + 2 * fd * text_tokens * phoneme_tokens
    return 6.0 * macs


def toy_token_counts(cfg: ModelConfig, world: data.WorldConfig, subjects: int = 2, text_tokens: int = 250):
    """Token counts of one toy sample (for FLOPs and bench)."""
    v = (world.frames // cfg.patch_t) * (world.image_size // cfg.patch_h) * (world.image_size // cfg.patch_w)
    a = world.mel_frames // cfg.audio_patch
    rv = subjects * (world.ref_image_size // cfg.patch_h) * (world.ref_image_size // cfg.patch_w)
    ra = subjects * world.ref_mel_frames // cfg.audio_patch
    return dict(video_tokens=v, audio_tokens=a, text_tokens=text_tokens, ref_video_tokens=rv, ref_audio_tokens=ra,
                phoneme_tokens=subjects * 12)


def full_token_counts(subjects: int = 2):
    """Token counts of one 5 s 720x720 Ovi sample: 31 latent frames of 45x45 latents, patch 2x2."""
    return dict(video_tokens=31 * 22 * 22, audio_tokens=157, text_tokens=512,
                ref_video_tokens=subjects * 22 * 22, ref_audio_tokens=subjects * 157, phoneme_tokens=subjects * 40)


def main():
    parser = argparse.ArgumentParser(description="Parameter counts and training FLOPs per preset.")
    parser.add_argument("--config", choices=list(PRESETS), nargs="*", default=list(PRESETS))
    args = parser.parse_args()
    for name in args.config:
        cfg = PRESETS[name]
        with torch.device("meta"):  # no memory: the full model is 11.7B parameters
            counts = TwinTower(cfg).count_parameters()
        tokens = full_token_counts() if name == "full" else toy_token_counts(cfg, data.WorldConfig())
        flops = estimate_flops(cfg, **tokens)
        line = (f"{name:5s} backbone {counts['backbone']:>15,d}  additions {counts['additions']:>10,d}  "
                f"train FLOPs/sample {flops:.3e}  ({tokens['video_tokens']}+{tokens['ref_video_tokens']} video, "
                f"{tokens['audio_tokens']}+{tokens['ref_audio_tokens']} audio, {tokens['text_tokens']} text tokens)")
        if name == "full":
            line += f"  vs Ovi {OVI_PARAMETERS:,d}: {100 * (counts['backbone'] / OVI_PARAMETERS - 1):+.3f}%"
        print(line)


if __name__ == "__main__":
    main()
