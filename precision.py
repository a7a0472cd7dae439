"""CUDA's precision regime, selectable on any device: `--precision bf16 | fp32`.

A GPU trains Ovi-sized models in bf16: matrix multiplies and attention run in bfloat16 (half the memory
traffic, the tensor cores), while everything that accumulates error stays in fp32. The regime has three
parts, and `--precision bf16` switches on all three on *any* device, so a laptop can rehearse what a
GPU node runs (a CPU has bf16 kernels too; they are slower, not different):

  autocast       `torch.autocast(device, bfloat16)`: linear layers, convolutions, matmuls and SDPA take
                 bf16 inputs (autocast casts them); their outputs are bf16
  FSDP2 params   `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: each layer is all-gathered
                 in bf16 to compute it, gradients are reduce-scattered in fp32 into fp32 shards, and the
                 optimizer updates fp32 master weights
  LoRA base      the frozen backbone is *stored* in bf16 (2 bytes a parameter, memory.py); the adapters
                 and our additions train in fp32

fp32 islands. Wan (and so Ovi) computes its norms, the adaLN modulation, RoPE and the timestep features in
fp32 *explicitly*, whatever autocast would do: autocast's op lists differ between devices (CUDA runs
`layer_norm` in fp32, the CPU list does not name it), and under FSDP2 or a bf16 LoRA base the weights of
these modules are bf16 themselves, so "leave it to autocast" crashes (a bf16 weight meets an fp32 input)
or silently computes in bf16. So this file holds modules that cast *both* input and weight to fp32, and
model.py uses them everywhere it normalises or modulates:

  LayerNorm32, RMSNorm32   F.layer_norm / F.rms_norm on fp32 input and fp32 weight (the fused kernels),
                           the result back in the input's dtype
  linear32                 an fp32 linear map, for the timestep MLP and the output head (Wan's Head runs
                           under `autocast(float32)`)

The residual stream follows Wan too: the gates are fp32, so `x + gate * y` promotes the stream to fp32,
and only the inputs of the matrix multiplies are bf16.

On CUDA `--precision` defaults to bf16 (and TF32 is allowed for whatever stays fp32); elsewhere to fp32,
where nothing changes: every cast below is then a no-op, and fp32 results are bitwise those of before.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

CHOICES = ("bf16", "fp32")


def default_precision(device) -> str:
    """bf16 on CUDA (what GPUs train in), fp32 elsewhere (a CPU gains nothing from bf16 but the rehearsal)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def resolve(precision: str, device) -> str:
    """The flag's value, with "" meaning the device's default."""
    return precision or default_precision(device)


def autocast(device, precision: str):
    """The autocast context of a forward pass: bf16 autocast under --precision bf16 on any device type."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matrix multiplies run in (and FSDP2 gathers parameters in, and a LoRA base is stored in)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def fsdp_policy(precision: str):
    """FSDP2's mixed precision: bf16 gathered parameters and fp32 gradient reduction under bf16.

    cast_forward_inputs=False: FSDP2 would otherwise cast every float tensor handed to a unit -- the flow
    time t (1000 t feeds the sinusoids: 0.7431 arrives as 0.7422, a random phase in the fast channels),
    the fp32 modulation rows, RoPE's cos/sin -- to bf16. Autocast casts exactly the matmul inputs instead.
    It also keeps activation checkpointing exact: inputs FSDP casts in forward are not cast again when
    the layer is recomputed (a dtype mismatch `torch.utils.checkpoint` refuses)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    dtype = compute_dtype(precision)
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)


def enable_tf32(device):
    """Let CUDA's fp32 matmuls use TF32 tensor cores (the fp32 islands are tiny; the fp32 run gains most)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def linear32(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x) in fp32 whatever the dtypes of x and the weights (bf16 under FSDP2 or a LoRA base)."""
    with torch.autocast(x.device.type, enabled=False):
        bias = None if layer.bias is None else layer.bias.float()
        return F.linear(x.float(), layer.weight.float(), bias)


class LayerNorm32(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 (input and affine weights), returned in the input's dtype.
    Same parameters and names as nn.LayerNorm, so checkpoints and Ovi's key map are unchanged."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm32(nn.RMSNorm):
    """nn.RMSNorm computed in fp32 (Wan: `self._norm(x.float()).type_as(x) * self.weight`), so the fused
    kernel runs (fp32 input, fp32 weight) instead of the unfused mixed-dtype path."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)
