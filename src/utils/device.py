"""Choosing the device from `trainer.device` (train.py) or `device` (test.py)."""

from __future__ import annotations

import os
from typing import Any

import torch

from src.utils.distributed import launched_by_torchrun, local_rank
from src.utils.errors import UserError


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """`auto` picks cuda > mps > cpu; an explicit device must exist on this machine.
    Under torchrun, `auto` and `cuda` mean this process's own GPU (LOCAL_RANK).
    `key` is the config key the name came from, for the error messages."""
    if launched_by_torchrun() and torch.cuda.is_available():
        if name in ("auto", "cuda"):
            return torch.device("cuda", local_rank())
        if name.startswith("cuda:"):
            raise UserError(
                f"{key}={name!r} under torchrun: each process uses the GPU of its LOCAL_RANK. "
                f"Use {key}=auto or cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)."
            )
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"{key}={name!r} is not a device name: use auto, cpu, cuda, cuda:N or mps."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}={name!r} but CUDA is not available here: use {key}=auto or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"{key}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key}={name!r} but MPS is not available here: use {key}=auto or cpu.")
    return device


def set_thread_share(launcher: Any) -> None:
    """Under a launcher that runs N jobs at once on this machine (joblib), give each
    job its share of the CPU threads, so N jobs do not oversubscribe the cores."""
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")).lower() else None
    if not n_jobs:
        return
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // parallel))
