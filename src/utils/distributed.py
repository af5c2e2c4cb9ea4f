"""Several processes, one run: torch.distributed under `torchrun`.

torchrun starts one process per GPU (or per CPU slot) and tells each its RANK,
LOCAL_RANK and WORLD_SIZE in the environment. Every process computes; rank 0 alone
writes (run folder, checkpoints, TensorBoard, logs). Outside torchrun every helper
here is a no-op and nothing imports torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def rank() -> int:
    """This process's rank under torchrun; 0 otherwise (whatever RANK says: other
    launchers set it for their own purposes)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def local_rank() -> int:
    return int(os.environ["LOCAL_RANK"]) if launched_by_torchrun() else 0


def is_rank_zero() -> bool:
    return rank() == 0


def init_process_group() -> None:
    """Join the process group torchrun describes: NCCL for CUDA tensors where there is
    a GPU, gloo for CPU tensors (and for everything on a CPU-only machine)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def is_distributed() -> bool:
    """Whether this process is one of a torchrun group (a group of one included)."""
    if not launched_by_torchrun():
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, number of ranks) of this process's group; (0, 1) outside torchrun."""
    return (rank(), int(os.environ["WORLD_SIZE"])) if is_distributed() else (0, 1)


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads a dataset), then the other ranks
    (which then find the files)."""
    if not is_rank_zero():
        barrier()
    yield
    if is_rank_zero():
        barrier()


def destroy_process_group() -> None:
    if is_distributed():
        import gc

        import torch.distributed as dist

        # DDP's reducer keeps the group's threads alive; freed only at interpreter exit,
        # after the group is gone, it can abort the process ("terminate called ...").
        gc.collect()
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def sum_across_ranks(tensor: Any) -> Any:
    """The element-wise sum of `tensor` over all ranks (a new tensor; `tensor` itself
    in a single process)."""
    if not is_distributed():
        return tensor
    import torch.distributed as dist

    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def max_across_ranks(value: int) -> int:
    """The largest of every rank's integer: e.g. whether any rank was signalled."""
    if not is_distributed():
        return value
    import torch
    import torch.distributed as dist

    flag = torch.tensor([value], dtype=torch.int64)  # a CPU tensor: gloo, no GPU sync
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a checkpoint)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
