"""Sequence parallelism across both towers (Ulysses: Jacobs et al. 2023, "DeepSpeed Ulysses").

A 5 s clip at Ovi's size is ~16,000 tokens, 10 s twice that: one GPU's activations for one sample
(memory.py) are then the limit, not the weights. With `--seq_parallel N` the N ranks of a sequence group
share one sample: each holds a contiguous 1/N of the video tokens and 1/N of the audio tokens (content
first, then references; padded with masked tokens to a multiple of N), so every per-token operation
(norms, modulation, FFN, stems, heads) costs 1/N. Attention needs the whole sequence, so around every
attention an all-to-all turns "all heads of my tokens" into "my heads of all tokens", attention runs
on whole sequences for H/N heads, and a second all-to-all turns the result back:

    q, k, v (B, H, S/N, hd)  --seq_to_heads-->  (B, H/N, S, hd)  --attention-->  --heads_to_seq-->  (B, H, S/N, hd)

That covers self-attention, the cross-tower attention (the other tower's keys and values are sharded the
same way) and the text cross-attention (the prompt is small and replicated: each rank takes its heads of
the text keys and values). Key masks and RoPE positions are those of the whole sequence, sliced like the
tokens. At the end the heads' outputs are gathered, and every rank of the group computes the same loss.

Gradients: a parameter's gradient on one rank holds only its own tokens' share, so the group's gradients
must be *summed*. DDP and FSDP2 average over all ranks, so train.py multiplies the loss by N; the ranks of
a group read the same batch and the same noise (data rank = rank // N).

Supported: DDP or FSDP2 over all ranks (FSDP2 shards over the flattened data x sequence ranks, as
torchtitan does for context parallelism), concat references, --grad_ckpt. Not supported: ref_mode
presence (its per-subject identity attention would need its own layout), --compile (untested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

import model
from attention import attention, key_padding


@dataclass
class SeqGroup:
    """One rank's place in its sequence group."""
    group: object      # the process group of the N ranks that share a sample
    rank: int          # this rank's index inside the group
    size: int          # N

    def heads(self, h: int) -> slice:
        """The heads this rank attends with after seq_to_heads."""
        per = h // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def shard_stream(self, x, mask, rope_cs, n):
        """This rank's slice of a stream's tokens (B, S/N, D) and RoPE tables, the whole key mask (padded to a
        multiple of N with False: padding is never attended), and how many of the slice's tokens are content."""
        local = shard(x, self)
        cos, sin = (shard(t, self) for t in rope_cs)                              # (1, S/N, pairs)
        return local, pad_mask(mask, self), (cos, sin), local_content(n, self, local.shape[1])

    def gather(self, x):
        """(B, S/N, C) slices -> (B, S, C) on every rank (the heads' outputs, before the loss)."""
        return gather_seq(x, self)


class UlyssesAttention:
    """Mixed into the twin tower's attentions by `apply`: q, k, v arrive as this rank's tokens with every
    head; all-to-all to every token with this rank's heads, attend, and back."""
    sp: SeqGroup

    def attend(self, q, k, v, key_mask, shared_kv: bool = False):
        sp = self.sp
        if shared_kv:   # the prompt is replicated on every rank: take this rank's heads of it
            k, v = k[:, sp.heads(self.heads)], v[:, sp.heads(self.heads)]
        else:
            k, v = seq_to_heads(k, sp), seq_to_heads(v, sp)
        y = attention(seq_to_heads(q, sp), k, v, key_padding(key_mask))          # (B, H/N, S, hd): whole sequence
        return heads_to_seq(y, sp)                                               # (B, H, S/N, hd)


class UlyssesSelfAttention(UlyssesAttention, model.SelfAttention):
    pass


class UlyssesCrossAttention(UlyssesAttention, model.CrossAttention):
    pass


def apply(net, size: int) -> SeqGroup:
    """Sequence parallelism on a built twin tower, in place (like lora.add_adapters: same objects, same
    parameters): every attention becomes its Ulysses version, and the model slices its token streams."""
    sp = make_groups(size)
    swap = {model.SelfAttention: UlyssesSelfAttention, model.CrossAttention: UlyssesCrossAttention}
    for module in net.modules():
        if type(module) in swap:
            module.__class__, module.sp = swap[type(module)], sp
    net.sp = sp
    return sp


def make_groups(size: int) -> SeqGroup:
    """Consecutive blocks of `size` ranks share a sample (every rank creates every group, as new_group needs)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for start in range(0, world, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = SeqGroup(group, rank - start, size)
    return mine


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """x (N, ...): chunk i goes to rank i; returns (N, ...) whose chunk i came from rank i."""
    x = x.contiguous()              # first: empty_like would copy a transposed x's strides, not its order
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x, sp: SeqGroup):
    B, H, s, hd = x.shape                                                    # (B, H, S/N, hd)
    send = x.reshape(B, sp.size, H // sp.size, s, hd).transpose(0, 1)       # (N, B, H/N, S/N, hd): head groups
    recv = _all_to_all(send, sp.group)                                       # recv[i]: rank i's tokens, my heads
    return recv.permute(1, 2, 0, 3, 4).reshape(B, H // sp.size, sp.size * s, hd)   # (B, H/N, S, hd)


def _heads_to_seq(y, sp: SeqGroup):
    B, h, S, hd = y.shape                                                    # (B, H/N, S, hd)
    send = y.reshape(B, h, sp.size, S // sp.size, hd).permute(2, 0, 1, 3, 4)  # (N, B, H/N, S/N, hd): token chunks
    recv = _all_to_all(send, sp.group)                                       # recv[i]: rank i's heads, my tokens
    return recv.transpose(0, 1).reshape(B, sp.size * h, S // sp.size, hd)    # (B, H, S/N, hd)


class AllToAll(torch.autograd.Function):
    """seq_to_heads (to_heads=True) or heads_to_seq; each is the other's backward (they are inverse)."""

    @staticmethod
    def forward(ctx, x, sp, to_heads: bool):
        ctx.sp, ctx.to_heads = sp, to_heads
        return _seq_to_heads(x, sp) if to_heads else _heads_to_seq(x, sp)

    @staticmethod
    def backward(ctx, grad):
        return (_heads_to_seq(grad, ctx.sp) if ctx.to_heads else _seq_to_heads(grad, ctx.sp)), None, None


class GatherSeq(torch.autograd.Function):
    """(B, S/N, C) shards -> (B, S, C) on every rank. Every rank then computes the same loss, so its
    gradient is the same everywhere: each rank keeps its own slice (no reduction)."""

    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp = sp
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        dist.all_gather(parts, x, group=sp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.sp.size, dim=1)[ctx.sp.rank].contiguous(), None


def seq_to_heads(x, sp):
    return AllToAll.apply(x, sp, True)


def heads_to_seq(y, sp):
    return AllToAll.apply(y, sp, False)


def gather_seq(x, sp):
    return GatherSeq.apply(x, sp)


def padded(n: int, sp: SeqGroup) -> int:
    """n rounded up to a multiple of the group size."""
    return -(-n // sp.size) * sp.size


def shard(x: torch.Tensor, sp: SeqGroup, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous slice of `x` along `dim`, after padding it with zeros to a multiple of N."""
    pad = padded(x.shape[dim], sp) - x.shape[dim]
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return x.chunk(sp.size, dim=dim)[sp.rank]


def pad_mask(mask: torch.Tensor, sp: SeqGroup) -> torch.Tensor:
    """A key mask (B, S) padded with False (padding tokens are never attended) to a multiple of N."""
    pad = padded(mask.shape[1], sp) - mask.shape[1]
    return torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], dim=1) if pad else mask


def local_content(n: int, sp: SeqGroup, local: int) -> int:
    """How many of this rank's `local` tokens are content (the first n of the whole sequence are)."""
    return max(0, min(local, n - sp.rank * local))
