"""Run by tests/test_train.py under torchrun: three optimizer steps of the tiny model on a fixed
global batch of 4, as 1 process or as 2 ranks of 2 (DDP, FSDP2, or FSDP2 with LoRA adapters on a frozen
base), then rank 0 saves the weights.

    torchrun --nproc_per_node=2 tests/dist_check.py OUT.pt [ddp|fsdp|fsdp_lora]
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402
import checkpoint  # noqa: E402
import lora  # noqa: E402
import train  # noqa: E402
from conditioning import Conditioning  # noqa: E402
from tiny import TINY, perturbed, tiny_batch  # noqa: E402


def main(out_path, mode):
    rank, world, device = train.setup_distributed()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import dataclasses
    net = build.build_model(dataclasses.replace(TINY, lora_rank=4) if mode == "fsdp_lora" else TINY)
    if mode == "fsdp_lora":  # the frozen base; B != 0 so that A gets a gradient too
        for name, p in net.named_parameters():
            p.requires_grad_(lora.trains(net, name))
        perturbed(net, replace=True, only=("lora_b",))
    wrapped = net
    if world > 1 and mode.startswith("fsdp"):
        from torch.distributed.fsdp import fully_shard
        for layer in net.layers:
            fully_shard(layer)
        fully_shard(net)
    elif world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    # SGD: the check is that gradients average correctly; Adam would amplify rounding on near-zero grads
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    batch = tiny_batch(batch_size=4, scene="single")
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(4, generator=gen)
    noise_v, noise_a = torch.randn(batch["video"].shape, generator=gen), torch.randn(batch["audio"].shape, generator=gen)
    part = slice(rank * 4 // world, (rank + 1) * 4 // world)          # this rank's share of the global batch
    cond = Conditioning.from_batch(batch)[part]
    x_v, x_a = batch["video"][part], batch["audio"][part]
    tv = t[part]
    for _ in range(3):
        xt_v = (1 - tv.view(-1, 1, 1, 1, 1)) * x_v + tv.view(-1, 1, 1, 1, 1) * noise_v[part]
        xt_a = (1 - tv.view(-1, 1, 1)) * x_a + tv.view(-1, 1, 1) * noise_a[part]
        pv, pa = wrapped(xt_v, xt_a, tv, cond)
        loss = F.mse_loss(pv, noise_v[part] - x_v) + F.mse_loss(pa, noise_a[part] - x_a)
        loss.backward()
        opt.step()
        opt.zero_grad()
    state = {k: checkpoint.full_tensor(v).detach().clone() for k, v in net.state_dict().items()}
    if rank == 0:
        torch.save(state, out_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ddp")
