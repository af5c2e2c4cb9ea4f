"""Seeding and RNG state capture, so a resumed run draws the same random numbers."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from src.utils.distributed import launched_by_torchrun


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (an error where an op has none).

    Off, nothing is touched: torch.use_deterministic_algorithms imports torch's
    compiler (over 2 s of start-up) even to set False.
    """
    if not enabled:
        return
    # cuBLAS needs this to be deterministic; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": _cuda_rng_states(),
    }


def _cuda_rng_states() -> list[torch.Tensor]:
    if not torch.cuda.is_available():
        return []
    if launched_by_torchrun():  # this process's own GPU: touching the others would open a context on each
        return [torch.cuda.get_rng_state()]
    return torch.cuda.get_rng_state_all()


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if not state["cuda"] or not torch.cuda.is_available():
        return
    if launched_by_torchrun() and len(state["cuda"]) == 1:
        torch.cuda.set_rng_state(state["cuda"][0])
    elif len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_rng_state(state: Any) -> None:
    """Raise (TypeError, ValueError, KeyError, RuntimeError, ...) unless `set_rng_state`
    can apply `state` (read from a checkpoint). It is tried on fresh generators, so the
    global ones are left alone; CUDA states can only be checked for their type here."""
    random.Random().setstate(_python_state(state["python"]))
    np.random.RandomState().set_state(_numpy_state(state["numpy"]))
    torch.Generator().set_state(state["torch"])
    if not isinstance(state["cuda"], list) or not all(torch.is_tensor(s) and s.dtype == torch.uint8 for s in state["cuda"]):
        raise TypeError("its cuda entry is not a list of byte tensors")


def _python_state(py: dict[str, Any]) -> tuple[Any, ...]:
    return (py["version"], tuple(py["state"]), py["gauss"])


def _numpy_state(npy: dict[str, Any]) -> dict[str, Any]:
    return {
        "bit_generator": npy["bit_generator"],
        "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
        "has_gauss": npy["has_gauss"],
        "gauss": npy["gauss"],
    }
