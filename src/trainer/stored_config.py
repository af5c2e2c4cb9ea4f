"""The config stored in a checkpoint, checked before anything is built from it.

Your own configs (configs/, --config-dir, the command line) choose code: that is what
`_target_` is for. A checkpoint is data from elsewhere, so every `_target_` in its stored
config, at any depth, must name a class of the kind its place expects (`PLACES`; any
other place, such as a model's argument, takes `NESTED`), and it may hold no `${...}`
interpolation (it is stored resolved; resolving one could read the environment or run
this project's resolvers, which create folders). Its `data.task` is a shipped task's name
or, held to the same rule, the dotted path of a `Task` subclass (`TASK`).

Checking a `_target_` imports its module (running its top-level code), so only what the user
installed or put on PYTHONPATH is imported: its top-level package must be torch, torchvision, `src`,
another installed distribution or a package in a PYTHONPATH folder, never the standard library,
and each dotted part a public name (no `.rel`, `_x`, file).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

# What `instantiate` itself calls to find a `_target_`: the class checked is the class built.
from hydra._internal.utils import _locate
from omegaconf import DictConfig, OmegaConf
from torch import nn, optim
from torch.utils.data import Dataset

from src.trainer.callbacks import Callback
from src.trainer.tasks import TASKS, Task
from src.utils.errors import UserError, one_line


class Kind(NamedTuple):
    """What a `_target_` must be: a class deriving from one of `bases`."""

    name: str
    bases: tuple[type, ...]


MODULE = Kind("an nn.Module class", (nn.Module,))
OPTIMIZER = Kind("a torch.optim.Optimizer class", (optim.Optimizer,))
# ReduceLROnPlateau only derives from LRScheduler since torch 2.2.
SCHEDULER = Kind("a learning-rate scheduler class", (optim.lr_scheduler.LRScheduler, optim.lr_scheduler.ReduceLROnPlateau))
DATASET = Kind("a torch Dataset class", (Dataset,))
# torchvision's v2 transforms are nn.Modules.
TRANSFORM = Kind("a torchvision transform class (an nn.Module)", (nn.Module,))
NESTED = Kind("an nn.Module or Dataset class", (nn.Module, Dataset))
# A plain class with hooks is a callback (or a logger) in your own configs; one named by
# a checkpoint must say it is one.
CALLBACK = Kind("a subclass of src.trainer.callbacks.Callback", (Callback,))
# `data.task`, when it is not a shipped task's name.
TASK = Kind("a subclass of src.trainer.tasks.Task", (Task,))
TASK_PLACE = ("data", "task")
# Sections only a resume builds, with the kind of each of their entries.
RESUME_ONLY = {"callbacks": CALLBACK}
# Never built from a checkpoint: a resume logs to the loggers its command line names.
NEVER_BUILT = ("logger",)

# The places the entry points build from, and the kind each one's `_target_` must be.
PLACES: dict[tuple[str, ...], Kind] = {
    ("model",): MODULE,
    ("loss",): MODULE,
    ("optimizer",): OPTIMIZER,
    ("scheduler",): SCHEDULER,
    ("data", "dataset"): DATASET,
}
# Each item of `data.transforms.<split>` is a TRANSFORM.
TRANSFORMS = ("data", "transforms")

# Top-level packages a target may come from, besides other installed distributions.
TRUSTED_PACKAGES = ("torch", "torchvision", "src")

RULE = (
    "A checkpoint is data: its config may only name, at each place, a class of the kind that place "
    "expects (model and loss: nn.Module; optimizer: torch.optim.Optimizer; scheduler: an LR scheduler; "
    "data.dataset: a torch Dataset; data.transforms: torchvision transforms; callbacks.<name>: a "
    "src.trainer.callbacks.Callback; data.task: a shipped task's name or a src.trainer.tasks.Task; anything "
    "nested in them: nn.Module or Dataset), from torch, torchvision, "
    "this project's src, another installed package or your PYTHONPATH, never the standard library. Nothing from "
    "this checkpoint was built or called. A callback of your own that is a plain class is built on resume when "
    "your command line names it again (+callbacks.NAME._target_=...)."
)


def check_stored_config(cfg: DictConfig, path: Path, vouched: Mapping[str, str] | None = None) -> None:
    """Refuse (UserError naming the place and the value) a stored config with an
    interpolation or a `_target_` that is not a class of the kind its place expects.

    Loggers are never built from a stored config (a resume uses its command line's).
    Callbacks are built from one only by a resume, which passes `vouched` (else they are
    not checked): it maps places such as "callbacks.mine" to the `_target_` your own
    config names there. A callback may be any class, so a checkpoint's one that is no
    `Callback` subclass is built only when your command line names it too
    (`resume=... +callbacks.mine._target_=my_package.Mine`)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for place, value in _walk(tree, ()):
        if isinstance(value, str) and "${" in value:
            raise UserError(
                f"Refusing the stored config of {str(path)!r}: {_dotted(place)}={value!r} is an interpolation. "
                f"A checkpoint's config is stored resolved and never holds one; resolving it could read "
                f"environment variables or run this project's resolvers. Use a checkpoint written by train.py."
            )
        if place == TASK_PLACE and not (isinstance(value, str) and value in TASKS):
            _refuse_target(path, place, value, TASK)
        if place and place[-1] == "_target_":
            if place[0] in NEVER_BUILT:
                continue
            if place[0] in RESUME_ONLY and (vouched is None or vouched.get(_dotted(place[:-1])) == value):
                continue
            _refuse_target(path, place, value, _kind(place[:-1]))


def _refuse_target(path: Path, place: tuple[str | int, ...], value: Any, kind: Kind) -> None:
    """Raise a UserError naming the place, the value and the rule unless `value` is a class of `kind`."""
    reason = _refusal(value, kind)
    if reason is not None:
        raise UserError(f"Refusing the stored config of {str(path)!r}: {_dotted(place)}={value!r} is not {kind.name} ({reason}). {RULE}")


def _kind(place: tuple[str | int, ...]) -> Kind:
    if place in PLACES:
        return PLACES[place]  # type: ignore[index]
    if len(place) == 4 and place[:2] == TRANSFORMS and isinstance(place[3], int):
        return TRANSFORM
    if len(place) == 2 and place[0] in RESUME_ONLY:
        return RESUME_ONLY[place[0]]  # type: ignore[index]
    return NESTED


def _refusal(target: Any, kind: Kind) -> str | None:
    """Why `target` may not be built at a place of `kind`, or None when it may."""
    if not isinstance(target, str):
        return f"it is a {type(target).__name__}, not a dotted class name"
    parts = target.split(".")
    if not all(part.isidentifier() and not part.startswith("_") for part in parts):
        return "it is not a dotted name of public Python names"
    package = parts[0]
    if package in sys.stdlib_module_names:
        return f"{package!r} is the standard library"
    if package not in TRUSTED_PACKAGES and package not in _installed_packages() and not _on_your_pythonpath(package):
        return f"{package!r} is neither torch, torchvision, src, an installed package nor on your PYTHONPATH"
    try:
        obj = _locate(target)
    except Exception as err:
        return f"it cannot be imported: {one_line(err, limit=160)}"
    if not isinstance(obj, type):
        return f"it is a {type(obj).__name__}, not a class"
    if not issubclass(obj, kind.bases):
        return f"it is the class {obj.__module__}.{obj.__qualname__}"
    return None


@functools.cache
def _installed_packages() -> frozenset[str]:
    """Top-level import names of the installed distributions."""
    return frozenset(importlib.metadata.packages_distributions())


def _on_your_pythonpath(package: str) -> bool:
    """Whether `package` lives in a folder you put on PYTHONPATH for this command (your
    own models and datasets, as in examples/custom_project). Finding it imports nothing."""
    folders = [Path(entry).resolve() for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    spec = importlib.util.find_spec(package) if folders else None
    origin = spec.origin if spec is not None and spec.origin else None
    return origin is not None and any(Path(origin).resolve().is_relative_to(folder) for folder in folders)


def _walk(node: Any, place: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """(place, value) for every value under `node`, containers included, at any depth."""
    yield place, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*place, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*place, i))


def _dotted(place: tuple[str | int, ...]) -> str:
    """("model", "_args_", 0, "_target_") -> "model._args_[0]._target_"."""
    text = ""
    for key in place:
        text += f"[{key}]" if isinstance(key, int) else f"{'.' if text else ''}{key}"
    return text



def without_downloads(data: DictConfig) -> DictConfig:
    """A stored data config that reads what is on disk but never downloads: a checkpoint
    is data, and may not choose where this machine fetches files to. (`download=true` on
    your own command line turns it back on.)"""
    if OmegaConf.select(data, "dataset.download", default=None):
        data.dataset.download = False
    return data
