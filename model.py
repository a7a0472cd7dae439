"""Ovi's twin-tower DiT, the backbone every paper here starts from; with references and task inputs.

Two towers with identical blocks, one denoising video tokens, one denoising audio tokens, read the
same prompt and each other (Ovi's paper and released model code):

  per layer, in both towers:
    x = x + gate1 * SelfAttn(adaLN(x))                       q/k RMSNorm, 3D RoPE (video) / 1D (audio)
    y = LN3(x)                                               affine LayerNorm
    x = x + CrossAttn(y; text) + CrossAttn(rope(q(y)); rope(k_f(LN_f(o))), v_f(LN_f(o)))   not modulated
    x = x + gate2 * FFN(adaLN(x))                            Linear -> GELU-tanh -> Linear (not a GLU)
  the cross sublayer shares q and the output projection between the text and the other tower (o);
  each direction has its own fusion k/v, k-norm and the affine LayerNorm LN_f on the other tower's
  tokens (Ovi's `pre_attn_norm_fusion`); both towers read the other tower's state from *after*
  self-attention (a symmetric exchange).

Modulation (Wan / Ovi): one timestep MLP per tower gives 6*dim (shift, scale, gate for self-attention
and FFN), each block adds a learned (1, 6, dim) bias; computed and applied in fp32. It is per token:
the noisy content tokens get the flow time t, the clean reference tokens get t = 0.

Stems: video tokens are (pt, ph, pw, C) patches through one linear map (Ovi: a Conv3d of kernel =
stride = patch, the same map); audio tokens through a linear map (toy) or Ovi's convolutional stem.

References (DreamID-Omni Eq. 1 / Omni-Customizer Sec. 4.1): reference image k is one clean latent frame
and reference voice k a clean audio clip, embedded by the towers' own stems and appended to the noisy
sequences; their positions come from rope.py (`--ref_rope`); absent or dropped references are masked out
of every attention (conditioning.py); predictions for them are dropped, so they never enter the loss.
DreamID-Omni's task inputs (RV2AV source video, RA2V driving audio) are added to the content tokens
through zero-initialised projections, so the architecture does not change between tasks.

The papers extend this file from their own: ocf.py replaces `prompt`; presence.py and motion.py subclass
`TwinTower` (their forward passes are theirs to read); lora.py wraps linear layers of a built model and
seqpar.py its attentions (`attend`) and token streams (`sp`). Each module says what it is where it is
made (`declare`): an addition to Ovi, a parameter that starts at zero, a video-side module an audio-only
step freezes. build.py puts a configured model together.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import rope
from attention import attention, key_padding
from conditioning import Conditioning
from precision import LayerNorm32, RMSNorm32, linear32
from sharded import copy_rows
from text import Prompt


@dataclass
class OviConfig:
    dim: int = 192                 # width of both towers
    layers: int = 3                # twin layers (one block per tower each)
    heads: int = 4                 # attention heads of both towers
    ffn: int = 768                 # FFN hidden width
    freq_dim: int = 256            # sinusoidal timestep features
    eps: float = 1e-6              # every norm's epsilon (Ovi: 1e-6)
    rope_theta: float = 10000.0    # RoPE base
    # video stream: (toy) RGB pixels; (full) Wan2.2 VAE latents
    video_channels: int = 3        # pixels (toy) or VAE latent channels (Wan2.2: 48)
    patch_t: int = 4               # a toy video token covers 4 frames x 4 x 4 pixels, like a VAE latent
    patch_h: int = 4               # patch height (Ovi: 2 latents)
    patch_w: int = 4               # patch width (Ovi: 2 latents)
    # audio stream: (toy) log-mel frames patched along time; (full) MMAudio VAE latents + conv stem
    audio_channels: int = 40       # mel bins (toy) or audio VAE latent channels (MMAudio: 20)
    audio_patch: int = 2           # audio frames per token (the conv stem: 1)
    audio_stem: str = "linear"     # linear | conv (Ovi: Conv1d k7 + SiLU + convolutional SwiGLU k7)
    audio_stem_hidden: int = 0     # hidden width of the convolutional SwiGLU (Ovi: 8192)
    audio_scale: float = 1 / 16    # RoPE: video latent frames per audio token (toy 2 / 32; Ovi 0.19676)
    # prompt: (toy) a small character transformer; (full) precomputed umT5 embeddings (4096-d)
    text_dim: int = 128            # prompt feature width (umT5-XXL: 4096)
    text_layers: int = 2           # layers of the toy text encoder; 0 = text arrives as precomputed features
    text_heads: int = 4            # heads of the toy text encoder
    text_vocab: int = 1418         # the toy tokenizer's size, len(caption.PAIR_VOCAB) (tests/test_caption.py checks)
    # references and task inputs (DreamID-Omni)
    ref_rope: str = "plain"        # plain | syn (Syn-RoPE, DreamID-Omni) | condition (DreamVideo-Omni): where references sit
    syn_margin: float = 150.0      # Syn-RoPE's temporal margin between identities
    task_inputs: bool = True       # RV2AV source video / RA2V driving audio projections (zero-init)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def video_patch_dim(self) -> int:
        return self.patch_t * self.patch_h * self.patch_w * self.video_channels

    @property
    def audio_token_dim(self) -> int:
        return self.audio_patch * self.audio_channels


def declare(module: nn.Module, addition: bool = False, zero: bool = False, video: bool = False) -> nn.Module:
    """Say what a module's parameters are, where the module is made (every submodule inherits it):
      addition  not one of Ovi's weights: trains fully under LoRA, starts fresh over Ovi's checkpoint
      zero      starts at exactly zero (adaLN-zero gates, output heads, every residual path a paper adds)
      video     the video side: an audio-only step (Omni-Customizer Sec. 4.3) leaves it untouched
    A module may instead set `zero_init` to the names of the parameters of its own that start at zero."""
    for m in module.modules():
        m.addition = getattr(m, "addition", False) or addition
        m.zero_init = getattr(m, "zero_init", ()) or zero
        m.video_side = getattr(m, "video_side", False) or video
    return module


def small_init(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Mark a module's Linear weights to start from N(0, std) (Wan's text and time embeddings) instead of Xavier."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.init_std = std
    return module


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) flow time in [0, 1] -> (N, dim) sinusoidal features of 1000 t (Wan's convention: cos, then sin)."""
    half = dim // 2
    wide = torch.float32 if t.device.type == "mps" else torch.float64   # Apple's GPUs have no float64
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=wide) / half)
    angles = 1000 * t.to(wide)[:, None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def segments(n_content: int, clean: int = 0):
    """(start, end, row) of each run of tokens: row 0 = the noisy-t modulation, row 1 = the clean (t = 0) one.
    Content tokens [clean:n] are noisy; references [n:] are clean, and so are the first `clean` content tokens
    when image-to-audio-video gives the first latent frame (Ovi's first_frame_is_clean: those tokens at t = 0)."""
    return ((0, clean, 1), (clean, n_content, 0), (n_content, None, 1)) if clean else \
        ((0, n_content, 0), (n_content, None, 1))


def modulate(x, shift, scale, n_content, clean: int = 0):
    """adaLN in fp32 with the (B, 2, D) shift/scale rows: each run of tokens takes its row (segments)."""
    x32 = x.float()
    out = torch.cat([x32[:, a:b] * (1 + scale[:, r:r + 1]) + shift[:, r:r + 1]
                     for a, b, r in segments(n_content, clean)], dim=1)
    return out.to(x.dtype)


def gate(y, g, n_content, clean: int = 0):
    """Per-segment gate of a residual branch: y (B, S, D) times the fp32 gate g (B, 2, D), in fp32 (Wan:
    `x = x + y * e[2]`), so adding it promotes the residual stream to fp32 under bf16 autocast."""
    y32 = y.float()
    return torch.cat([y32[:, a:b] * g[:, r:r + 1] for a, b, r in segments(n_content, clean)], dim=1)


def ffn(cfg) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.dim, cfg.ffn), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn, cfg.dim))


@dataclass
class TowerInputs:
    """What one tower's blocks read in every layer, besides its tokens (built once per forward)."""
    e: torch.Tensor                # (B, 2, 6, D) fp32 modulation rows: content at t, references at 0
    emb: torch.Tensor              # (2B, D) fp32 timestep embeddings (t, 0) per sample: the head reads them
    n: int                         # the leading tokens that are content (the rest: references, ...)
    mask: torch.Tensor | None      # (B, S) key mask, True = real; None when every key is real
    rope: tuple                    # (cos, sin), each (1 or B, S, head_dim / 2)
    text: torch.Tensor             # (B, L, D) the prompt through this tower's projection
    clean: int = 0                 # leading content tokens that are clean (I2AV's given first frame), modulated at t = 0


@dataclass
class LayerContext:
    """The typed input of every TwinLayer: each tower's inputs (video None in an audio-only step, audio None in
    a video-only step)."""
    video: TowerInputs | None
    audio: TowerInputs | None
    text_mask: torch.Tensor | None  # (B, L), None when every prompt token is real


class Heads:
    """What reading keys needs (mixed into SelfAttention and presence.IdentityKeys): split heads, rotated keys."""

    def split(self, x):  # (B, S, D) -> (B, H, S, hd)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, x, cos, sin):
        """(k rotated, v), each (B, H, S, hd)."""
        return rope.apply_rope(self.split(self.norm_k(self.k(x))), cos, sin), self.split(self.v(x))


class SelfAttention(Heads, nn.Module):
    def __init__(self, cfg: OviConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm32(d, eps=cfg.eps), RMSNorm32(d, eps=cfg.eps)

    def queries(self, x, cos, sin):
        return rope.apply_rope(self.split(self.norm_q(self.q(x))), cos, sin)     # (B, H, S, hd)

    def out(self, y):  # (B, H, S, hd) -> (B, S, D)
        return self.o(y.transpose(1, 2).flatten(2))

    def forward(self, x, cos, sin, key_mask):
        """x (B, S, D) -> (B, S, D); key_mask (B, S) True = a real key, or None."""
        q, (k, v) = self.queries(x, cos, sin), self.keys_values(x, cos, sin)
        return self.out(self.attend(q, k, v, key_mask))

    def attend(self, q, k, v, key_mask, shared_kv: bool = False):
        """SDPA over (B, H, S, hd) heads. Sequence parallel (seqpar.py) replaces this with its all-to-all
        version, where q (and k, v unless `shared_kv`: the prompt, the same on every rank) hold one rank's tokens."""
        return attention(q, k, v, key_padding(key_mask))


class CrossAttention(SelfAttention):
    """attn(q, text) + attn(rope(q), rope(k_fusion(LN(other)))): Ovi's cross sublayer with the fusion keys.

    The same q/k/v/o and norms as self-attention (k, v read the text), plus the other tower's own
    LayerNorm, k/v and k-norm (the parameter names are Ovi's)."""

    def __init__(self, cfg: OviConfig):
        super().__init__(cfg)
        d = cfg.dim
        # the other tower's keys and values: the "fusion" weights (1.13B of Ovi's 11.7B); an audio-only step
        # has no other tower, so it leaves them untouched in both directions
        self.pre_attn_norm_fusion = declare(LayerNorm32(d, eps=cfg.eps), video=True)  # affine, on the other tower
        # v_fusion starts at zero (our choice; Ovi's release does not say how its fusion began): the other tower
        # then adds nothing at first, so towers pretrained alone (recipes.py's ovi) start fusion unchanged
        self.k_fusion, self.v_fusion = declare(nn.Linear(d, d), video=True), declare(nn.Linear(d, d), video=True, zero=True)
        self.norm_k_fusion = declare(RMSNorm32(d, eps=cfg.eps), video=True)

    def forward(self, x, own: TowerInputs, other_x, other: TowerInputs | None, text_mask):
        """x (B, S, D) this tower's (normed) tokens; other_x the other tower's tokens, None in an audio-only step."""
        q = self.split(self.norm_q(self.q(x)))                                     # (B, H, S, hd)
        k_text, v_text = self.split(self.norm_k(self.k(own.text))), self.split(self.v(own.text))
        # Ovi does not mask its zero-padded umT5 features (512 tokens, context lengths None); we mask
        # padding, so a prompt's meaning does not depend on how far it was padded
        out = self.attend(q, k_text, v_text, text_mask, shared_kv=True)
        if other_x is not None:
            other_x = self.pre_attn_norm_fusion(other_x)
            k = rope.apply_rope(self.split(self.norm_k_fusion(self.k_fusion(other_x))), *other.rope)
            out = out + self.attend(rope.apply_rope(q, *own.rope), k, self.split(self.v_fusion(other_x)), other.mask)
        return self.o(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """One tower's layer: modulated self-attention, (unmodulated) cross-attention, modulated FFN."""

    def __init__(self, cfg: OviConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm32(d, eps=cfg.eps)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = ffn(cfg)
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))   # per-block bias on the shared timestep MLP

    def mod(self, e):  # e (B, 2, 6, D) fp32 -> six (B, 2, D): shift/scale/gate for attention and FFN
        return (e + self.modulation.float()[:, None]).unbind(2)

    def self_part(self, x, io: TowerInputs):
        shift, scale, g, _, _, _ = self.mod(io.e)
        return x + gate(self.self_attn(modulate(self.norm1(x), shift, scale, io.n, io.clean), *io.rope, io.mask), g,
                        io.n, io.clean)

    def cross_part(self, x, io: TowerInputs, other_x, other: TowerInputs | None, text_mask):
        return x + self.cross_attn(self.norm3(x), io, other_x, other, text_mask)

    def ffn_part(self, x, io: TowerInputs):
        _, _, _, shift, scale, g = self.mod(io.e)
        return x + gate(self.ffn(modulate(self.norm2(x), shift, scale, io.n, io.clean)), g, io.n, io.clean)


class TwinLayer(nn.Module):
    """Layer i of both towers: the unit of activation checkpointing, compile and FSDP sharding."""

    def __init__(self, cfg: OviConfig, index: int = 0):
        super().__init__()
        self.index = index
        self.grad_ckpt = False  # train.py --grad_ckpt: recompute this layer in the backward
        self.video = declare(self.make_block(cfg, "video"), video=True)
        self.audio = self.make_block(cfg, "audio")

    def make_block(self, cfg, tower: str) -> Block:  # presence.py's layer makes its own blocks
        return Block(cfg)

    def forward(self, v, a, ctx: LayerContext):
        """Activation checkpointing lives *inside* the layer (torchtitan's order: checkpoint, then compile,
        then FSDP2's fully_shard around it): FSDP2 gathers the weights before this runs, in the forward and
        again before the recompute in the backward, and the recompute sees exactly the forward's inputs."""
        if self.grad_ckpt and self.training:
            return torch.utils.checkpoint.checkpoint(self.layer, v, a, ctx, use_reentrant=False)
        return self.layer(v, a, ctx)

    def layer(self, v, a, ctx: LayerContext):
        V, A = ctx.video, ctx.audio
        if v is None:  # Omni-Customizer's audio-only step: no video tower, no cross-tower pathway
            a = self.audio.cross_part(self.audio.self_part(a, A), A, None, None, ctx.text_mask)
            return None, self.audio.ffn_part(a, A)
        if a is None:  # a video-only step (unimodal pretraining, recipes.py's ovi): the video tower alone
            v = self.video.cross_part(self.video.self_part(v, V), V, None, None, ctx.text_mask)
            return self.video.ffn_part(v, V), None
        v, a = self.video.self_part(v, V), self.audio.self_part(a, A)
        # both towers read the other's post-self-attention state: compute both before updating either
        a_new = self.audio.cross_part(a, A, v, V, ctx.text_mask)
        v = self.video.cross_part(v, V, a, A, ctx.text_mask)
        return self.video.ffn_part(v, V), self.audio.ffn_part(a_new, A)


class ConvAudioStem(nn.Module):
    """Ovi's audio stem: Conv1d k=7 (+ bias) + SiLU, then a convolutional SwiGLU w2(silu(w1 x) * w3 x),
    k=7, with no biases and no residual around it (Ovi's released code)."""

    def __init__(self, channels: int, dim: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, dim, 7, padding=3)
        self.w1 = nn.Conv1d(dim, hidden, 7, padding=3, bias=False)
        self.w3 = nn.Conv1d(dim, hidden, 7, padding=3, bias=False)
        self.w2 = nn.Conv1d(hidden, dim, 7, padding=3, bias=False)

    def forward(self, x):                                       # (N, T, C) -> (N, T, D)
        x = F.silu(self.conv(x.transpose(1, 2)))                # (N, D, T): convolutions run over time
        return self.w2(F.silu(self.w1(x)) * self.w3(x)).transpose(1, 2)


class Tower(nn.Module):
    """What one tower has besides its blocks: prompt projection, timestep MLP, output head."""

    def __init__(self, cfg: OviConfig, out_dim: int):
        super().__init__()
        d = cfg.dim
        # Wan's init_weights draws the text and time embeddings' weights from N(0, 0.02), not Xavier. It matters
        # here: with Xavier weights (about 4x larger) AdamW pushed every hidden unit of the prompt projection far
        # below zero within ~600 steps, where GELU is flat, so both towers read the same vector for every caption
        # token and the caption was lost (docs/experiments.md, "the prompt projection died"); from N(0, 0.02)
        # it stays alive.
        self.text_proj = small_init(nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"),
                                                  nn.Linear(d, d)))
        self.time_embed = small_init(nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d)))
        self.time_proj = declare(nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d)), zero=True)  # adaLN-zero: gates 0
        self.head_norm = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, d))
        self.head = declare(nn.Linear(d, out_dim), zero=True)  # the model first predicts v = 0
        self.freq_dim = cfg.freq_dim

    def timestep(self, t):
        """(B,) flow time -> (emb, e), both fp32: emb (2B, D) is each row's timestep embedding (the head reads
        it), e (B, 2, 6, D) the modulation rows of (noisy content at t, clean references at 0). Computed with
        fp32 copies of the weights, as Wan does: under FSDP2 or a bf16 LoRA base the weights are bf16."""
        both = torch.stack([t.float(), torch.zeros_like(t, dtype=torch.float)], dim=1).flatten()  # (2B,)
        hidden = F.silu(linear32(timestep_features(both, self.freq_dim), self.time_embed[0]))
        emb = linear32(hidden, self.time_embed[2])                                  # (2B, D)
        e = linear32(F.silu(emb), self.time_proj[1])                                # (2B, 6D)
        return emb, e.unflatten(-1, (6, -1)).unflatten(0, (-1, 2))                  # (B, 2, 6, D)

    def output(self, x, emb, n):
        """Head on the content tokens only (references are dropped here, so never in the loss); in fp32,
        like Wan's Head (under `autocast(float32)`): the velocity is the loss's input."""
        # Wan's head: (1, 2, D) bias + the content tokens' timestep embedding -> shift, scale (B, D)
        shift, scale = (self.head_modulation.float() + emb.unflatten(0, (-1, 2))[:, :1]).unbind(1)
        y = self.head_norm(x[:, :n].float()) * (1 + scale[:, None]) + shift[:, None]
        return linear32(y, self.head)


# ------------------------------------------------------------------------------------------------
# The twin tower
# ------------------------------------------------------------------------------------------------


class TwinTower(nn.Module):
    """Ovi's twin tower over [content | references] token streams. Call `init_weights()` after building
    (build.build_model does), or fill it from a checkpoint (checkpoint.py)."""
    layer_class = TwinLayer            # presence.py swaps in its own

    def __init__(self, cfg: OviConfig, prompt: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.sp = None   # seqpar.apply: this rank computes 1/N of each tower's tokens (seqpar.SeqGroup)
        d = cfg.dim
        # the prompt side is ours (a toy encoder, or Omni-Customizer's ocf.PromptEncoder): never Ovi's weights
        self.prompt = declare(prompt if prompt is not None else Prompt(cfg), addition=True)
        self.video_stem = declare(nn.Linear(cfg.video_patch_dim, d), video=True)
        if cfg.audio_stem == "conv":
            self.audio_stem = ConvAudioStem(cfg.audio_channels, d, cfg.audio_stem_hidden)
        else:
            self.audio_stem = nn.Linear(cfg.audio_token_dim, d)
        if cfg.task_inputs:
            # RV2AV: masked source video (+ its mask channel); RA2V: driving audio. Zero-init: no-ops at start;
            # bias-free: a sample without the input (zeros) gets exactly nothing added
            source = cfg.video_patch_dim // cfg.video_channels * (cfg.video_channels + 1)
            self.source_embed = declare(nn.Linear(source, d, bias=False), addition=True, zero=True, video=True)
            self.driving_embed = declare(nn.Linear(cfg.audio_token_dim, d, bias=False), addition=True, zero=True)
        self.video_tower = declare(Tower(cfg, cfg.video_patch_dim), video=True)
        self.audio_tower = Tower(cfg, cfg.audio_token_dim)
        self.layers = nn.ModuleList(self.layer_class(cfg, i) for i in range(cfg.layers))
        self._rope_tables = {}  # (layout key) -> cos/sin tables: positions depend only on the shapes

    # --- initialisation ------------------------------------------------------------------------------
    def initial_value(self, name: str, module: nn.Module, p: torch.Tensor, seed: int) -> torch.Tensor:
        """The initial value of one parameter, full size, fp32 on the CPU:
        | parameter                                   | init                                          |
        | a module with its own `init_param` (LoRA)   | what it returns                               |
        | declared zero (time_proj, heads, the papers' residual paths), every bias | 0                |
        | norms                                       | weight 1, bias 0                              |
        | embeddings; Linear weights marked small_init | N(0, 0.02) (Wan's text / time embeddings)    |
        | Block.modulation, Tower.head_modulation     | N(0, 1/dim); the two gate rows 0 (adaLN-zero) |
        | every other Linear / Conv weight            | Xavier uniform                                |
        Each value is drawn from its own generator seeded by (seed, name), so it does not depend on
        the order parameters are built in, or on how FSDP shards them.
        """
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        shape = tuple(p.shape)
        leaf = name.rsplit(".", 1)[-1]
        own = getattr(module, "init_param", None)
        value = own(leaf, shape, gen) if own is not None else None
        if value is not None:
            return value
        zero = getattr(module, "zero_init", False)
        if zero is True or leaf == "bias" or (zero and leaf in zero):
            return torch.zeros(shape)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            return torch.ones(shape)
        if isinstance(module, nn.Embedding) or getattr(module, "init_std", None):
            return torch.randn(shape, generator=gen) * getattr(module, "init_std", 0.02)
        if leaf in ("modulation", "head_modulation"):
            value = torch.randn(shape, generator=gen) * self.cfg.dim ** -0.5
            if leaf == "modulation":
                value[:, [2, 5]] = 0                                            # the two gates
            return value
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            receptive = math.prod(shape[2:])
            bound = math.sqrt(6 / ((shape[0] + shape[1]) * receptive))          # Xavier uniform
            return (torch.rand(shape, generator=gen) * 2 - 1) * bound
        raise ValueError(f"no initialisation rule for {name} ({type(module).__name__})")

    @torch.no_grad()
    def init_weights(self, seed: int = 0, only=None):
        """Initialise every parameter (or those named in `only`), plain or FSDP2-sharded (each rank
        computes one full parameter at a time and keeps its rows)."""
        for mod_name, module in self.named_modules():
            for leaf, p in module.named_parameters(recurse=False):
                name = f"{mod_name}.{leaf}" if mod_name else leaf
                if only is None or name in only:
                    value = self.initial_value(name, module, p, seed)
                    copy_rows(p, lambda a, b, v=value: v[a:b])

    def declared(self, role: str) -> list[str]:
        """The parameters whose module declared `role` (addition | video_side): see `declare`."""
        return [f"{m}.{leaf}" if m else leaf for m, module in self.named_modules() if getattr(module, role, False)
                for leaf, _ in module.named_parameters(recurse=False)]

    def is_addition(self, name: str) -> bool:
        """A parameter Ovi does not have: the prompt side, task inputs, and every paper's own modules."""
        return getattr(self.get_submodule(name.rpartition(".")[0]), "addition", False)

    # --- patchify: pixels / latents <-> tokens -----------------------------------------------------
    def patchify_video(self, x):
        """(B, T, C, H, W) -> (B, T'*H'*W', pt*ph*pw*C) tokens in t-major order."""
        c = self.cfg
        B, T, C, H, W = x.shape
        x = x.reshape(B, T // c.patch_t, c.patch_t, C, H // c.patch_h, c.patch_h, W // c.patch_w, c.patch_w)
        return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(B, -1, c.patch_t * c.patch_h * c.patch_w * C)

    def unpatchify_video(self, tokens, shape):
        """(B, T'*H'*W', pt*ph*pw*C) -> (B, T, C, H, W): the inverse of patchify_video."""
        c = self.cfg
        B, T, C, H, W = shape
        x = tokens.reshape(B, T // c.patch_t, H // c.patch_h, W // c.patch_w, c.patch_t, c.patch_h, c.patch_w, C)
        return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(B, T, C, H, W)

    def patchify_audio(self, x):
        """(B, T_a, C) -> (B, T_a / p, p*C)."""
        return x.reshape(x.shape[0], x.shape[1] // self.cfg.audio_patch, -1)

    def embed_audio(self, x):
        return self.audio_stem(self.patchify_audio(x))      # the conv stem reads one frame a token (audio_patch 1)

    def video_grid(self, shape):
        c = self.cfg
        return shape[-4] // c.patch_t, shape[-2] // c.patch_h, shape[-1] // c.patch_w  # (B, T, C, H, W)

    # --- the two token streams -----------------------------------------------------------------------
    def reference_tokens(self, ref, B: int, K: int, tower: str):
        """(B*K, m, D) tokens of each reference -> (B, K*m, D), subject k's after subject k-1's. presence.py and
        motion.py add their embeddings here."""
        return ref.unflatten(0, (B, K)).flatten(1, 2)

    def audio_tokens(self, audio, cond: Conditioning, references: bool = True):
        """[content | reference voices]: tokens (B, S_a, D), key mask (B, S_a), n content, T_r per voice.
        references=False (presence's IdentityCache): the voices' tokens are left out, their mask kept."""
        a = self.embed_audio(audio)                                                # (B, n_a, D)
        if cond.driving_audio is not None and self.cfg.task_inputs:               # RA2V
            a = a + self.driving_embed(self.patchify_audio(cond.driving_audio))
        B, n_a, K = a.shape[0], a.shape[1], cond.subjects
        mask = torch.ones(B, n_a, dtype=torch.bool, device=a.device)
        if K == 0:
            return a, mask, n_a, 0
        T_r = cond.ref_audio.shape[2] // self.cfg.audio_patch
        mask = torch.cat([mask, cond.voice_mask.repeat_interleave(T_r, dim=1)], dim=1)
        if not references:
            return a, mask, n_a, T_r
        ref = self.embed_audio(cond.ref_audio.flatten(0, 1))                       # (B*K, T_r, D)
        return torch.cat([a, self.reference_tokens(ref, B, K, "audio")], dim=1), mask, n_a, T_r  # (B, n_a + K*T_r, D)

    def video_tokens(self, video, cond: Conditioning, references: bool = True):
        """[content | one clean latent frame per reference image]: tokens (B, S_v, D), key mask, n content,
        the reference grid (h', w'). references: as audio_tokens."""
        c = self.cfg
        v = self.video_stem(self.patchify_video(video))                            # (B, T'H'W', D)
        if cond.source_video is not None and c.task_inputs:                        # RV2AV
            v = v + self.source_embed(self.patchify_video(cond.source_video))
        B, n_v, K = v.shape[0], v.shape[1], cond.subjects
        mask = torch.ones(B, n_v, dtype=torch.bool, device=v.device)
        if K == 0:
            return v, mask, n_v, (0, 0)
        ref_hw = (cond.ref_images.shape[-2] // c.patch_h, cond.ref_images.shape[-1] // c.patch_w)
        mask = torch.cat([mask, cond.image_mask.repeat_interleave(ref_hw[0] * ref_hw[1], dim=1)], dim=1)
        if not references:
            return v, mask, n_v, ref_hw
        # a still image becomes one latent frame: repeat it over the temporal patch
        frames = cond.ref_images.flatten(0, 1)[:, None].expand(-1, c.patch_t, -1, -1, -1)  # (B*K, pt, C, h, w)
        ref = self.video_stem(self.patchify_video(frames))                         # (B*K, h'w', D)
        return torch.cat([v, self.reference_tokens(ref, B, K, "video")], dim=1), mask, n_v, ref_hw  # (B, n_v + K*h'w', D)

    def reference_positions(self, K: int, frames: int, ref_hw, n_a: int, T_r: int):
        """Positions of the K reference images (K*h'*w', 3) and voices (K*T_r, 3): `--ref_rope`'s layout."""
        return rope.reference_positions(self.cfg.ref_rope, K, frames, *ref_hw, n_a, T_r, self.cfg.audio_scale,
                                        self.cfg.syn_margin)

    def rope_tables(self, grid, K, ref_hw, n_a, T_r, device):
        """cos/sin (1, S, pairs) of the video stream (None without video) and the audio stream: content
        grids, then the references' layout (rope.py). A function of the shapes only, so cached."""
        key = (grid, K, ref_hw, n_a, T_r, str(device))
        if key not in self._rope_tables:
            c = self.cfg
            ref_v, ref_a = self.reference_positions(K, grid[0] if grid else 0, ref_hw, n_a, T_r)
            pos_a = torch.cat([rope.audio_positions(n_a, c.audio_scale), ref_a])
            pos_v = torch.cat([rope.video_positions(*grid), ref_v])[None] if grid else None    # (1, S_v, 3)
            tables = lambda pos: rope.cos_sin(pos.to(device), c.head_dim, c.rope_theta)  # noqa: E731 (1, S, pairs)
            self._rope_tables[key] = (tables(pos_v) if grid else None, tables(pos_a[None]))
        return self._rope_tables[key]

    # --- the forward pass ----------------------------------------------------------------------------
    def forward(self, video, audio, t, cond: Conditioning, skip_layer: int = -1, skip_rows=None):
        """Predict the flow velocity of both streams.

        Args:
            video: (B, T, C, H, W) noisy video, or None for an audio-only step.
            audio: (B, T_a, C_a) noisy audio (mel frames or latents), or None for a video-only step.
            t: (B,) flow time in [0, 1] (1 = pure noise).
            cond: the Conditioning (prompt, references and their masks, task inputs; I2AV's first frame).
            skip_layer, skip_rows: Ovi's skip-layer guidance -- the samples flagged in skip_rows (B,) bool skip
                TwinLayer skip_layer (both towers' block), as Ovi's negative pass skips its slg_layer.
        Returns: (video velocity like `video` or None, audio velocity like `audio` or None).
        """
        v, a, ctx = self.prepare(video, audio, t, cond)
        for i, layer in enumerate(self.layers):
            if i == skip_layer and skip_rows is not None:  # skip-layer guidance: these rows pass the layer by
                keep = skip_rows.view(-1, 1, 1)                 # (B, 1, 1): True keeps the layer's input
                v_new, a_new = layer(v, a, ctx)
                v = None if v is None else torch.where(keep, v, v_new)
                a = None if a is None else torch.where(keep, a, a_new)
            else:
                v, a = layer(v, a, ctx)
        return self.outputs(v, a, ctx, video, audio)

    def prepare(self, video, audio, t, cond: Conditioning, references: bool = True):
        """The token streams and the LayerContext every layer reads (references: as audio_tokens)."""
        prompt = self.prompt(cond)                                                 # (B, L, text_dim)
        a = mask_a = v = mask_v = grid = None
        n_a = T_r = n_v = 0
        ref_hw = (0, 0)
        if audio is not None:
            a, mask_a, n_a, T_r = self.audio_tokens(audio, cond, references)
        if video is not None:
            v, mask_v, n_v, ref_hw = self.video_tokens(video, cond, references)
            grid = self.video_grid(video.shape)
        device = (audio if audio is not None else video).device
        rope_v, rope_a = self.rope_tables(grid, cond.subjects, ref_hw, n_a, T_r, device)
        mask_v, mask_a, text_mask = self.needed_masks(cond, mask_v, mask_a)
        if self.sp is not None:  # sequence parallel: this rank's slice of each stream; masks stay whole (keys)
            if a is not None:
                a, mask_a, rope_a, n_a = self.sp.shard_stream(a, mask_a, rope_a, n_a)
            if v is not None:
                v, mask_v, rope_v, n_v = self.sp.shard_stream(v, mask_v, rope_v, n_v)
        A = V = None
        if audio is not None:
            emb_a, e_a = self.audio_tower.timestep(t)
            # Ovi's negative pass gives the audio tower its own negative prompt (cond.text_audio)
            prompt_a = prompt if cond.text_audio is None else self.prompt(dataclasses.replace(cond, text=cond.text_audio))
            A = TowerInputs(e_a, emb_a, n_a, mask_a, rope_a, self.audio_tower.text_proj(prompt_a))
        if video is not None:
            emb_v, e_v = self.video_tower.timestep(t)
            clean = math.prod(grid[1:]) if cond.first_frame is not None else 0   # I2AV: one latent frame's tokens
            V = TowerInputs(e_v, emb_v, n_v, mask_v, rope_v, self.video_tower.text_proj(prompt), clean)
        return v, a, LayerContext(V, A, text_mask)

    def needed_masks(self, cond: Conditioning, mask_v, mask_a):
        """The key masks attention must apply: None where every key is real, so SDPA may choose its flash kernel
        (any mask forces the slower memory-efficient one). Decided from cond.full, known on the host, so no
        device sync; sequence parallel's padding keeps its masks."""
        K, full = cond.subjects, cond.full
        text_mask = None if "text_mask" in full else cond.text_mask
        if self.sp is not None:  # the padding of each rank's slice is masked
            return mask_v, mask_a, text_mask
        video_full = K == 0 or "image_mask" in full
        return None if video_full else mask_v, None if K == 0 or "voice_mask" in full else mask_a, text_mask


    def head(self, tower: Tower, x, io: TowerInputs, n: int):
        """A tower's head on its n content tokens; under sequence parallel on every local token, gathered."""
        if self.sp is None:
            return tower.output(x, io.emb, n)
        return self.sp.gather(tower.output(x, io.emb, x.shape[1]))[:, :n]

    def outputs(self, v, a, ctx: LayerContext, video, audio):
        """Heads on the content tokens, back to the inputs' shapes (the references' predictions are dropped)."""
        audio_out = None
        if audio is not None:
            n_a = audio.shape[1] // self.cfg.audio_patch
            audio_out = self.head(self.audio_tower, a, ctx.audio, n_a).reshape(audio.shape)  # (B, n_a, p*C_a) -> audio
        if video is None:
            return None, audio_out
        video_tokens = self.head(self.video_tower, v, ctx.video, math.prod(self.video_grid(video.shape)))
        return self.unpatchify_video(video_tokens, video.shape), audio_out          # (B, T'H'W', pt*ph*pw*C) -> video
