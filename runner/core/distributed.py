"""Data parallelism inside a launched run: rank and world size, the process group, gradient all-reduce.

A run started by ``torchrun`` or ``accelerate launch`` (:mod:`runner.core.launch`) has ``RANK`` and
``WORLD_SIZE`` in its environment. :func:`init` joins the process group (gloo on CPU, nccl on GPU); with one
process every helper here is a no-op that returns its input, so single-process results stay bit-identical.
Rank 0 writes the run's outputs; other ranks keep a private metric log under ``<run dir>/ranks/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True inside a multi-process run whose process group is up."""
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init(device: str) -> bool:
    """Join the process group of a launched multi-process run (gloo on CPU, nccl on CUDA); False if single."""
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cpu" or not torch.cuda.is_available():
            dist.init_process_group("gloo")
        else:
            torch.cuda.set_device(local_rank())
            dist.init_process_group("nccl")
    return True


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: Any) -> Any:
    """The sum of a tensor over ranks (a new tensor; ``t`` itself with one process)."""
    if not active():
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(value: int) -> int:
    if not active():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_grads(params: Iterable[Any]) -> None:
    """Sum every parameter's gradient over ranks (a missing gradient counts as zero). Losses are scaled by the
    global normaliser beforehand, so the sum is the gradient of the whole global batch."""
    if not active():
        return
    import torch
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def shard(items: Sequence[T], group_size: int = 1) -> list[T]:
    """This rank's share of a global batch: whole consecutive groups of ``group_size``, dealt round-robin."""
    n = world_size()
    if n <= 1:
        return list(items)
    groups = [list(items[i:i + group_size]) for i in range(0, len(items), group_size)]
    return [x for g in groups[rank()::n] for x in g]


def rank_seed(seed: int) -> int:
    """A per-rank seed for sampling (rollouts differ across ranks); ``seed`` itself with one process."""
    if world_size() <= 1:
        return seed
    from runner.core.seeding import derive_seed

    return derive_seed(seed, "rank", rank()) % 2**31


def parameter_digest(params: Iterable[Any]) -> float:
    """A float64 sum of parameters: equal on every rank exactly when data-parallel replicas agree."""
    return float(sum(p.detach().double().sum().item() for p in params))
