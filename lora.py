"""LoRA: low-rank adapters on the twin tower's linear layers, from scratch (Hu et al. 2021, "LoRA").

Fine-tuning all 11.7B weights of Ovi needs their gradients and Adam state on top of the weights: about
16 bytes a parameter, 187 GB before activations. LoRA freezes the pretrained weight W (d_out x d_in) and
learns a low-rank update instead:

    y = W x + b + (alpha / r) * B (A x),     A: (r, d_in),  B: (d_out, r),  r << d

A starts random and B at zero, so at the start the adapted layer is exactly the pretrained one (tested).
After training, W + (alpha / r) B A is an ordinary weight again (`merge`): sampling then costs nothing
extra.

Where the adapters go (`--lora_targets`, any of):
  self    self-attention q, k, v, o of both towers
  cross   text cross-attention q, o (the text k, v read the prompt: our prompt side trains fully anyway)
  fusion  the cross-tower k, v (the "fusion" weights that read the other tower)
  ffn     both FFN matrices
Our additions (the prompt side, task inputs, the presence identity stream) are new, not pretrained: they
train fully, as every paper trains them. Parameter names stay those of the base model (`q.weight` is the
frozen W, `q.lora_a` / `q.lora_b` the adapter), so Ovi's checkpoint loads unchanged.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# target -> the module names (inside layers.N.video / layers.N.audio) that get an adapter
TARGETS = {
    "self": r"self_attn\.(q|k|v|o)",
    "cross": r"cross_attn\.(q|o)",
    "fusion": r"cross_attn\.(k_fusion|v_fusion)",
    "ffn": r"ffn\.(0|2)",
}


@dataclass
class LoRAConfig:
    # LoRA: low-rank adapters on the backbone's linear layers, the backbone frozen
    lora_rank: int = 0             # 0 = no adapters (full fine-tuning)
    lora_alpha: float = 0.0        # the update is scaled by alpha / rank (0 = rank: scale 1)
    lora_targets: str = "self,cross,fusion,ffn"  # which linear layers: any of self, cross, fusion, ffn


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update; `weight` and `bias` are the frozen base."""

    rank: int
    scale: float

    def forward(self, x):
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale   # B (A x) * alpha / r

    def init_param(self, leaf: str, shape: tuple, gen: torch.Generator):
        """The adapters' initial values (model.TwinTower.initial_value asks; None: the base's usual rule).
        A: uniform in +-1/sqrt(d_in) (PyTorch's Linear default); B: zero, so B A = 0 at the start."""
        if leaf == "lora_b":
            return torch.zeros(shape)
        if leaf == "lora_a":
            return (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(shape[1])
        return None


def target_pattern(targets: str) -> re.Pattern:
    """A regex for the full names of the linear layers `targets` ("self,cross,fusion,ffn") selects: blocks
    of both towers, never the identity stream (an addition that trains fully)."""
    parts = [TARGETS[t.strip()] for t in targets.split(",") if t.strip()]
    return re.compile(r"layers\.\d+\.(video|audio)\.(" + "|".join(parts) + r")")


def add_adapters(net: nn.Module, rank: int, alpha: float, targets: str) -> list[str]:
    """Turn every selected nn.Linear of `net` into a LoRALinear in place (same weight and bias, on the same
    device, meta included). Returns the adapted module names. Initial values come from init_weights."""
    pattern = target_pattern(targets)
    adapted = []
    for name, module in net.named_modules():
        if type(module) is nn.Linear and pattern.fullmatch(name):
            module.__class__ = LoRALinear        # same object, same parameters: names and FSDP units unchanged
            device, dtype = module.weight.device, module.weight.dtype
            module.lora_a = nn.Parameter(torch.empty(rank, module.in_features, device=device, dtype=dtype))
            module.lora_b = nn.Parameter(torch.empty(module.out_features, rank, device=device, dtype=dtype))
            module.rank, module.scale = rank, (alpha or rank) / rank
            adapted.append(name)
    return adapted


def is_adapter(name: str) -> bool:
    return name.endswith((".lora_a", ".lora_b"))


def trains(net: nn.Module, name: str) -> bool:
    """Does parameter `name` train? All do, except the backbone under LoRA (frozen: the adapters learn)."""
    return not net.cfg.lora_rank or net.is_addition(name) or is_adapter(name)


@torch.no_grad()
def merge(net: nn.Module) -> int:
    """W <- W + (alpha / r) B A in every LoRALinear, which becomes a plain nn.Linear again. Returns how many."""
    merged = 0
    for module in net.modules():
        if isinstance(module, LoRALinear):
            module.weight += (module.lora_b.float() @ module.lora_a.float() * module.scale).to(module.weight.dtype)
            del module.lora_a, module.lora_b
            module.__class__ = nn.Linear
            merged += 1
    return merged
