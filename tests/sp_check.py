"""Run by tests/test_seqpar.py under torchrun: one forward and backward of the tiny model on a fixed batch
(two subjects, padded references and lines), on 1 rank, or on 2 ranks sharing the sample with sequence
parallelism; rank 0 saves the loss and the gradients (summed over the sequence group, as train.py's
DDP / FSDP2 reduction does once the loss is scaled by N).

    torchrun --nproc_per_node=2 tests/sp_check.py OUT.pt
"""
import dataclasses
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402
import seqpar  # noqa: E402
import train  # noqa: E402
from conditioning import Conditioning  # noqa: E402
from tiny import TINY, perturbed, tiny_batch  # noqa: E402


def main(out_path):
    rank, world, _ = train.setup_distributed()
    torch.set_num_threads(1)
    net = build.build_model(dataclasses.replace(TINY, heads=4))
    perturbed(net)  # every path active (zero-init gates and heads would hide most of them)
    if world > 1:
        seqpar.apply(net, world)
    batch = tiny_batch(batch_size=2, scene="dialogue", min_subjects=1, max_subjects=3)
    cond = Conditioning.from_batch(batch).drop_references(torch.tensor([False, True]), images=False)
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(2, generator=gen)
    noise_v, noise_a = torch.randn(batch["video"].shape, generator=gen), torch.randn(batch["audio"].shape, generator=gen)
    xt_v = (1 - t.view(-1, 1, 1, 1, 1)) * batch["video"] + t.view(-1, 1, 1, 1, 1) * noise_v
    xt_a = (1 - t.view(-1, 1, 1)) * batch["audio"] + t.view(-1, 1, 1) * noise_a
    pv, pa = net(xt_v, xt_a, t, cond)
    loss = F.mse_loss(pv, noise_v - batch["video"]) + F.mse_loss(pa, noise_a - batch["audio"])
    loss.backward()
    grads = {}
    for name, p in net.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if world > 1:
            dist.all_reduce(g, group=net.sp.group)   # each rank's gradient is its tokens' share
        grads[name] = g
    if rank == 0:
        torch.save(dict(loss=loss.detach(), grads=grads, subjects=cond.subjects), out_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
