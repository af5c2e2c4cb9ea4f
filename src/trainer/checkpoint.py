"""Checkpoint files: tensors and plain values only, written atomically, loaded safely.

A checkpoint is one dict (`TrainingState.to_dict`; the README lists its keys). It is always
loaded with `weights_only=True`, so a file can never run code when it is read.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.trainer.stored_config import check_stored_config
from src.utils.config import _is_int, _is_number
from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write
from src.trainer import stops
from src.utils import distributed
from src.utils.seed import check_rng_state, rng_state

FORMAT_VERSION = 1


@dataclass
class RunInfo:
    """What a checkpoint records about the run besides its training state: the resolved
    config (YAML), the config group choices, the data's standardisation statistics
    (so that test.py normalises new data as training did), a regression task's target
    statistics (its model outputs standardised targets), and the names of the
    classes and input features when the dataset has them (so that predict.py names
    its predictions, and reads a table's columns by name)."""

    config_yaml: str = ""
    choices: dict[str, str] = field(default_factory=dict)
    data_stats: dict[str, list[float]] | None = None
    classes: list[str] | None = None
    features: list[str] | None = None
    target_stats: dict[str, list[float]] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config_yaml,
            "choices": self.choices,
            "data_stats": self.data_stats,
            "classes": self.classes,
            "features": self.features,
            "target_stats": self.target_stats,
        }

REQUIRED_KEYS = ("format_version", "model", "config", "epoch", "step")
# What resuming restores besides those (evaluating needs only the weights and config).
TRAINING_KEYS = ("optimizer", "scheduler", "batch_in_epoch", "best_metric", "best_epoch", "early_stopping", "rng", "history")
# The sections of a run's stored config, and those built from a `_target_`.
CONFIG_SECTIONS = ("seed", "data", "model", "loss", "optimizer", "trainer")
BUILT_SECTIONS = ("model", "loss", "optimizer", "data.dataset")


def _is_count(value: Any) -> bool:
    return _is_int(value, 0)


def _is_state(value: Any) -> bool:
    """A state_dict as torch writes one: a dict with string keys."""
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _is_names(value: Any) -> bool:
    """None (checkpoints from before names were kept, and datasets without them) or a list of names."""
    return value is None or (isinstance(value, list) and all(isinstance(name, str) for name in value))


def _is_stats(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(value.get(key), list) and all(_is_number(x) for x in value[key]) for key in ("mean", "std")
    )


# Each field `Trainer.state_dict` writes: (valid?, what it must be). Checked when present.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: _is_state(v) and all(torch.is_tensor(t) for t in v.values()), "a state_dict of named tensors"),
    "optimizer": (_is_state, "an optimizer state_dict"),
    "scheduler": (lambda v: v is None or _is_state(v), "a scheduler state_dict or None"),
    "grad_scaler": (lambda v: v is None or _is_state(v), "a grad-scaler state_dict or None"),
    "epoch": (_is_count, "an integer >= 0"),
    "step": (_is_count, "an integer >= 0"),
    "batch_in_epoch": (_is_count, "an integer >= 0"),
    "partial_epoch_metrics": (lambda v: v is None or _is_state(v), "metric sums or None"),
    "monitor": (lambda v: isinstance(v, str), "a metric name"),
    "mode": (lambda v: v in ("min", "max"), "min or max"),
    "best_metric": (lambda v: v is None or _is_number(v), "a number, or None before the first epoch ends"),
    "best_epoch": (lambda v: v is None or _is_count(v), "an integer >= 0, or None before the first epoch ends"),
    "best_step": (lambda v: v is None or _is_count(v), "an integer >= 0, or None before the first validation"),
    "early_stopping": (lambda v: isinstance(v, dict) and {"best", "wait"} <= v.keys(), "a dict with best and wait"),
    "rng": (lambda v: isinstance(v, dict), "a dict of RNG states"),
    "world_size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "rank_states": (lambda v: v is None or (isinstance(v, list) and all(isinstance(r, dict) for r in v)), "a list of per-process dicts or None"),
    "choices": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(c, str) for k, c in v.items()), "a dict of config group choices"),
    "data_stats": (lambda v: v is None or _is_stats(v), "None or a dict of mean and std lists"),
    "target_stats": (lambda v: v is None or _is_stats(v), "None or a dict of mean and std lists"),
    "classes": (_is_names, "None or a list of class names"),
    "features": (_is_names, "None or a list of feature names"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) and _is_count(r.get("epoch")) for r in v), "a list of per-validation records"),
}


@dataclass
class TrainingState:
    """One checkpoint: everything a run needs to continue exactly, tensors and plain values
    only (so `torch.load(path, weights_only=True)` reads it), plus what it records about
    the run (`run`). `to_dict()` is what goes into the file; README lists the keys."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    grad_scaler: dict[str, Any] | None
    epoch: int  # completed epochs
    step: int  # optimizer steps taken
    batch_in_epoch: int  # batches of epoch `epoch + 1` already done (a mid-epoch save)
    partial_epoch_metrics: dict[str, Any] | None  # their metric sums
    monitor: str
    mode: str
    best_metric: float | None
    best_epoch: int | None
    best_step: int | None  # the step of the best validation (None in checkpoints older than steps in records)
    early_stopping: dict[str, Any]
    rng: dict[str, Any]
    world_size: int
    # Under torchrun, each rank's own RNGs and partial metric sums (rank order), so that
    # every rank resumes exactly where it stopped.
    rank_states: list[dict[str, Any]] | None
    history: list[dict[str, float]]
    # (The callbacks' states follow under "callbacks", added by Callbacks.checkpoint after
    # their on_checkpoint hook.)
    # What each logger needs to continue its records (e.g. an MLflow or W&B run id).
    loggers: dict[str, Any]
    run: RunInfo

    @classmethod
    def of(cls, trainer: Any) -> TrainingState:
        """The state of a `Trainer` now (on every rank: it gathers each rank's RNG state)."""
        rng = rng_state()
        ranks = distributed.gather({"rng": rng, "partial_epoch_metrics": trainer.partial_metrics}) if trainer.distributed else None
        return cls(
            model=trainer.model.state_dict(),
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            grad_scaler=trainer.scaler.state_dict() if trainer.scaling else None,
            epoch=trainer.epoch,
            step=trainer.step,
            batch_in_epoch=trainer.batch_in_epoch,
            partial_epoch_metrics=trainer.partial_metrics,
            monitor=trainer.monitor,
            mode=trainer.mode,
            best_metric=trainer.best_metric,
            best_epoch=trainer.best_epoch,
            best_step=trainer.best_step,
            early_stopping=trainer.early_stopping.state_dict(),
            rng=rng,
            world_size=trainer.world_size,
            rank_states=ranks,
            history=trainer.history,
            loggers=trainer.loggers.state_dict(),
            run=trainer.run_info,
        )

    def to_dict(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "run"}
        return {"format_version": FORMAT_VERSION, **fields, **self.run.state()}


def save_checkpoint(state: Mapping[str, Any], *paths: Path) -> None:
    """Serialise `state` once and write it to each path atomically (temp file, fsync,
    rename), so a crash at any moment leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    for path in paths:
        atomic_write(path, lambda f: f.write(data))


class CheckpointFolder:
    """The run's checkpoints/ folder: which files a save writes, in which order, and
    how many epoch files it keeps. Only rank 0 writes; every rank waits for it."""

    def __init__(
        self, folder: Path, every_n_epochs: int = 0, keep_last_k: int | None = None, resume_command: str | None = None
    ) -> None:
        self.folder, self.every_n_epochs, self.keep_last_k = folder, every_n_epochs, keep_last_k
        # What a full disk's message tells the user to run once there is room.
        self.resume_command = resume_command or f"python train.py resume={folder / 'last.pt'}"

    def remove_stale_temporaries(self) -> None:
        """Temporary files left by a process killed in the middle of a save."""
        if distributed.is_rank_zero():
            for stale in self.folder.glob(".*.tmp"):
                stale.unlink()

    def save(self, state: dict[str, Any], epoch: int, best: bool, mid_epoch: bool) -> None:
        """Write last.pt, and best.pt and epoch_NNN.pt when due. last.pt is renamed last:
        it is what a resume starts from, so after a kill between two renames the resume
        repeats this save, and every file it names exists (see resume.restore_best)."""
        epoch_file = bool(self.every_n_epochs) and not mid_epoch and epoch % self.every_n_epochs == 0
        paths = [self.folder / f"epoch_{epoch:03d}.pt"] * epoch_file + [self.folder / "best.pt"] * best
        self.write(state, *paths, self.folder / "last.pt")
        if distributed.is_rank_zero() and self.keep_last_k:
            for old in sorted(self.folder.glob("epoch_*.pt"))[: -self.keep_last_k]:
                old.unlink()

    def write(self, state: dict[str, Any], *paths: Path) -> None:
        """`state` to `paths` in order (rank 0), then every rank goes on: none reads best.pt
        or exits after a signal before the files are written."""
        if distributed.is_rank_zero():
            try:
                save_checkpoint(state, *paths)
            except OSError as err:  # a full or read-only disk: each file is whole, old or new
                raise stops.not_written(f"a checkpoint in {self.folder}", err.strerror or str(err), self.folder, self.resume_command) from None
        distributed.barrier()


def load_checkpoint(path: str | Path, resuming: bool = False, vouched: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a checkpoint of this framework, with every field and the stored config
    checked (`resuming`: also everything a resume restores, and the callbacks it
    builds, of which `vouched` maps places to the `_target_`s your own config names;
    see stored_config.py); any problem becomes a clear UserError."""
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
    _check_fields(state, path, resuming, vouched or {})
    return state


def _check_fields(state: dict[str, Any], path: Path, resuming: bool, vouched: Mapping[str, str]) -> None:
    """Every field as `Trainer.state_dict` writes it, and the stored config checked for
    what it may build (see stored_config.py): a changed file gets a clear error here,
    before anything reads it."""
    version = state["format_version"]
    if not _is_int(version, 1) or version > FORMAT_VERSION:
        raise UserError(
            f"{str(path)!r} has checkpoint format_version={version!r}, and this version of the framework "
            f"reads format_version {FORMAT_VERSION}. A newer framework may read a higher one (upgrade to load "
            f"it); any other value means the file is damaged."
        )
    missing = [key for key in TRAINING_KEYS if key not in state] if resuming else []
    if missing:
        raise UserError(
            f"{str(path)!r} cannot be resumed: it has no {', '.join(missing)} (a checkpoint written by "
            f"train.py has them). Evaluate it with test.py, or resume another checkpoint."
        )
    for key, (valid, expected) in FIELDS.items():
        if key in state and not valid(state[key]):
            raise damaged(path, f"{key}={_short(state[key])} is not {expected}")
    ranks = state.get("rank_states") or []
    if ranks and len(ranks) != state.get("world_size", 1):
        raise damaged(path, f"rank_states has {len(ranks)} entries for world_size={state.get('world_size', 1)}")
    for name, entry in [("rng", state.get("rng"))] + [(f"rank_states[{i}].rng", r.get("rng")) for i, r in enumerate(ranks)]:
        if entry is None:
            continue
        try:
            check_rng_state(entry)
        except Exception as err:  # whatever random, numpy or torch would raise when applying it
            raise damaged(path, f"its {name} state cannot be restored ({type(err).__name__}: {one_line(err, limit=160)})") from None
    _check_config(state["config"], path, vouched if resuming else None)


def _check_config(text: Any, path: Path, vouched: Mapping[str, str] | None) -> None:
    """The stored config: YAML text of a mapping with every section of a run's config,
    naming only what a checkpoint may build (stored_config.py)."""
    if not isinstance(text, str):
        raise damaged(path, f"its config is {_short(text)}, not the YAML text of a config")
    try:
        cfg = OmegaConf.create(text)
    except Exception as err:  # YAML syntax, duplicate keys, tags: yaml and OmegaConf raise many types
        raise damaged(path, f"its config is not valid YAML ({one_line(err, limit=160)})") from None
    if not isinstance(cfg, DictConfig):
        raise damaged(path, "its config is a list, not a mapping of config sections")
    check_stored_config(cfg, path, vouched)  # first: it refuses interpolations, which the lookups below would resolve
    for name in CONFIG_SECTIONS:
        if name not in cfg:
            raise damaged(path, f"its config has no {name} section (a run's config has {', '.join(CONFIG_SECTIONS)})")
    for section in BUILT_SECTIONS:
        node = OmegaConf.select(cfg, section)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise damaged(path, f"its config's {section} has no _target_")


def damaged(path: Path, what: str) -> UserError:
    return UserError(
        f"{str(path)!r} is damaged: {what}. It was changed after train.py wrote it, or written by "
        f"another tool; use another checkpoint."
    )


def _short(value: Any) -> str:
    text = repr(value) if not torch.is_tensor(value) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 60 else text[:57] + "..."


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
