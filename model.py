"""The twin-tower DiT (Ovi's backbone) that every paper here starts from, at toy, small and full size.

Two towers with identical blocks, one denoising video tokens, one denoising audio tokens, read the
same prompt and each other (Ovi's paper and released model code; DreamID-Omni and Omni-Customizer
Sec. 4.1, Eq. 1):

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

References (DreamID-Omni / Omni-Customizer Eq. 1): reference image k is one clean latent frame and
reference voice k a clean audio clip, embedded by the towers' own stems and appended to the noisy
sequences; their positions come from rope.py (`ref_rope` plain | syn); absent or dropped references
are masked out of every attention (conditioning.py); predictions for them are dropped, so they never
enter the loss. DreamID-Omni's task inputs (RV2AV source video, RA2V driving audio) are added to the
content tokens through zero-initialised projections, so the architecture does not change between tasks.

Weights: `init_weights` draws every parameter from its own seeded generator, plain or FSDP2-sharded
(`copy_rows`); checkpoint.py reads ours and Ovi's released safetensors into the same parameters.

`python model.py` prints every preset's parameter count (the `full` backbone counts exactly Ovi's
11,660,753,108) and training FLOPs per sample.
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

import lora
import ocf
import rope
import seqpar
from attention import attention, key_padding
from conditioning import Conditioning
from precision import LayerNorm32, RMSNorm32, linear32


@dataclass
class ModelConfig:
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
    audio_patch: int = 2           # audio frames per token
    audio_stem: str = "linear"     # linear | conv (Ovi: Conv1d k7 + SiLU + convolutional SwiGLU k7)
    audio_stem_hidden: int = 0     # hidden width of the convolutional SwiGLU (Ovi: 8192)
    audio_scale: float = 1 / 16    # RoPE: video latent frames per audio token (toy 2 / 32; Ovi 0.19676)
    # prompt: (toy) a small character transformer; (full) precomputed umT5 embeddings (4096-d)
    text_dim: int = 128            # prompt feature width (umT5-XXL: 4096)
    text_layers: int = 2           # layers of the toy text encoder; 0 = text arrives as precomputed features
    text_heads: int = 4            # heads of the toy text encoder
    text_vocab: int = 40           # the toy tokenizer's size, len(data.VOCAB) (tests/test_data.py checks it)
    phoneme_vocab: int = 19        # phoneme ids incl. padding and word gap, speech.N_PHONEME_IDS (checked too)
    # identity binding on the prompt side (Omni-Customizer Sec. 4.2; defaults as in the paper)
    ocf: bool = True               # Omni-Context Fusion of [text, ref images, ref voices, phonemes]
    ocf_rope: str = "sa_mrope"     # sa_mrope | 1d: positions of the OCF sequence
    mtp_ca: bool = True            # masked TTS-to-prompt cross-attention
    ocf_dim: int = 0               # width of OCF / MTP-CA / phoneme encoder (0 = text_dim)
    ocf_layers: int = 2            # transformer blocks of OCF
    ocf_heads: int = 4             # heads of OCF and MTP-CA
    phoneme_layers: int = 2        # ConvNeXt-V2 blocks of the phoneme encoder (F5-TTS: 4)
    sa_mrope_phoneme_w: float = -1.0  # the distinct last coordinate of phoneme tokens (Eq. 4)
    # references and task inputs
    ref_rope: str = "plain"        # plain | syn (Syn-RoPE, DreamID-Omni): where reference tokens sit
    syn_margin: float = 150.0      # Syn-RoPE's temporal margin between identities
    task_inputs: bool = True       # RV2AV source video / RA2V driving audio projections (zero-init)
    input_skip: bool = False       # toy: an identity-initialised linear map from each input token to its output
    precond: str = "none"          # none (Ovi: the net's output is the velocity) | edm: c_skip(t) x_t + c_out(t) net
    sigma_video: float = 0.4       # precond=edm: the video data's standard deviation (toy pixels: 0.39-0.41)
    sigma_audio: float = 1.0       # precond=edm: the audio data's standard deviation (normalised log-mel: 1.0)
    # how references enter (Identity-as-Presence Sec. 3 / Fig. 3 against the concatenation of the others)
    ref_mode: str = "concat"       # concat: extra tokens of the content sequence | presence: a separate identity stream
    identity_embed: bool = True    # presence: a learned embedding per subject slot on identity tokens (its Fig. 5)
    decouple_video: bool = True    # presence: the video identity stream has its own weights (the release)
    decouple_audio: bool = False   # presence: the audio identity stream too (ours; the release decouples video)
    voice_offset: float = 256.0    # presence: audio-token position of the first reference voice (release: 630)
    # LoRA (lora.py): low-rank adapters on the backbone's linear layers, the backbone frozen
    lora_rank: int = 0             # 0 = no adapters (full fine-tuning)
    lora_alpha: float = 0.0        # the update is scaled by alpha / rank (0 = rank: scale 1)
    lora_targets: str = "self,cross,fusion,ffn"  # which linear layers: any of self, cross, fusion, ffn
    # DreamVideo-Omni's motion control (video tower): each subject's box, bound to its reference
    motion: bool = False           # box conditions injected into the video tower
    box_injection: str = "hierarchical"  # hierarchical: Z_in at the input and Z_l after every block | input: Z_in only
    group_embed: bool = True       # group embeddings bind reference k to box k (off: boxes carry the role alone)
    max_groups: int = 20           # the group table's size (the release: 20 ids)

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
    # Ovi's size and layout (its released code): 3072 x 30 layers x 24 heads, FFN 14336, over Wan2.2 VAE
    # latents (48 ch, patch 1x2x2), MMAudio VAE latents (20 ch, conv stem) and umT5-XXL features (4096-d).
    # audio_scale is the literal of Ovi's config (31 / 157.55 = 0.1967629 would drift 1.3e-3 rad by token 157).
    "full": ModelConfig(dim=3072, layers=30, heads=24, ffn=14336, video_channels=48, patch_t=1, patch_h=2,
                        patch_w=2, audio_channels=20, audio_patch=1, audio_stem="conv", audio_stem_hidden=8192,
                        audio_scale=0.19676, text_dim=4096, text_layers=0, task_inputs=False,
                        ocf_dim=1024, ocf_heads=16, phoneme_layers=4, voice_offset=630.0),
}


CHOICES = {"audio_stem": ("linear", "conv"), "ocf_rope": ("sa_mrope", "1d"), "ref_rope": ("plain", "syn", "condition"),
           "precond": ("none", "edm"), "ref_mode": ("concat", "presence"), "box_injection": ("hierarchical", "input")}


def config_problems(cfg: ModelConfig) -> list[str]:
    """Every field value that cannot build a model, one line each, named as its command-line flag."""
    problems = []
    for name in ("dim", "layers", "heads", "ffn", "freq_dim", "video_channels", "patch_t", "patch_h", "patch_w",
                 "audio_channels", "audio_patch", "text_dim", "text_vocab", "phoneme_vocab", "ocf_heads"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("text_layers", "ocf_layers", "phoneme_layers", "ocf_dim", "audio_stem_hidden"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("eps", "rope_theta", "sigma_video", "sigma_audio", "audio_scale"):
        if not getattr(cfg, name) > 0:
            problems.append(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            problems.append(f"--{name} must be one of {' | '.join(allowed)}, got {getattr(cfg, name)!r}")
    # RoPE rotates pairs of a head's channels, split over (t, h, w): a head needs an even width of 6 or more
    if cfg.heads >= 1 and (cfg.dim % cfg.heads or cfg.head_dim % 2 or cfg.head_dim < 6):
        problems.append(f"--heads {cfg.heads} must divide --dim {cfg.dim} into an even head width of 6 or more "
                        "(RoPE rotates pairs over t, h, w)")
    if cfg.ocf_heads >= 1 and cfg.fusion_dim % cfg.ocf_heads:
        problems.append(f"--ocf_heads {cfg.ocf_heads} must divide the fusion width {cfg.fusion_dim} (--ocf_dim or --text_dim)")
    if cfg.lora_rank < 0 or cfg.lora_alpha < 0:
        problems.append(f"--lora_rank and --lora_alpha must be 0 or more, got {cfg.lora_rank}, {cfg.lora_alpha}")
    unknown = [t for t in cfg.lora_targets.split(",") if t.strip() not in lora.TARGETS]
    if unknown or not cfg.lora_targets.strip():
        problems.append(f"--lora_targets takes some of {','.join(lora.TARGETS)}, got {cfg.lora_targets!r}")
    if cfg.motion and cfg.ref_mode == "presence":  # presence reads every token after the content as identity
        problems.append("--motion works with --ref_mode concat (trajectory tokens would join the identity stream)")
    if cfg.ref_mode == "presence" and cfg.ref_rope != "plain":  # presence places its identity tokens itself
        problems.append("--ref_mode presence has its own identity positions; leave --ref_rope plain")
    if cfg.text_layers and cfg.text_heads >= 1 and cfg.text_dim % cfg.text_heads:
        problems.append(f"--text_heads {cfg.text_heads} must divide --text_dim {cfg.text_dim}")
    return problems
OVI_PARAMETERS = 11_660_753_108
# ours, not Ovi's backbone: the prompt side (toy text encoder, phoneme encoder, OCF, MTP-CA), task inputs,
# the toy's input skip
ADDITION_PREFIXES = ("prompt.", "source_embed.", "driving_embed.", "video_skip.", "audio_skip.",
                     "video_identity_embed.", "audio_identity_embed.", "group_embed.", "role_embed.", "role_proj.",
                     "box_in.", "box_layers.", "ref_bind.", "point_embed.")


def is_addition(name: str) -> bool:
    """A parameter Ovi does not have: our prompt side, task inputs, and the presence identity stream."""
    return name.startswith(ADDITION_PREFIXES) or ".identity." in name


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


def precondition(raw: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
    """EDM's preconditioning (Karras et al. 2022, Sec. 5 / Table 1) carried over to rectified-flow velocity:
    v_hat = c_skip(t) x_t + c_out(t) raw.

    With x_t = (1 - t) x0 + t n, data of std sigma and v = n - x0, c_skip is the least-squares coefficient of v
    on x_t, Cov(v, x_t) / Var(x_t) = (t - (1 - t) sigma^2) / A with A = (1 - t)^2 sigma^2 + t^2, and c_out the
    standard deviation of what is left, sqrt(Var(v) - c_skip^2 A) = sigma / sqrt(A). The network then predicts
    a unit-variance residual at every t: near t = 1 the skip carries the noise to the output (c_skip -> 1),
    which a narrow toy tower cannot do well by itself (its patch tokens hold 192 numbers at width 192).
    The loss stays Ovi's MSE on v. EDM's c_in is left out: the stems feed pre-norm blocks, and references and
    task inputs share the stems unscaled. Computed in fp32."""
    tt = t.float().view(-1, *([1] * (x_t.dim() - 1)))                              # (B, 1, ...) broadcasts
    A = (1 - tt) ** 2 * sigma ** 2 + tt ** 2
    c_skip = (tt - (1 - tt) * sigma ** 2) / A
    c_out = sigma / A.sqrt()
    return (c_skip * x_t.float() + c_out * raw.float()).to(raw.dtype)


def modulate(x, shift, scale, n_content):
    """adaLN in fp32: content tokens [:n] use the noisy-t row of (B, 2, D) shift/scale, refs the clean one."""
    x32 = x.float()
    out = torch.cat([x32[:, :n_content] * (1 + scale[:, :1]) + shift[:, :1],
                     x32[:, n_content:] * (1 + scale[:, 1:]) + shift[:, 1:]], dim=1)
    return out.to(x.dtype)


def gate(y, g, n_content):
    """Per-segment gate of a residual branch: y (B, S, D) times the fp32 gate g (B, 2, D), in fp32 (Wan:
    `x = x + y * e[2]`), so adding it promotes the residual stream to fp32 under bf16 autocast."""
    y32 = y.float()
    return torch.cat([y32[:, :n_content] * g[:, :1], y32[:, n_content:] * g[:, 1:]], dim=1)


class Heads:
    """What reading keys needs (mixed into SelfAttention and IdentityKeys): split heads, rotated keys."""

    def split(self, x):  # (B, S, D) -> (B, H, S, hd)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, x, cos, sin):
        """(k rotated, v), each (B, H, S, hd)."""
        return rope.apply_rope(self.split(self.norm_k(self.k(x))), cos, sin), self.split(self.v(x))


class SelfAttention(Heads, nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm32(d, eps=cfg.eps), RMSNorm32(d, eps=cfg.eps)

    def queries(self, x, cos, sin):
        return rope.apply_rope(self.split(self.norm_q(self.q(x))), cos, sin)     # (B, H, S, hd)

    def out(self, y):  # (B, H, S, hd) -> (B, S, D)
        return self.o(y.transpose(1, 2).flatten(2))

    def forward(self, x, cos, sin, key_mask, sp=None):
        """x (B, S, D); with sp (seqpar.py) x is this rank's 1/N of the tokens, and the attention sees all."""
        q, (k, v) = self.queries(x, cos, sin), self.keys_values(x, cos, sin)
        if sp is None:
            return self.out(attention(q, k, v, key_padding(key_mask)))
        y = attention(seqpar.seq_to_heads(q, sp), seqpar.seq_to_heads(k, sp), seqpar.seq_to_heads(v, sp),
                      key_padding(key_mask))                                   # (B, H/N, S, hd): whole sequence
        return self.out(seqpar.heads_to_seq(y, sp))


class CrossAttention(SelfAttention):
    """attn(q, text) + attn(rope(q), rope(k_fusion(LN(other)))): Ovi's cross sublayer with the fusion keys.

    The same q/k/v/o and norms as self-attention (k, v read the text), plus the other tower's own
    LayerNorm, k/v and k-norm (the parameter names are Ovi's)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.dim
        # the other tower's keys and values: the "fusion" weights (1.13B of Ovi's 11.7B)
        self.pre_attn_norm_fusion = LayerNorm32(d, eps=cfg.eps)   # affine, on the other tower's tokens
        self.k_fusion, self.v_fusion = nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k_fusion = RMSNorm32(d, eps=cfg.eps)

    def forward(self, x, text, text_mask, other, other_mask, rope_self, rope_other, sp=None):
        q = self.split(self.norm_q(self.q(x)))                                     # (B, H, S, hd)
        k_text, v_text = self.split(self.norm_k(self.k(text))), self.split(self.v(text))
        # sequence parallel: attend with this rank's heads over all tokens; the prompt is replicated
        to_heads = (lambda t: t) if sp is None else (lambda t: seqpar.seq_to_heads(t, sp))  # noqa: E731
        if sp is not None:
            k_text, v_text = k_text[:, sp.heads(self.heads)], v_text[:, sp.heads(self.heads)]
        # Ovi does not mask its zero-padded umT5 features (512 tokens, context lengths None); we mask
        # padding, so a prompt's meaning does not depend on how far it was padded
        out = attention(to_heads(q), k_text, v_text, key_padding(text_mask))
        if other is not None:  # absent in an audio-only step: the cross-tower pathway is inactive
            other = self.pre_attn_norm_fusion(other)
            k = rope.apply_rope(self.split(self.norm_k_fusion(self.k_fusion(other))), *rope_other)
            out = out + attention(to_heads(rope.apply_rope(q, *rope_self)), to_heads(k),
                                  to_heads(self.split(self.v_fusion(other))), key_padding(other_mask))
        if sp is not None:
            out = seqpar.heads_to_seq(out, sp)                                     # (B, H, S/N, hd)
        return self.o(out.transpose(1, 2).flatten(2))


class IdentityKeys(Heads, nn.Module):
    """The last layer's identity stream: it is only read (its keys and values), never updated -- nothing
    after the last layer reads identity tokens -- so it has no q, o or FFN to train."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.k, self.v = nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k = RMSNorm32(d, eps=cfg.eps)


class IdentityStream(nn.Module):
    """Identity-as-Presence's decoupled parameters of one tower's identity tokens: their own q/k/v/o and
    q/k norms, FFN and modulation bias (the release decouples the video tower's). Initialised as copies of
    the content weights (TwinTower.init_weights), so training starts from the shared-weight model."""

    def __init__(self, cfg: ModelConfig, last: bool):
        super().__init__()
        d = cfg.dim
        self.self_attn = IdentityKeys(cfg) if last else SelfAttention(cfg)
        if not last:
            self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn, d))
        self.modulation = nn.Parameter(torch.zeros(1, 2 if last else 6, d))  # keys need only shift/scale


class Block(nn.Module):
    """One tower's layer: modulated self-attention, (unmodulated) cross-attention, modulated FFN.

    With ref_mode "presence" the tokens are [content (n) | identity] and the self-attention is
    asymmetric (Identity-as-Presence): content queries read [content, identity] keys, identity queries
    only their own subject's identity keys; identity tokens skip the text and cross-tower attention.
    """

    def __init__(self, cfg: ModelConfig, decoupled: bool = False, last: bool = False):
        super().__init__()
        d = cfg.dim
        self.last = last
        if cfg.ref_mode == "presence" and decoupled:
            self.identity = IdentityStream(cfg, last)
        self.norm1 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = LayerNorm32(d, eps=cfg.eps)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn, d))
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))   # per-block bias on the shared timestep MLP

    def mod(self, e):  # e (B, 2, 6, D) fp32 -> six (B, 2, D): shift/scale/gate for attention and FFN
        return (e + self.modulation.float()[:, None]).unbind(2)

    def self_part(self, x, e, rope_cs, key_mask, n, sp=None):
        shift, scale, g, _, _, _ = self.mod(e)
        return x + gate(self.self_attn(modulate(self.norm1(x), shift, scale, n), *rope_cs, key_mask, sp), g, n)

    def ffn_part(self, x, e, n):
        _, _, _, shift, scale, g = self.mod(e)
        return x + gate(self.ffn(modulate(self.norm2(x), shift, scale, n)), g, n)

    # --- Identity-as-Presence ----------------------------------------------------------------------
    def identity_weights(self):
        """The identity stream's weights: its own (decoupled) or the content's (shared)."""
        return getattr(self, "identity", self)

    def identity_mod(self, e):
        """(B, rows, D) fp32: the t = 0 modulation row plus the identity stream's own bias."""
        bias = self.identity_weights().modulation.float()[0]
        return e[:, 1, : bias.shape[0]] + bias

    def presence_self_part(self, x, e, rope_cs, key_mask, n, subjects, kv=None):
        """x = [content (n) | identity of `subjects` subjects], or content only when `kv`, this layer's
        identity keys/values from an IdentityCache, is given. Returns (x, identity (k, v))."""
        cos, sin = rope_cs
        shift, scale, g, _, _, _ = self.mod(e)                           # row 0 of each: the content's t
        content = x[:, :n]
        h = modulate(self.norm1(content), shift, scale, n)
        k, v = self.self_attn.keys_values(h, cos[:, :n], sin[:, :n])     # (B, H, n, hd)
        if kv is None:
            identity, kv = self.identity_self_part(x[:, n:], e, cos[:, n:], sin[:, n:], subjects)
        else:
            identity = x[:, n:]                                          # (B, 0, D): the cache holds it
        y = attention(self.self_attn.queries(h, cos[:, :n], sin[:, :n]), torch.cat([k, kv[0]], 2),
                      torch.cat([v, kv[1]], 2), key_padding(key_mask))  # content reads [content, identity]
        return torch.cat([content + gate(self.self_attn.out(y), g, n), identity], 1), kv

    def identity_self_part(self, ident, e, cos, sin, subjects):
        """Identity tokens (B, K*m, D) read only their own subject's identity tokens (never the content,
        never another subject: a subject's identity does not depend on who else is in the scene). Returns
        (updated identity, its (k, v) (B, H, K*m, hd) for the content to read)."""
        w, mod = self.identity_weights(), self.identity_mod(e)
        h = (self.norm1(ident).float() * (1 + mod[:, 1:2]) + mod[:, 0:1]).to(ident.dtype)
        kv = w.self_attn.keys_values(h, cos, sin)
        if self.last or subjects == 0:  # nothing reads identity tokens after the last layer
            return ident, kv
        # (B, H, K*m, hd) -> (B*K, H, m, hd): one attention per subject, no mask needed
        per_subject = lambda t: t.unflatten(2, (subjects, -1)).transpose(1, 2).flatten(0, 1)  # noqa: E731
        y = attention(per_subject(w.self_attn.queries(h, cos, sin)), per_subject(kv[0]), per_subject(kv[1]))
        y = y.unflatten(0, (-1, subjects)).transpose(1, 2).flatten(2, 3)                    # (B, H, K*m, hd)
        return ident + w.self_attn.out(y).float() * mod[:, 2:3], kv       # fp32 gate, as gate()

    def identity_ffn_part(self, ident, e):
        if self.last or ident.shape[1] == 0:
            return ident
        w, mod = self.identity_weights(), self.identity_mod(e)
        h = (self.norm2(ident).float() * (1 + mod[:, 4:5]) + mod[:, 3:4]).to(ident.dtype)
        return ident + w.ffn(h).float() * mod[:, 5:6]


class TwinLayer(nn.Module):
    """Layer i of both towers: the unit of activation checkpointing, compile and FSDP sharding."""

    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        self.index, self.presence = index, cfg.ref_mode == "presence"
        self.grad_ckpt = False  # train.py --grad_ckpt: recompute this layer in the backward
        last = index == cfg.layers - 1
        self.video = Block(cfg, cfg.decouple_video, last)
        self.audio = Block(cfg, cfg.decouple_audio, last)

    def forward(self, v, a, ctx: dict):
        """Activation checkpointing lives *inside* the layer (torchtitan's order: checkpoint, then compile,
        then FSDP2's fully_shard around it): FSDP2 gathers the weights before this runs, in the forward and
        again before the recompute in the backward, and the recompute sees exactly the forward's inputs."""
        if self.grad_ckpt and self.training:
            return torch.utils.checkpoint.checkpoint(self.layer, v, a, ctx, use_reentrant=False)
        return self.layer(v, a, ctx)

    def layer(self, v, a, ctx: dict):
        if self.presence:
            return self.forward_presence(v, a, ctx)
        sp = ctx["sp"]  # sequence parallel (seqpar.py): v, a are this rank's slices; masks and attention whole
        if v is not None:
            v = self.video.self_part(v, ctx["e_v"], ctx["rope_v"], ctx["mask_v"], ctx["n_v"], sp)
        a = self.audio.self_part(a, ctx["e_a"], ctx["rope_a"], ctx["mask_a"], ctx["n_a"], sp)
        # both towers read the other's post-self-attention state: compute both before updating either
        a_new = a + self.audio.cross_attn(self.audio.norm3(a), ctx["text_a"], ctx["text_mask"], v,
                                          ctx["mask_v"], ctx["rope_a"], ctx["rope_v"], sp)
        if v is not None:
            v = v + self.video.cross_attn(self.video.norm3(v), ctx["text_v"], ctx["text_mask"], a,
                                          ctx["mask_a"], ctx["rope_v"], ctx["rope_a"], sp)
            v = self.video.ffn_part(v, ctx["e_v"], ctx["n_v"])
        return v, self.audio.ffn_part(a_new, ctx["e_a"], ctx["n_a"])

    def forward_presence(self, v, a, ctx: dict):
        """Identity-as-Presence: asymmetric self-attention, then text / cross-tower attention and the FFN of
        the content; identity tokens go through their own FFN. With a filled IdentityCache the identity
        tokens are absent and their keys/values come from the cache."""
        cache, n_v, n_a, K = ctx["cache"], ctx["n_v"], ctx["n_a"], ctx["subjects"]
        cached = cache.layers[self.index] if cache is not None and cache.filled else (None, None)
        kv_v = None
        if v is not None:
            v, kv_v = self.video.presence_self_part(v, ctx["e_v"], ctx["rope_v"], ctx["mask_v"], n_v, K, cached[0])
        a, kv_a = self.audio.presence_self_part(a, ctx["e_a"], ctx["rope_a"], ctx["mask_a"], n_a, K, cached[1])
        if cache is not None and not cache.filled:
            cache.layers[self.index] = (kv_v, kv_a)
        content = lambda rope_cs, n: tuple(x[:, :n] for x in rope_cs)  # noqa: E731  (content positions only)
        rope_a = content(ctx["rope_a"], n_a)
        v_c, a_c = (v[:, :n_v] if v is not None else None), a[:, :n_a]
        # the other tower's content tokens are all real: no key mask
        a_new = a_c + self.audio.cross_attn(self.audio.norm3(a_c), ctx["text_a"], ctx["text_mask"], v_c, None, rope_a,
                                            None if v is None else content(ctx["rope_v"], n_v))
        if v is not None:
            v_c = v_c + self.video.cross_attn(self.video.norm3(v_c), ctx["text_v"], ctx["text_mask"], a_c, None,
                                              content(ctx["rope_v"], n_v), rope_a)
            v = torch.cat([self.video.ffn_part(v_c, ctx["e_v"], n_v),
                           self.video.identity_ffn_part(v[:, n_v:], ctx["e_v"])], 1)
        return v, torch.cat([self.audio.ffn_part(a_new, ctx["e_a"], n_a),
                             self.audio.identity_ffn_part(a[:, n_a:], ctx["e_a"])], 1)


class IdentityCache:
    """Identity-as-Presence at sampling time: identity tokens read only themselves and always sit at t = 0,
    so their keys and values in every layer are the same at every sampling step (and in every guidance
    pass, which are batched). The first forward of a clip fills this; later ones skip the identity
    tokens and read their keys and values from here."""

    def __init__(self):
        self.layers, self.filled = {}, False   # layer index -> (video (k, v) or None, audio (k, v))


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

    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        d = cfg.dim
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.head_norm = LayerNorm32(d, eps=cfg.eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, d))
        self.head = nn.Linear(d, out_dim)
        self.freq_dim = cfg.freq_dim

    def timestep(self, t):
        """(B,) flow time -> (emb (2B, D), e (B, 2, 6, D)), both fp32: each row's timestep embedding (the head
        reads it) and the modulation rows of (noisy content at t, clean references at 0). Computed in fp32 with
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
# Parameters whose initial value is exactly zero (by name prefix): they make the new paths no-ops at start
ZERO_INIT = ("video_tower.time_proj.", "audio_tower.time_proj.",  # gates start at exactly 0 (adaLN-zero)
             "video_tower.head.", "audio_tower.head.",            # the model first predicts v = 0
             "source_embed.", "driving_embed.",                   # task inputs start as no-ops
             "prompt.ocf.back.", "prompt.mtp_ca.o.",              # OCF and MTP-CA start as the identity
             "video_identity_embed.", "audio_identity_embed.",    # presence: the shared-weight model at start
             "box_in.", "box_layers.", "ref_bind.")               # motion control: no-ops at the start
MAX_SLOTS = 4  # identity-embedding slots: the toy tokenizer's <sub1>..<sub4>
MAX_POINTS = 8  # motion control: tracked points per subject a trajectory may name (the toy uses 3)


class TwinTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sp = None   # a seqpar.SeqGroup under --seq_parallel: this rank computes 1/N of each tower's tokens
        d = cfg.dim
        self.prompt = ocf.PromptEncoder(cfg)   # text encoder, phoneme encoder, OCF, MTP-CA (Sec. 4.2)
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
        if cfg.ref_mode == "presence" and cfg.identity_embed:  # "identity embedding applied to identity latents"
            self.video_identity_embed = nn.Embedding(MAX_SLOTS, d)
            self.audio_identity_embed = nn.Embedding(MAX_SLOTS, d)
        self.layers = nn.ModuleList(TwinLayer(cfg, i) for i in range(cfg.layers))
        if cfg.motion:  # DreamVideo-Omni: group and role embeddings, zero-initialised box injections
            self.group_embed = nn.Embedding(cfg.max_groups, d)  # group k: reference k and box k share it
            self.role_embed = nn.Embedding(2, 16)               # 0 = appearance asset, 1 = motion guidance (16-d)
            self.role_proj = nn.Linear(16, d, bias=False)
            self.point_embed = nn.Embedding(MAX_POINTS, d)        # which tracked point a trajectory token is
            self.ref_bind = nn.Linear(d, d)                     # adds (group + role) to reference k's tokens
            self.box_in = nn.Linear(d, d)                       # Z_in
            if cfg.box_injection == "hierarchical":
                self.box_layers = nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.layers))  # Z_l
        self._rope_tables = {}  # (layout key) -> cos/sin tables: positions depend only on the shapes
        if cfg.lora_rank:  # after every module exists: the adapters wrap the backbone's linear layers in place
            lora.add_adapters(self, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # --- initialisation ------------------------------------------------------------------------------
    def initial_value(self, name: str, module: nn.Module, p: torch.Tensor, seed: int) -> torch.Tensor:
        """The initial value of one parameter, full size, fp32 on the CPU:
        | parameter                                   | init                                     |
        | every Linear / Conv weight                  | Xavier uniform; biases 0                 |
        | Block.modulation, Tower.head_modulation     | N(0, 1/dim); the two gate rows 0 (adaLN-zero) |
        | ZERO_INIT (time_proj, heads, task inputs, OCF residuals, MTP-CA out) | 0          |
        | video_skip / audio_skip (toy switch)        | identity: v = x_t at start               |
        | phoneme / text embeddings                   | N(0, 0.02)                               |
        | norms                                       | weight 1, bias 0                         |
        | GRN gamma / beta, OCF stream embeddings     | 0                                        |
        Each value is drawn from its own generator seeded by (seed, name), so it does not depend on
        the order parameters are built in, or on how FSDP shards them.
        """
        if ".identity." in name:  # presence: a copy of the content weight it mirrors (the last layer's is cut)
            twin_name = name.replace(".identity.", ".")
            twin = self.get_parameter(twin_name)
            value = self.initial_value(twin_name, self.get_submodule(twin_name.rsplit(".", 1)[0]), twin, seed)
            return value[tuple(slice(0, s) for s in p.shape)]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        shape = tuple(p.shape)
        leaf = name.rsplit(".", 1)[-1]
        if lora.is_adapter(name):
            return lora.initial_value(leaf, shape, gen)
        if name.startswith(ZERO_INIT) or leaf in ("bias", "gamma", "beta", "kind"):
            return torch.zeros(shape)
        if name.endswith("_skip.weight"):
            return torch.eye(shape[0])
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            return torch.ones(shape)
        if isinstance(module, nn.Embedding):
            return torch.randn(shape, generator=gen) * 0.02
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
        self.copy_identity_from_content(only)

    @torch.no_grad()
    def copy_identity_from_content(self, only=None):
        """Presence: each decoupled identity weight (in `only`) becomes a copy of the content weight it
        mirrors, as it stands now -- after Ovi's weights were loaded, a copy of Ovi's. Each rank copies the
        rows it holds (twin and copy are sharded alike)."""
        for name, p in self.named_parameters():
            if ".identity." in name and (only is None or name in only):
                twin = local_shard(self.get_parameter(name.replace(".identity.", ".")))
                local_shard(p).copy_(twin[tuple(slice(0, s) for s in local_shard(p).shape)])

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
        return self.audio_stem(x if self.cfg.audio_stem == "conv" else self.patchify_audio(x))

    def video_grid(self, shape):
        c = self.cfg
        return shape[-4] // c.patch_t, shape[-2] // c.patch_h, shape[-1] // c.patch_w  # (B, T, C, H, W)

    # --- the two token streams -----------------------------------------------------------------------
    def identity_slots(self, ref, B: int, K: int, table: str):
        """Presence: add subject k's learned identity embedding to its tokens; ref (B*K, m, D)."""
        ref = ref.unflatten(0, (B, K))                                             # (B, K, m, D)
        if self.cfg.ref_mode == "presence" and self.cfg.identity_embed:
            ref = ref + getattr(self, table).weight[:K, None].to(ref.dtype)
        return ref.flatten(1, 2)                                                   # (B, K*m, D)

    def audio_tokens(self, audio, cond: Conditioning, cached: bool = False):
        """[content | reference voices]: tokens (B, S_a, D), key mask (B, S_a), n content, T_r per voice.
        cached (presence, IdentityCache filled): the voices' tokens are left out, their mask kept."""
        a = self.embed_audio(audio)                                                # (B, n_a, D)
        if cond.driving_audio is not None and self.cfg.task_inputs:               # RA2V
            a = a + self.driving_embed(self.patchify_audio(cond.driving_audio))
        B, n_a, K = a.shape[0], a.shape[1], cond.subjects
        mask = torch.ones(B, n_a, dtype=torch.bool, device=a.device)
        if K == 0:
            return a, mask, n_a, 0
        T_r = cond.ref_audio.shape[2] // (1 if self.cfg.audio_stem == "conv" else self.cfg.audio_patch)
        mask = torch.cat([mask, cond.voice_mask.repeat_interleave(T_r, dim=1)], dim=1)
        if cached:
            return a, mask, n_a, T_r
        ref = self.embed_audio(cond.ref_audio.flatten(0, 1))                       # (B*K, T_r, D)
        tokens = torch.cat([a, self.identity_slots(ref, B, K, "audio_identity_embed")], dim=1)  # (B, n_a + K*T_r, D)
        return tokens, mask, n_a, T_r

    def video_tokens(self, video, cond: Conditioning, cached: bool = False):
        """[content | one clean latent frame per reference image]: tokens (B, S_v, D), key mask, n content,
        the reference grid (h', w'). cached: as audio_tokens."""
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
        if cached:
            return v, mask, n_v, ref_hw
        # a still image becomes one latent frame: repeat it over the temporal patch
        frames = cond.ref_images.flatten(0, 1)[:, None].expand(-1, c.patch_t, -1, -1, -1)  # (B*K, pt, C, h, w)
        ref = self.video_stem(self.patchify_video(frames))                         # (B*K, h'w', D)
        if c.motion:  # DreamVideo-Omni: reference k carries group k's code (role: appearance asset)
            ref = ref + self.ref_bind(self.group_codes(K, role=0)).repeat(B, 1)[:, None]
        tokens = torch.cat([v, self.identity_slots(ref, B, K, "video_identity_embed")], dim=1)  # (B, n_v + K*h'w', D)
        return tokens, mask, n_v, ref_hw

    # --- DreamVideo-Omni: boxes bound to subjects ----------------------------------------------------
    def group_codes(self, K: int, role: int) -> torch.Tensor:
        """(K, D): subject k's group embedding (binding its reference to its box) plus the role embedding
        (0 = appearance asset, 1 = motion guidance). Without group embeddings, the role alone."""
        role_code = self.role_proj(self.role_embed.weight[role])                    # (D,)
        if not self.cfg.group_embed:
            return role_code.expand(K, -1)
        return self.group_embed.weight[:K] + role_code

    def box_features(self, boxes: torch.Tensor, video_shape) -> torch.Tensor:
        """z_box (B, n_v, D): for every video token, the sum over subjects of (how much of the token's patch
        subject k's box covers) x (group k's motion code). boxes (B, K, T, 4) as fractions of the frame."""
        B, T, _, H, W = video_shape
        K = boxes.shape[1]
        ys = (torch.arange(H, device=boxes.device) + 0.5) / H                      # pixel centres
        xs = (torch.arange(W, device=boxes.device) + 0.5) / W
        b = boxes[..., None, None, :]                                               # (B, K, T, 1, 1, 4)
        inside = ((xs >= b[..., 0]) & (xs < b[..., 2]) & (ys[:, None] >= b[..., 1]) & (ys[:, None] < b[..., 3]))
        # the box-mask video (B, K, T, H, W) -> per token the share of its patch inside each box
        cover = self.patchify_video(inside.float().flatten(0, 1)[:, :, None]).mean(-1)   # (B*K, n_v)
        return torch.einsum("bkn,kd->bnd", cover.unflatten(0, (B, K)), self.group_codes(K, role=1))

    def trajectory_tokens(self, cond: Conditioning, video_shape, rope_v):
        """DreamVideo-Omni's trajectory tokens, appended to the video stream: one per subject, latent frame and
        tracked point, carrying (point + group code, role: motion); its RoPE position is the video token the
        point lies on (rope.trajectory_positions), so the content reads "subject k's mouth goes here at t".
        Returns (tokens (B, M, D), key mask (B, M): the subject's box is given there, rope_v extended)."""
        c = self.cfg
        B, T, _, H, W = video_shape
        points = cond.trajectories.to(rope_v[0].device)                            # (B, K, T, P, 2)
        K, P = points.shape[1], points.shape[3]
        code = self.point_embed.weight[:P][None] + self.group_codes(K, role=1)[:, None]  # (K, P, D)
        Tl = -(-T // c.patch_t)
        tokens = code[None, :, None].expand(B, K, Tl, P, -1).reshape(B, K * Tl * P, -1)
        box = cond.boxes[:, :, ::c.patch_t].to(points.device)                      # (B, K, T', 4)
        given = ((box[..., 2] > box[..., 0]) & (box[..., 3] > box[..., 1]))[..., None].expand(B, K, Tl, P)
        pos = rope.trajectory_positions(points, (c.patch_t, c.patch_h, c.patch_w), (H, W))   # (B, M, 3)
        angles = rope.rope_angles(pos, rope.rope_frequencies(c.head_dim, c.rope_theta, pos.device), c.head_dim)
        cos, sin = rope_v
        rope_v = (torch.cat([cos.expand(B, -1, -1), angles.cos()], 1), torch.cat([sin.expand(B, -1, -1), angles.sin()], 1))
        return tokens, given.reshape(B, -1), rope_v

    def inject_boxes(self, v, z_box, n_v: int, proj: nn.Module):
        """h + Z(z_box) on the content tokens (DreamVideo-Omni's hierarchical injection); references untouched."""
        return torch.cat([v[:, :n_v] + proj(z_box).to(v.dtype), v[:, n_v:]], dim=1)

    def rope_tables(self, grid, K, ref_hw, n_a, T_r, device):
        """cos/sin (1, S, pairs) of the video stream (None without video) and the audio stream: content
        grids, then the references' layout (rope.py). A function of the shapes only, so cached."""
        key = (grid, K, ref_hw, n_a, T_r, str(device))
        if key not in self._rope_tables:
            c = self.cfg
            layout = "presence" if c.ref_mode == "presence" else c.ref_rope
            ref_v, ref_a = rope.reference_positions(layout, K, grid[0] if grid else 0, *ref_hw, n_a, T_r,
                                                    c.audio_scale, c.syn_margin, c.voice_offset)
            pos_a = torch.cat([rope.audio_positions(n_a, c.audio_scale), ref_a])
            pos_v = torch.cat([rope.video_positions(*grid), ref_v]) if grid else None

            def cos_sin(pos):
                angles = rope.rope_angles(pos.to(device), rope.rope_frequencies(c.head_dim, c.rope_theta, device),
                                          c.head_dim)[None]  # (1, S, pairs)
                return angles.cos(), angles.sin()
            self._rope_tables[key] = (cos_sin(pos_v) if grid else None, cos_sin(pos_a))
        return self._rope_tables[key]

    # --- the forward pass ----------------------------------------------------------------------------
    def forward(self, video, audio, t, cond: Conditioning, cache: IdentityCache | None = None):
        """Predict the flow velocity of both streams.

        Args:
            video: (B, T, C, H, W) noisy video, or None for an audio-only step.
            audio: (B, T_a, C_a) noisy audio (mel frames or latents).
            t: (B,) flow time in [0, 1] (1 = pure noise).
            cond: the Conditioning (prompt, references and their masks, task inputs).
            cache: presence only, sampling: an IdentityCache for this clip (filled by the first call).
        Returns: (video velocity like `video` or None, audio velocity like `audio`).
        """
        if cache is not None and self.cfg.ref_mode != "presence":
            raise ValueError("an IdentityCache needs ref_mode presence: concat references see the content")
        cached = cache is not None and cache.filled
        prompt = self.prompt(cond)                                                 # (B, L, text_dim)
        a, mask_a, n_a, T_r = self.audio_tokens(audio, cond, cached)
        v = mask_v = grid = None
        n_v, ref_hw = 0, (0, 0)
        if video is not None:
            v, mask_v, n_v, ref_hw = self.video_tokens(video, cond, cached)
            grid = self.video_grid(video.shape)
        rope_v, rope_a = self.rope_tables(grid, cond.subjects, ref_hw, n_a, T_r, audio.device)
        trajectories = self.cfg.motion and video is not None and cond.trajectories is not None and cond.boxes is not None
        if trajectories:
            traj, traj_mask, rope_v = self.trajectory_tokens(cond, video.shape, rope_v)
            v, mask_v = torch.cat([v, traj.to(v.dtype)], 1), torch.cat([mask_v, traj_mask], 1)
        full_n_v, full_n_a = n_v, n_a
        mask_v, mask_a, text_mask = self.needed_masks(cond, mask_v, mask_a, trajectories)
        if self.sp is not None:  # keep this rank's slice of each stream; masks stay whole (they mask keys)
            if self.cfg.ref_mode == "presence":
                raise ValueError("--seq_parallel supports ref_mode concat only (see seqpar.py)")
            a, mask_a, rope_a, n_a = self.shard_stream(a, mask_a, rope_a, n_a)
            if v is not None:
                v, mask_v, rope_v, n_v = self.shard_stream(v, mask_v, rope_v, n_v)
        emb_a, e_a = self.audio_tower.timestep(t)
        emb_v, e_v = self.video_tower.timestep(t) if video is not None else (None, None)
        ctx = dict(e_v=e_v, e_a=e_a, n_v=n_v, n_a=n_a, mask_v=mask_v, mask_a=mask_a, text_mask=text_mask,
                   cache=cache, subjects=cond.subjects, sp=self.sp,
                   rope_v=rope_v, rope_a=rope_a, text_a=self.audio_tower.text_proj(prompt),
                   text_v=self.video_tower.text_proj(prompt) if video is not None else None)
        # DreamVideo-Omni: h_0 = z_t + Z_in(z_box), h_{l+1} = Block_l(h_l) + Z_l(z_box)  (hierarchical injection)
        z_box = None
        if self.cfg.motion and video is not None and cond.boxes is not None:
            if self.sp is not None:
                raise ValueError("--motion with --seq_parallel is not supported (seqpar.py)")
            z_box = self.box_features(cond.boxes.to(video.device), video.shape)
            v = self.inject_boxes(v, z_box, n_v, self.box_in)
        for i, layer in enumerate(self.layers):
            v, a = layer(v, a, ctx)
            if z_box is not None and self.cfg.box_injection == "hierarchical":
                v = self.inject_boxes(v, z_box, n_v, self.box_layers[i])
        if cache is not None:
            cache.filled = True
        video_out, audio_out = self.outputs(v, a, emb_v, emb_a, full_n_v, full_n_a, video, audio)
        if self.cfg.precond == "edm":
            audio_out = precondition(audio_out, audio, t, self.cfg.sigma_audio)
            video_out = None if video is None else precondition(video_out, video, t, self.cfg.sigma_video)
        return video_out, audio_out

    def needed_masks(self, cond: Conditioning, mask_v, mask_a, motion: bool):
        """The key masks attention must apply: None where every key is real, so SDPA may choose its flash kernel
        (any mask forces the slower memory-efficient one). Decided from cond.full, known on the host, so no
        device sync; trajectory tokens (motion) and sequence parallel's padding keep their masks."""
        K, full = cond.subjects, cond.full
        text_mask = None if "text_mask" in full else cond.text_mask
        if self.sp is not None:  # the padding of each rank's slice is masked
            return mask_v, mask_a, text_mask
        video_full = (K == 0 or "image_mask" in full) and not motion
        return None if video_full else mask_v, None if K == 0 or "voice_mask" in full else mask_a, text_mask

    def shard_stream(self, x, mask, rope_cs, n):
        """Sequence parallel: this rank's slice of a stream's tokens and RoPE tables, the whole key mask
        (padded to a multiple of N with False), and how many of the slice's tokens are content."""
        local = seqpar.shard(x, self.sp)
        cos, sin = (seqpar.shard(t, self.sp) for t in rope_cs)                    # (1, S/N, pairs)
        return local, seqpar.pad_mask(mask, self.sp), (cos, sin), seqpar.local_content(n, self.sp, local.shape[1])

    def head(self, tower, x, emb, n):
        """A tower's head on its n content tokens; under sequence parallel on every local token, gathered."""
        if self.sp is None:
            return tower.output(x, emb, n)
        return seqpar.gather_seq(tower.output(x, emb, x.shape[1]), self.sp)[:, :n]

    def outputs(self, v, a, emb_v, emb_a, n_v, n_a, video, audio):
        """Heads on the content tokens, back to the inputs' shapes (+ the toy's optional input skip)."""
        audio_out = self.head(self.audio_tower, a, emb_a, n_a)                     # (B, n_a, p*C_a)
        if self.cfg.input_skip:
            audio_out = audio_out + self.audio_skip(self.patchify_audio(audio))
        audio_out = audio_out.reshape(audio.shape)
        if video is None:
            return None, audio_out
        video_tokens = self.head(self.video_tower, v, emb_v, n_v)                 # (B, T'H'W', pt*ph*pw*C)
        if self.cfg.input_skip:
            video_tokens = video_tokens + self.video_skip(self.patchify_video(video))
        return self.unpatchify_video(video_tokens, video.shape), audio_out

    def frozen_in_audio_only_steps(self) -> list[str]:
        """Parameters an audio-only step must not touch (Omni-Customizer Sec. 4.3): the video tower and
        the cross-tower pathway (the fusion norm and k/v of both directions) -- "structurally inactive"."""
        video = ("video_stem.", "video_tower.", "source_embed.", "video_skip.", "video_identity_embed.",
                 "group_embed.", "role_embed.", "role_proj.", "ref_bind.", "box_in.", "box_layers.", "point_embed.")
        return [n for n, _ in self.named_parameters()
                if n.startswith(video) or ".video." in n or "_fusion" in n]

    # --- accounting --------------------------------------------------------------------------------
    def count_parameters(self) -> dict:
        """backbone (Ovi's weights), additions (ours, trained fully), adapters (LoRA)."""
        counts = dict(backbone=0, additions=0, adapters=0)
        for name, p in self.named_parameters():
            kind = "adapters" if lora.is_adapter(name) else "additions" if is_addition(name) else "backbone"
            counts[kind] += p.numel()
        return dict(counts, total=sum(counts.values()))

    def trains(self, name: str) -> bool:
        """Does parameter `name` train? All do, except the backbone under LoRA (frozen: the adapters learn)."""
        return not self.cfg.lora_rank or is_addition(name) or lora.is_adapter(name)


# ------------------------------------------------------------------------------------------------
# Filling parameters, plain or FSDP2-sharded, without a full copy per rank
# ------------------------------------------------------------------------------------------------


def shard_rows(p) -> tuple[int, int]:
    """The rows [start, end) of the full parameter that this rank holds. A plain tensor holds all of them;
    an FSDP2 parameter is a DTensor sharded on dim 0 along one mesh dimension (HSDP: replicated along the
    other) in chunks of ceil(rows / ranks) (torch.chunk's split: the last ranks may hold fewer rows, or none)."""
    rows = p.shape[0]
    if not hasattr(p, "device_mesh"):
        return 0, rows
    sharded = [i for i, placement in enumerate(p.placements) if not placement.is_replicate()]
    if len(sharded) != 1 or not p.placements[sharded[0]].is_shard(0):
        raise ValueError(f"expected FSDP2's Shard(0) placement (HSDP: Replicate, Shard(0)), got {p.placements}")
    dim = sharded[0]
    chunk = -(-rows // p.device_mesh.size(dim))
    start = min(rows, p.device_mesh.get_coordinate()[dim] * chunk)
    return start, min(rows, start + chunk)


def local_shard(p: torch.Tensor) -> torch.Tensor:
    """This rank's part of p: the local tensor of an FSDP2 DTensor, or p itself."""
    return p.to_local() if hasattr(p, "to_local") else p


@torch.no_grad()
def copy_rows(p, read_rows):
    """Fill p (a plain parameter or its FSDP2 shard) from read_rows(start, end) -> those rows of the full value."""
    start, end = shard_rows(p)
    local = local_shard(p)
    if end > start:
        local[: end - start].copy_(read_rows(start, end))


def estimate_flops(cfg: ModelConfig, video_tokens: int, audio_tokens: int, text_tokens: int,
                   ref_video_tokens: int = 0, ref_audio_tokens: int = 0, phoneme_tokens: int = 0,
                   video: bool = True) -> float:
    """Training FLOPs (forward + backward) per sample (nanoGPT / PaLM Appendix B: 6 x weights per token).

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


# data.WorldConfig's default clip (2 s of 32x32 at 8 fps, 128 mel frames, 16x16 reference portraits,
# 1 s reference voices). Held here so this file need not import the toy world; tests/test_data.py checks it.
TOY_CLIP = dict(frames=16, image_size=32, mel_frames=128, ref_image_size=16, ref_mel_frames=64)


def toy_token_counts(cfg: ModelConfig, clip: dict = TOY_CLIP, subjects: int = 2, text_tokens: int = 250):
    """Token counts of one toy sample (for FLOPs and bench); `clip` holds the world's sizes (TOY_CLIP's keys)."""
    v = (clip["frames"] // cfg.patch_t) * (clip["image_size"] // cfg.patch_h) * (clip["image_size"] // cfg.patch_w)
    a = clip["mel_frames"] // cfg.audio_patch
    rv = subjects * (clip["ref_image_size"] // cfg.patch_h) * (clip["ref_image_size"] // cfg.patch_w)
    ra = subjects * clip["ref_mel_frames"] // cfg.audio_patch
    return dict(video_tokens=v, audio_tokens=a, text_tokens=text_tokens, ref_video_tokens=rv, ref_audio_tokens=ra,
                phoneme_tokens=subjects * 12)


def full_token_counts(subjects: int = 2):
    """Token counts of one 5 s 720x720 Ovi sample: 31 latent frames of 45x45 latents, patch 2x2."""
    return dict(video_tokens=31 * 22 * 22, audio_tokens=157, text_tokens=512,
                ref_video_tokens=subjects * 22 * 22, ref_audio_tokens=subjects * 157, phoneme_tokens=subjects * 40)


def main():
    from inputs import OneLineParser  # one line per bad flag, like every entry point
    from inputs import parse_bool
    parser = OneLineParser(description="Parameter counts and training FLOPs per preset; --memory: the memory plan.")
    parser.add_argument("--config", choices=list(PRESETS), nargs="*", default=list(PRESETS), help="presets to count")
    parser.add_argument("--memory", action="store_true", help="print the per-GPU memory plan (memory.py) instead")
    parser.add_argument("--gpus", type=int, default=8, help="--memory: GPUs the parameters are sharded over (FSDP2)")
    parser.add_argument("--batch", type=int, default=1, help="--memory: samples per GPU")
    parser.add_argument("--lora_rank", type=int, default=0, help="--memory: LoRA rank (0 = full fine-tuning)")
    parser.add_argument("--grad_ckpt", type=parse_bool, nargs="?", const=True, default=False,
                        help="--memory: activation checkpointing per layer")
    parser.add_argument("--seq_parallel", type=int, default=1, help="--memory: ranks that share each sample's tokens")
    args = parser.parse_args()
    if args.memory:
        import memory
        if min(args.gpus, args.batch, args.seq_parallel) < 1 or args.lora_rank < 0 or args.gpus % args.seq_parallel:
            parser.exit(2, "error: --gpus, --batch, --seq_parallel must be at least 1, --seq_parallel must divide "
                           "--gpus, --lora_rank 0 or more\n")
        for name in args.config:
            cfg = memory.with_lora(PRESETS[name], args.lora_rank)
            tokens = full_token_counts() if name == "full" else toy_token_counts(cfg)
            memory.print_plan(name, cfg, tokens, args.gpus, args.batch, args.grad_ckpt, args.seq_parallel)
        return
    for name in args.config:
        cfg = PRESETS[name]
        with torch.device("meta"):  # no memory: the full model is 11.7B parameters
            counts = TwinTower(cfg).count_parameters()
        tokens = full_token_counts() if name == "full" else toy_token_counts(cfg)
        flops = estimate_flops(cfg, **tokens)
        line = (f"{name:5s} backbone {counts['backbone']:>15,d}  additions {counts['additions']:>10,d}  "
                f"train FLOPs/sample {flops:.3e}  ({tokens['video_tokens']}+{tokens['ref_video_tokens']} video, "
                f"{tokens['audio_tokens']}+{tokens['ref_audio_tokens']} audio, {tokens['text_tokens']} text tokens)")
        if name == "full":
            line += f"  vs Ovi {OVI_PARAMETERS:,d}: {counts['backbone'] - OVI_PARAMETERS:+,d}"
        print(line)
        with torch.device("meta"):  # Identity-as-Presence: the decoupled identity streams are additions
            for audio in (False, True):
                extra = TwinTower(dataclasses.replace(cfg, ref_mode="presence", decouple_audio=audio)).count_parameters()
                print(f"      --ref_mode presence{' --decouple_audio true' if audio else '':23s} additions "
                      f"{extra['additions']:>13,d}  (identity stream {extra['additions'] - counts['additions']:+,d})")


if __name__ == "__main__":
    main()
