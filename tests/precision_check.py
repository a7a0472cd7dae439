"""Run by tests/test_precision.py under torchrun: the tiny model wrapped by train.build_model exactly as a
GPU run wraps it (FSDP2 with the --precision policy, activation checkpointing inside each layer), one
forward and backward under that precision's autocast on 2 gloo ranks. Rank 0 saves the loss, and the flow
time that reached the timestep features (FSDP2 must not round it to bf16).

    torchrun --nproc_per_node=2 tests/precision_check.py OUT.pt bf16|fp32
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model  # noqa: E402
import precision  # noqa: E402
import train  # noqa: E402
from tiny import TINY, perturbed, tiny_batch  # noqa: E402


def main(out_path, regime):
    rank, world, device = train.setup_distributed()
    torch.set_num_threads(1)
    seen = []
    features = model.timestep_features
    model.timestep_features = lambda t, dim: seen.append(t.detach().clone()) or features(t, dim)
    tc = train.TrainConfig(fsdp=True, grad_ckpt=True, precision=regime, cond_drop=0.0)
    net = train.build_model(TINY, tc, world, device)
    net.init_weights(seed=0)
    perturbed(net)  # every path active (zero-init gates and heads would hide most of them); rows of one noise
    batch = tiny_batch(batch_size=2, scene="dialogue")
    with precision.autocast(device, regime):
        loss, stats = train.flow_loss(net, batch, tc, torch.Generator().manual_seed(rank), device)
    loss.backward()
    grads_finite = all(torch.isfinite(p.grad.to_local()).all() for p in net.parameters() if p.grad is not None)
    if rank == 0:
        torch.save(dict(loss=loss.detach().float(), t=stats["t"], seen=seen[0], grads_finite=grads_finite), out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
