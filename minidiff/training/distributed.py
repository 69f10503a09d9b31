"""Several processes, one training run: the small helpers the loop needs for DistributedDataParallel.

    torchrun --nproc_per_node=4 -m minidiff train --preset tutorial --data DIR          # one machine, 4 GPUs
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \
        --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m minidiff train ...              # two machines

torchrun starts one process per GPU and gives each the environment variables RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_from_env` reads them and joins the process group (NCCL on
GPUs, gloo on CPUs). Without them (a plain `python -m minidiff train`) every helper here is a no-op for a
world of one process, so the loop has a single code path.

How the work is split, so that N processes compute what one process would:
    the loop draws each global micro-batch (image indices, eps, t) exactly as a single process does, from
    generators seeded identically on every rank; rank r keeps the rows r, r + N, r + 2N, ... (`shard`).
    DDP averages the gradients over the N processes, so each rank weights its loss by
    n_r * N / n (its share of the n rows): sum_r (n_r N / n) grad L_r / N = the gradient of the whole batch.
So `--batch-size` is the global batch, the weights after K steps equal a single-process run's up to the
order of float additions, and a checkpoint (the unwrapped module, optimizer, generators) does not depend on
the number of processes: written by N, it resumes on M.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_mean",
    "barrier",
    "check_same_on_all_ranks",
    "cleanup",
    "init_from_env",
    "is_distributed",
    "is_main",
    "local_rank",
    "rank",
    "shard",
    "unwrap",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """True once this process has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}; expected an integer") from None


def rank() -> int:
    """This process's place in the world, 0..world_size-1 (0 when there is one process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """The process's index on its own machine: which GPU it drives."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0 alone logs, draws sample grids and writes checkpoints and outputs."""
    return rank() == 0


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes (env:// rendezvous) and pick this rank's device.

    Returns (device, started): `device` is cuda:LOCAL_RANK when `device` is a CUDA device without an
    index; `started` says whether this call created the process group (then the caller calls `cleanup`).
    A world of one process (no torchrun, or WORLD_SIZE=1) creates nothing and returns (device, False).
    """
    if world_size() <= 1:
        return device, False
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if dist.is_initialized():  # the caller (a test, a notebook) set the group up itself
        return device, False
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size()} but {name} is not set; start the processes with torchrun "
                "(torchrun --nproc_per_node=N -m minidiff train ...)"
            )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=30))
    return device, True


def cleanup(started: bool, wait: bool = True) -> None:
    """Leave the process group, if `init_from_env` created it. `wait`: first a barrier, so no process
    leaves while rank 0 still writes the outputs (skipped after an error: the others may never come)."""
    if started and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` in a multi-process run, `module` itself otherwise.
    DDP broadcasts rank 0's parameters and buffers at construction, then averages gradients in backward."""
    if not is_distributed():
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper: its state_dict has no `module.` prefix, so checkpoints and
    pipeline folders are the same whatever the number of processes."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def shard(
    tensors: tuple[torch.Tensor, ...], rank_: int | None = None, world_size_: int | None = None
) -> tuple[tuple[torch.Tensor, ...], float]:
    """This rank's rows of a global micro-batch, and the weight of its loss.

    Rank r keeps rows r, r + N, r + 2N, ... of every tensor (all of the same length n). The weight is
    n_r * N / n, so that DDP's average of the weighted per-rank mean losses equals the mean over all n
    rows, even when n is not a multiple of N (then the ranks hold n_r = floor or ceil of n / N rows).
    A rank left without rows (n < N) gets row 0 with weight 0: a zero gradient, but it takes part in the
    all-reduce every rank must join.
    """
    r = rank() if rank_ is None else rank_
    n_procs = world_size() if world_size_ is None else world_size_
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"tensors of lengths {[len(t) for t in tensors]}; expected one length")
    if n_procs == 1:
        return tensors, 1.0
    if r >= n:  # a short last batch with fewer rows than processes: run row 0 with weight 0, so that
        return tuple(t[:1] for t in tensors), 0.0  # this rank still joins DDP's gradient average
    rows = tuple(t[r::n_procs] for t in tensors)
    return rows, len(rows[0]) * n_procs / n


def check_same_on_all_ranks(value: int, what: str, device: torch.device) -> None:
    """Raise on every rank when the processes disagree on `value` (e.g. the step they resume from: with
    several machines, each reads <out_dir>/checkpoints, so out_dir must be a folder they all share)."""
    if not is_distributed():
        return
    extremes = torch.tensor([value, -value], dtype=torch.int64, device=device)  # max and -min in one call
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    high, low = int(extremes[0]), -int(extremes[1])  # one host sync, once per run
    if high != low:
        raise RuntimeError(
            f"{what} differs between the processes ({low}..{high}; this is rank {rank()} with {value}); "
            "every process must read the same out_dir: on several machines, put it on a shared filesystem"
        )


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over the processes (the logged loss); `value` itself for one process.
    No host sync on NCCL: the reduction is queued on the device like any kernel."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` of all processes (one all-reduce and one host read); `value` for one process."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
