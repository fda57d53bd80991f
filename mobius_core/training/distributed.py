"""Multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m mobius_core.cli train ...`` (or the ``mobius`` script with
``torchrun --no-python``) sets RANK / WORLD_SIZE / MASTER_ADDR; :func:`init_from_env` joins
the process group (NCCL on GPUs, gloo on CPUs). ``train.batch_size`` stays the global
batch: rank r trains on items r, r+N, ... of the batch a single process would see, so a
run's data does not depend on the number of processes. Every decision that would make
ranks diverge (skip a NaN step, stop at the time budget) is taken collectively.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_from_env(timeout_s: float = 600.0) -> tuple[int, int]:
    """(rank, world size): joins the process group when started by torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(value: float, op: str = "sum") -> float:
    """``value`` reduced over all ranks (sum, max or min); itself in a single process."""
    if rank_world()[1] == 1:
        return value
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=ops[op])
    return float(t.item())


def weights_checksum(model: torch.nn.Module) -> float:
    """A float64 fingerprint of the trainable weights (sum of |w| + sum of w)."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.requires_grad:
            w = p.detach().to(torch.float64)
            total += w.abs().sum().cpu() + w.sum().cpu()
    return float(total)


def check_in_sync(model: torch.nn.Module, rtol: float = 1e-9) -> None:
    """Raise if the ranks' weights differ (they must be identical after every step)."""
    if rank_world()[1] == 1:
        return
    mine = weights_checksum(model)
    low, high = all_reduce(mine, "min"), all_reduce(mine, "max")
    if high - low > rtol * max(abs(high), 1.0):
        raise RuntimeError(
            f"the ranks' weights diverged (checksums {low!r} .. {high!r}); "
            "a rank skipped a step or used other parameters"
        )


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
