"""Identity-as-Presence: references as a separate identity stream with asymmetric attention (its Sec. 3, Fig. 3).

The other papers append reference tokens to the content sequence, where every token attends to every
other: a reference then reads the noisy clip, and one subject's reference reads another's. Identity-as-
Presence keeps them apart. Each tower's tokens are [content (n) | identity tokens of subjects 1..K]:

  content  queries read [content, identity] keys          the clip looks at the identities
  identity queries read only their own subject's keys      an identity never reads the clip or another
  identity tokens skip the text and cross-tower attention, and sit at t = 0 (clean) with their own FFN

  decoupled weights   the identity tokens have their own q/k/v/o, norms, FFN and modulation bias (the
                      release decouples the video tower's: `--decouple_video`; `--decouple_audio` is ours),
                      initialised as copies of the content weights, so training starts from the shared model
  identity embedding  a learned embedding per subject slot, added to that subject's identity tokens (its
                      Fig. 5 ablates it: `--identity_embed`)
  positions           the face frame right after the content frames, the voice at a fixed audio offset
                      (rope.reference_positions' "presence" layout; `--voice_offset`)
  IdentityCache       at sampling time identity tokens depend on nothing that changes between steps, so
                      each layer's identity keys/values are computed once per clip and read from the cache

Its guidance (the negative keeps the face and drops the voice) is sample.py's `--guidance presence`, its
three training stages recipes.py's PRESENCE_STAGES.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

import rope
from attention import attention, key_padding
from model import (Block, Heads, LayerContext, SelfAttention, TowerInputs, TwinLayer, TwinTower, declare, ffn, gate,
                   modulate)
from precision import RMSNorm32
from sharded import local_shard

MAX_SLOTS = 4  # identity-embedding slots: the toy tokenizer's <sub1>..<sub4>


@dataclass
class PresenceConfig:
    # how references enter (Identity-as-Presence Sec. 3 / Fig. 3 against the concatenation of the others)
    ref_mode: str = "concat"       # concat: extra tokens of the content sequence | presence: a separate identity stream
    identity_embed: bool = True    # presence: a learned embedding per subject slot on identity tokens (its Fig. 5)
    decouple_video: bool = True    # presence: the video identity stream has its own weights (the release)
    decouple_audio: bool = False   # presence: the audio identity stream too (ours; the release decouples video)
    voice_offset: float = 256.0    # presence: audio-token position of the first reference voice (release: 630)


class IdentityKeys(Heads, nn.Module):
    """The last layer's identity stream: it is only read (its keys and values), never updated -- nothing
    after the last layer reads identity tokens -- so it has no q, o or FFN to train."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.k, self.v = nn.Linear(d, d), nn.Linear(d, d)
        self.norm_k = RMSNorm32(d, eps=cfg.eps)


class IdentityStream(nn.Module):
    """The decoupled parameters of one tower's identity tokens: their own q/k/v/o and q/k norms, FFN and
    modulation bias. Initialised as copies of the content weights (PresenceTwinTower.init_weights)."""

    def __init__(self, cfg, last: bool):
        super().__init__()
        self.self_attn = IdentityKeys(cfg) if last else SelfAttention(cfg)
        if not last:
            self.ffn = ffn(cfg)
        self.modulation = nn.Parameter(torch.zeros(1, 2 if last else 6, cfg.dim))  # keys need only shift/scale


class PresenceBlock(Block):
    """Block with the asymmetric self-attention over [content (n) | identity], and the identity tokens' FFN."""

    def __init__(self, cfg, decoupled: bool, last: bool):
        super().__init__(cfg)
        self.last = last
        if decoupled:  # new weights, not Ovi's: trained fully under LoRA, fresh over Ovi's checkpoint
            self.identity = declare(IdentityStream(cfg, last), addition=True)

    def identity_weights(self):
        """The identity stream's weights: its own (decoupled) or the content's (shared)."""
        return getattr(self, "identity", self)

    def identity_mod(self, e):
        """(B, rows, D) fp32: the t = 0 modulation row plus the identity stream's own bias."""
        bias = self.identity_weights().modulation.float()[0]
        return e[:, 1, : bias.shape[0]] + bias

    def presence_self_part(self, x, io: TowerInputs, subjects: int, kv=None):
        """x = [content (n) | identity of `subjects` subjects], or content only when `kv`, this layer's
        identity keys/values from an IdentityCache, is given. Returns (x, identity (k, v))."""
        (cos, sin), n = io.rope, io.n
        shift, scale, g, _, _, _ = self.mod(io.e)                        # row 0 of each: the content's t
        content = x[:, :n]
        h = modulate(self.norm1(content), shift, scale, n)
        k, v = self.self_attn.keys_values(h, cos[:, :n], sin[:, :n])     # (B, H, n, hd)
        if kv is None:
            identity, kv = self.identity_self_part(x[:, n:], io.e, cos[:, n:], sin[:, n:], subjects)
        else:
            identity = x[:, n:]                                          # (B, 0, D): the cache holds it
        y = attention(self.self_attn.queries(h, cos[:, :n], sin[:, :n]), torch.cat([k, kv[0]], 2),
                      torch.cat([v, kv[1]], 2), key_padding(io.mask))   # content reads [content, identity]
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
        return ident + w.self_attn.out(y).float() * mod[:, 2:3], kv       # fp32 gate, as model.gate

    def identity_ffn_part(self, ident, e):
        if self.last or ident.shape[1] == 0:
            return ident
        w, mod = self.identity_weights(), self.identity_mod(e)
        h = (self.norm2(ident).float() * (1 + mod[:, 4:5]) + mod[:, 3:4]).to(ident.dtype)
        return ident + w.ffn(h).float() * mod[:, 5:6]


class IdentityCache:
    """Identity tokens read only themselves and always sit at t = 0, so their keys and values in every layer
    are the same at every sampling step (and in every guidance pass, which are batched). The first forward of
    a clip fills this; later ones skip the identity tokens and read their keys and values from here."""

    def __init__(self):
        self.layers, self.filled = {}, False   # layer index -> (video (k, v) or None, audio (k, v))


@dataclass
class PresenceContext(LayerContext):
    cache: IdentityCache | None = None   # sampling: this clip's identity keys/values
    subjects: int = 0                    # K: identity tokens split into K equal per-subject groups


def content_only(io: TowerInputs) -> TowerInputs:
    """A tower's inputs seen by its content tokens alone: their positions, no key mask (all real)."""
    return dataclasses.replace(io, mask=None, rope=tuple(x[:, :io.n] for x in io.rope))


class PresenceLayer(TwinLayer):
    def make_block(self, cfg, tower: str) -> PresenceBlock:
        return PresenceBlock(cfg, getattr(cfg, f"decouple_{tower}"), self.index == cfg.layers - 1)

    def layer(self, v, a, ctx: PresenceContext):
        """Asymmetric self-attention, then text / cross-tower attention and the FFN of the content; identity
        tokens go through their own FFN. With a filled IdentityCache the identity tokens are absent and their
        keys/values come from the cache."""
        cache, V, A = ctx.cache, ctx.video, ctx.audio
        cached = cache.layers[self.index] if cache is not None and cache.filled else (None, None)
        kv_v = None
        if v is not None:
            v, kv_v = self.video.presence_self_part(v, V, ctx.subjects, cached[0])
        a, kv_a = self.audio.presence_self_part(a, A, ctx.subjects, cached[1])
        if cache is not None and not cache.filled:
            cache.layers[self.index] = (kv_v, kv_a)
        a_c, Ac = a[:, :A.n], content_only(A)
        if v is None:
            a_new = self.audio.cross_part(a_c, Ac, None, None, ctx.text_mask)
        else:
            v_c, Vc = v[:, :V.n], content_only(V)
            a_new = self.audio.cross_part(a_c, Ac, v_c, Vc, ctx.text_mask)
            v_c = self.video.cross_part(v_c, Vc, a_c, Ac, ctx.text_mask)
            v = torch.cat([self.video.ffn_part(v_c, V), self.video.identity_ffn_part(v[:, V.n:], V.e)], 1)
        return v, torch.cat([self.audio.ffn_part(a_new, A), self.audio.identity_ffn_part(a[:, A.n:], A.e)], 1)


class PresenceTwinTower(TwinTower):
    """The twin tower with identity streams in place of concatenated references."""
    layer_class = PresenceLayer

    def __init__(self, cfg, prompt: nn.Module | None = None):
        super().__init__(cfg, prompt)
        if cfg.identity_embed:  # "identity embedding applied to identity latents"; zero: the shared-weight model
            self.video_identity_embed = declare(nn.Embedding(MAX_SLOTS, cfg.dim), addition=True, zero=True, video=True)
            self.audio_identity_embed = declare(nn.Embedding(MAX_SLOTS, cfg.dim), addition=True, zero=True)

    def reference_tokens(self, ref, B: int, K: int, tower: str):
        """Subject k's identity embedding added to its tokens; ref (B*K, m, D) -> (B, K*m, D)."""
        ref = ref.unflatten(0, (B, K))                                             # (B, K, m, D)
        if self.cfg.identity_embed:
            ref = ref + getattr(self, f"{tower}_identity_embed").weight[:K, None].to(ref.dtype)
        return ref.flatten(1, 2)

    def reference_positions(self, K, frames, ref_hw, n_a, T_r):
        c = self.cfg
        return rope.reference_positions("presence", K, frames, *ref_hw, n_a, T_r, c.audio_scale,
                                        voice_offset=c.voice_offset)

    def forward(self, video, audio, t, cond, cache: IdentityCache | None = None):
        """TwinTower.forward, plus `cache`: sampling's IdentityCache for this clip (filled by the first call)."""
        if self.sp is not None:
            raise ValueError("--seq_parallel supports ref_mode concat only (see seqpar.py)")
        v, a, ctx = self.prepare(video, audio, t, cond, references=cache is None or not cache.filled)
        ctx = PresenceContext(ctx.video, ctx.audio, ctx.text_mask, cache, cond.subjects)
        for layer in self.layers:
            v, a = layer(v, a, ctx)
        if cache is not None:
            cache.filled = True
        return self.outputs(v, a, ctx, video, audio)

    # --- the identity stream starts as a copy of the content weights -------------------------------
    def initial_value(self, name, module, p, seed):
        if ".identity." in name:  # a copy of the content weight it mirrors (the last layer's keys-only cut)
            twin_name = name.replace(".identity.", ".")
            twin = self.get_parameter(twin_name)
            value = self.initial_value(twin_name, self.get_submodule(twin_name.rsplit(".", 1)[0]), twin, seed)
            return value[tuple(slice(0, s) for s in p.shape)]
        return super().initial_value(name, module, p, seed)

    @torch.no_grad()
    def init_weights(self, seed: int = 0, only=None):
        super().init_weights(seed, only)
        self.copy_identity_from_content(only)

    @torch.no_grad()
    def copy_identity_from_content(self, only=None):
        """Each decoupled identity weight (in `only`) becomes a copy of the content weight it mirrors, as it
        stands now -- after Ovi's weights were loaded, a copy of Ovi's. Each rank copies the rows it holds
        (twin and copy are sharded alike)."""
        for name, p in self.named_parameters():
            if ".identity." in name and (only is None or name in only):
                twin = local_shard(self.get_parameter(name.replace(".identity.", ".")))
                local_shard(p).copy_(twin[tuple(slice(0, s) for s in local_shard(p).shape)])
