"""Checkpoint files: tensors and plain values only, written atomically, loaded safely.

A checkpoint is one dict (see ARCHITECTURE.md, "Checkpoint format"). It is always
loaded with `weights_only=True`, so a file can never run code when it is read.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "config", "epoch", "step")


def save_checkpoint(state: Mapping[str, Any], *paths: Path) -> None:
    """Serialise `state` once and write it to each path atomically (temp file, fsync,
    rename), so a crash at any moment leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    for path in paths:
        atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of this framework; any problem becomes a clear UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint not found: {str(path)!r} is not a file. Pass the path of a .pt file written by train.py, e.g. saved/runs/<run>/<time>/checkpoints/best.pt.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not an object that would run code: a damaged file
            raise UserError(f"{str(path)!r} is not a readable checkpoint (truncated or corrupt file?): {_unpickling_reason(err)}.") from None
        raise UserError(
            f"Refusing to load {str(path)!r}: it contains objects other than tensors and plain values "
            f"({_unpickling_reason(err)}). Checkpoints of this framework never hold code; "
            f"this file is either from another tool or has been tampered with."
        ) from None
    except Exception as err:  # truncated zip, plain text, legacy garbage: torch raises many types
        reason = one_line(err, limit=200)
        raise UserError(f"{str(path)!r} is not a readable checkpoint (truncated or corrupt file?): {reason}.") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"{str(path)!r} is not a checkpoint of this framework: expected a dict with the keys "
            f"{', '.join(REQUIRED_KEYS)}, found {found}."
        )
    if not isinstance(state["format_version"], int) or state["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"{str(path)!r} has checkpoint format_version={state['format_version']!r}, newer than the "
            f"{FORMAT_VERSION} this version of the framework reads. Upgrade the framework to load it."
        )
    return state


def _unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only error that says what it met, without the advice
    around it (which suggests weights_only=False: never here)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation"))]
    return one_line(Exception(said[0] if said else lines[0] if lines else "weights_only load failed"), limit=200)


# Wrappers that prefix every key: torch.compile and (Distributed)DataParallel.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Load weights, or explain exactly which keys or shapes do not fit the model."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches {_few(shapes)}")
        raise UserError(
            f"The weights in {str(path)!r} do not fit the model {type(model).__name__}: {'; '.join(parts)}. "
            f"Use the model config the checkpoint was trained with."
        )
    model.load_state_dict(state_dict)


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
