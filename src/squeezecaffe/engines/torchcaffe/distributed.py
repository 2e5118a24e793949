"""Data-parallel training as Caffe's multi-GPU solver does it, on torch.distributed (NCCL on GPUs, gloo on CPUs).

Started by `torchrun --nproc_per_node N -m squeezecaffe train ...` (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK).
Caffe's semantics, kept here:
- each of the N solvers runs `batch_size x iter_size` images per iteration, so the global batch is
  batch x iter_size x N;
- the Data layers interleave records: rank r of N takes the records whose position is r modulo N, so the
  union of one iteration's rank batches is exactly the consecutive records one process with batch x N reads
  (and, as crop/mirror draws are seeded per record position, transformed identically);
- after the iter_size passes the gradients are averaged over the ranks (Caffe scales the summed diffs by
  1/solver_count) before clipping, weight decay and the update, which every rank then applies identically;
- only rank 0 writes snapshots, logs and plots.
With BatchNorm in TRAIN each rank normalises over its own batch (as in Caffe), so such nets are not
numerically a single process with N x the batch; nets without it are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The torchrun environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world) if world > 1 else Dist()


def init(device: str) -> tuple[Dist, str]:
    """Join the process group when launched by torchrun; returns the context and this rank's device."""
    ctx = from_env()
    if not ctx.enabled:
        return ctx, device
    if device.startswith("cuda"):
        # more ranks than GPUs (e.g. 2 ranks sharing one GPU to test): ranks share devices round-robin, and
        # since NCCL refuses two ranks on one device, they talk through gloo
        gpus = max(1, torch.cuda.device_count())
        local = int(os.environ.get("LOCAL_RANK", "0"))
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(ctx.world)))
        torch.cuda.set_device(local % gpus)
        device = f"cuda:{local % gpus}"
        backend = "nccl" if per_node <= gpus else "gloo"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return ctx, device


def average_(tensors: list[torch.Tensor], ctx: Dist) -> None:
    """In place: every tensor becomes its mean over the ranks (one all-reduce of a flat buffer)."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def mean_tensor(value: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """The mean of a tensor over the ranks, left on its device (no host sync under NCCL)."""
    if not ctx.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world


def broadcast_object(obj, ctx: Dist):
    """Rank 0's value on every rank (a run directory name, say)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
