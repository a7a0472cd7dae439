"""Sharded checkpoints of FSDP2 runs (`torch.distributed.checkpoint`, DCP), and turning one into a ckpt.pt.

Why: at Ovi's size a run's state is ~188 GB (fp32 weights, EMA and Adam's two moments, 16 bytes a
parameter). Gathering it onto rank 0's host to write one file takes minutes while the other ranks wait in
a barrier (NCCL's default timeout is 10 minutes), and under LoRA it would gather the 23 GB frozen base at
every save only to throw it away. With DCP every rank writes its own shards, in parallel, and nothing is
gathered:

  out_dir/ckpt_sharded/        .metadata + one __R_0.distcp per rank (DCP's layout), plus meta.pt
    model/NAME                 each rank's rows of every parameter that trains (LoRA: adapters and
                               additions only; the frozen base is named by meta.pt's lora_base)
    ema/NAME                   the EMA, sharded like its parameter
    optim/NAME/KEY             AdamW's state (step, exp_avg, exp_avg_sq) of every parameter that has one
    meta.pt                    step, RNG, configs, log window, data position (rank 0; weights_only-readable)

Resume is exact: the same tensors come back into the same shards (DCP also reshards onto another number
of ranks). Optimizer state is saved per parameter *name*, and only where AdamW has created it, so a
parameter that never had a gradient gets its state on its first gradient, as in an uninterrupted run.

Atomic: the folder is written as ckpt_sharded.tmp and swapped in by rank 0 once every rank has finished,
so a kill at any moment leaves the previous checkpoint whole. A shared filesystem is assumed (every rank
must see the folder, as with any multi-node DCP checkpoint).

`python sharded.py out/run/ckpt_sharded` consolidates one into the single file sample.py, bench.py and
--init_from read (out/run/ckpt.pt: weights and EMA, no optimizer). It reads only those, on one process,
without a process group: ~94 GB of host memory at Ovi's size (`--what ema`: half).
"""
from __future__ import annotations

import argparse
import os
import shutil

import torch
import torch.distributed as dist

NAME = "ckpt_sharded"
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


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


def flat_state(net, ema: dict, opt) -> dict:
    """The run's tensors as one flat dict of this rank's shards (DTensors under FSDP2), keyed as above."""
    params = dict(net.named_parameters())
    state = {f"model/{n}": p for n, p in params.items() if p.requires_grad}
    state.update({f"ema/{n}": e for n, e in ema.items()})
    for n, p in params.items():
        for key, value in opt.state.get(p, {}).items():
            state[f"optim/{n}/{key}"] = value
    return state


def optimizer_keys(net, opt) -> dict:
    """{parameter name: the AdamW state keys it has}: which Adam states exist (a resume recreates those)."""
    return {n: sorted(opt.state[p]) for n, p in net.named_parameters() if p in opt.state}


def swap_in(tmp: str, final: str):
    """Replace `final` by the finished `tmp` folder: the old one stays whole until the new one is in place."""
    old = final + ".old"
    if os.path.isdir(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: str):
    """A kill between swap_in's two renames leaves only NAME.old: put it back (rank 0, before anything reads)."""
    if not os.path.isdir(folder) and os.path.isdir(folder + ".old"):
        os.replace(folder + ".old", folder)
        print(f"note: restored {folder} from {folder}.old, left by a save that was interrupted")
    shutil.rmtree(folder + ".tmp", ignore_errors=True)


def save(net, ema: dict, opt, meta: dict, folder: str, rank: int):
    """Every rank writes its shards into folder.tmp; rank 0 adds meta.pt and swaps the folder in."""
    import torch.distributed.checkpoint as dcp
    tmp = folder + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save(flat_state(net, ema, opt), checkpoint_id=tmp)          # collective: returns when all have written
    if rank == 0:
        torch.save(dict(meta, optimizer_keys=optimizer_keys(net, opt)), os.path.join(tmp, "meta.pt"))
        swap_in(tmp, folder)
    dist.barrier()


def read_meta(folder: str) -> dict:
    """meta.pt of a sharded checkpoint (the configs a resume builds the model from)."""
    return torch.load(os.path.join(folder, "meta.pt"), map_location="cpu", weights_only=True)


@torch.no_grad()
def load(net, ema: dict, opt, folder: str, meta: dict):
    """Fill this rank's shards of the weights that train, the EMA and AdamW's state from `folder`, in place.
    AdamW's state is created (zeros, the step count 0) for the parameters that had one, then loaded."""
    import torch.distributed.checkpoint as dcp
    params = dict(net.named_parameters())
    for n, keys in meta["optimizer_keys"].items():
        p = params[n]
        opt.state[p] = {k: torch.zeros((), dtype=torch.float32) if k == "step" else torch.zeros_like(p)
                        for k in keys}
    dcp.load(flat_state(net, ema, opt), checkpoint_id=folder)


def consolidate(folder: str, out_path: str, what: str = "both") -> dict:
    """One ckpt.pt from a sharded checkpoint, on one process: the full weights (`model`) and EMA (`ema`),
    the configs and step; the optimizer stays behind (a resume reads the sharded folder)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    meta = read_meta(folder)
    stored = dcp.FileSystemReader(folder).read_metadata().state_dict_metadata
    wanted = ("model/", "ema/") if what == "both" else (f"{what}/",)
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in stored.items()
             if k.startswith(wanted) and isinstance(m, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=folder, no_dist=True)              # whole tensors, no process group
    split = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    model_state = split("model/") or split("ema/")                    # --what ema: the EMA stands in for both
    ckpt = dict(model=model_state, ema=split("ema/") or model_state,
                **{k: v for k, v in meta.items() if k not in ("optimizer_keys", "rng")})
    from checkpoint import tensor_checksums  # (checkpoint.py imports this file)
    ckpt["checksums"] = tensor_checksums(ckpt)
    tmp = out_path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, out_path)
    return ckpt


def main():
    parser = argparse.ArgumentParser(description="Consolidate a sharded (FSDP2) checkpoint into one ckpt.pt.")
    parser.add_argument("folder", help="the run's ckpt_sharded folder (train.py --fsdp true writes it)")
    parser.add_argument("--out", default="", help="the file to write (default: ckpt.pt beside the folder)")
    parser.add_argument("--what", choices=["both", "model", "ema"], default="both",
                        help="which weights to gather (ema alone needs half the host memory; it serves both)")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.folder, ".metadata")) or not os.path.isfile(os.path.join(args.folder, "meta.pt")):
        parser.exit(2, f"error: {args.folder}: not a sharded checkpoint (no .metadata / meta.pt); train.py --fsdp true "
                       f"writes OUT_DIR/{NAME}\n")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.folder)), "ckpt.pt")
    ckpt = consolidate(args.folder, out, args.what)
    print(f"wrote {out}: step {ckpt['step']}, {len(ckpt['model'])} tensors"
          + (f" (LoRA adapters of {ckpt['lora_base']})" if "lora_base" in ckpt else ""))


if __name__ == "__main__":
    main()
