"""The memory plan: bytes per GPU of a training run, from the model's shapes (`python build.py --memory`).

    python build.py --memory --config full --gpus 8 [--lora_rank 64] [--grad_ckpt] [--seq_parallel 2]

What a GPU holds while training (FSDP2 shards every parameter-sized thing over the `gpus` ranks):
  parameters      fp32 master weights / gpus; under LoRA the frozen base is bf16 (2 B), only what trains fp32
  gradients       fp32, of what trains, / gpus (FSDP2 reduce-scatters them into shards)
  optimizer       AdamW's two fp32 moments of what trains, / gpus
  EMA             an fp32 copy of what trains, / gpus (train.py keeps it sharded like the parameter)
  gathered layer  FSDP2 all-gathers one TwinLayer in bf16 to compute it, and prefetches the next: 2 layers
  activations     what autograd saves for the backward, per layer (below); with --grad_ckpt only each
                  layer's input is kept (the residual stream, fp32: precision.py), plus one layer's full set
                  while it is recomputed
  root unit       FSDP2's root unit (stems, the towers' prompt / timestep / head modules, the prompt side)
                  is gathered in bf16 for the whole forward and backward, not per layer
  reduce-scatter  one layer's gradients unsharded in fp32 (reduce_dtype) on their way into the shards, and
                  the next layer's while it overlaps: 2 layers x 4 B
  backward temps  the gradients of one layer's activations while its backward runs: about its saved set
  CUDA + NCCL     the CUDA context and cuBLAS/cuDNN workspaces (~1 GB), NCCL's buffers (~0.75 GB, multi-GPU)

Activations saved per layer, counted from what model.py's Block saves (checked against autograd's saved
tensors on CPU in tests/test_memory.py, within 20%), per token of either tower (content + references):
  31 d + 2 f numbers   (norms and modulation inputs, q/k/v before and after their norms and RoPE, the
                        attention outputs, o and FFN inputs, the FFN hidden layer before and after GELU,
                        and each token's 5 d as the *other* tower's fusion keys and values)
and per prompt token 10 d (each tower's text k and v, before and after the k-norm). SDPA's flash and
memory-efficient kernels (and the CPU kernel) keep no S x S matrix. Under bf16 autocast most of these
are 2 bytes; the modulation inputs and RoPE's inputs (4 d per token) are fp32.

Sequence parallel (--seq_parallel N) splits each tower's tokens over N ranks, so per-token activations
divide by N; the prompt is replicated.
"""
from __future__ import annotations

import dataclasses

import torch

import build
import lora

ACT_D, ACT_F, ACT_TEXT, ACT_FP32_D = 31, 2, 10, 4   # per-token numbers saved per layer (see above)
CUDA_CONTEXT, NCCL_BUFFERS = 1.0e9, 0.75e9            # bytes outside PyTorch's allocator (see above)


def counts(cfg) -> dict:
    """Parameters that train and that are frozen, and the parameters of one TwinLayer (meta device)."""
    with torch.device("meta"):
        net = build.build_model(cfg)
    trains = sum(p.numel() for n, p in net.named_parameters() if lora.trains(net, n))
    total = sum(p.numel() for p in net.parameters())
    layers = sum(p.numel() for p in net.layers.parameters())
    return dict(trains=trains, frozen=total - trains, layer=sum(p.numel() for p in net.layers[0].parameters()),
                root=total - layers)


def activation_bytes_per_layer(cfg, tokens: int, text_tokens: int, bytes_per: int = 2) -> int:
    """Bytes autograd saves in one TwinLayer for one sample of `tokens` (both towers, content + references)
    and `text_tokens` prompt tokens. bytes_per 2 = bf16 autocast (with its fp32 parts), 4 = fp32 (CPU)."""
    numbers = (ACT_D * cfg.dim + ACT_F * cfg.ffn) * tokens + ACT_TEXT * cfg.dim * text_tokens
    fp32_extra = ACT_FP32_D * cfg.dim * tokens * (4 - bytes_per)   # the parts that stay fp32 under autocast
    return numbers * bytes_per + fp32_extra


def plan(cfg, tokens: dict, gpus: int = 1, batch: int = 1, grad_ckpt: bool = False, seq_parallel: int = 1,
         bytes_per: int = 2) -> dict:
    """Bytes per GPU of each item, and the peak. `tokens` as build.full_token_counts / toy_token_counts."""
    c = counts(cfg)
    n_tokens = (tokens["video_tokens"] + tokens["ref_video_tokens"] + tokens["audio_tokens"] +
                tokens["ref_audio_tokens"])
    local_tokens = -(-n_tokens // seq_parallel)                     # this rank's share of each tower's tokens
    per_layer = activation_bytes_per_layer(cfg, local_tokens, tokens["text_tokens"], bytes_per) * batch
    kept = cfg.dim * local_tokens * 4 * batch                       # one layer's input, the fp32 residual stream
    base_bytes = 2 if cfg.lora_rank and bytes_per == 2 else 4       # LoRA: the frozen base in bf16 on GPUs
    sharded = gpus > 1
    out = dict(
        parameters=(c["frozen"] * base_bytes + c["trains"] * 4) / gpus,
        gradients=c["trains"] * 4 / gpus,
        optimizer=c["trains"] * 8 / gpus,
        ema=c["trains"] * 4 / gpus,
        gathered_layers=2 * c["layer"] * bytes_per if sharded else 0,
        root_unit=c["root"] * bytes_per if sharded else 0,
        reduce_scatter=2 * min(c["layer"], c["trains"] / cfg.layers) * 4 if sharded else 0,  # LoRA: adapters only
        activations_per_layer=per_layer,
        activations=(cfg.layers * kept + per_layer) if grad_ckpt else cfg.layers * per_layer,
        backward_temporaries=per_layer,
        cuda_nccl=(CUDA_CONTEXT + (NCCL_BUFFERS if sharded else 0)) if bytes_per == 2 else 0,
    )
    out["peak"] = sum(v for k, v in out.items() if k != "activations_per_layer")
    return dict(out, trains=c["trains"], frozen=c["frozen"], tokens=n_tokens, local_tokens=local_tokens)


def print_plan(name: str, cfg, tokens: dict, gpus: int, batch: int, grad_ckpt: bool, seq_parallel: int):
    p = plan(cfg, tokens, gpus, batch, grad_ckpt, seq_parallel)
    gb = lambda x: f"{x / 1e9:9.2f} GB"  # noqa: E731
    print(f"memory per GPU: --config {name}, {gpus} GPU(s), batch {batch} per GPU, lora_rank {cfg.lora_rank}, "
          f"grad_ckpt {grad_ckpt}, seq_parallel {seq_parallel}; {p['tokens']:,} tokens a sample "
          f"({p['local_tokens']:,} per rank); {p['trains']:,} parameters train, {p['frozen']:,} frozen")
    for key in ("parameters", "gradients", "optimizer", "ema", "gathered_layers", "root_unit", "reduce_scatter",
                "activations_per_layer", "activations", "backward_temporaries", "cuda_nccl", "peak"):
        print(f"  {key:22s} {gb(p[key])}")
    return p


def with_lora(cfg, rank: int):
    return dataclasses.replace(cfg, lora_rank=rank) if rank else cfg
