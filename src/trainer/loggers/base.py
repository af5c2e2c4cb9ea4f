"""What a logger is, and the run's loggers called together.

A logger is any class with the methods of `Logger`; `LoggerBase` gives no-op versions
to subclass. Each entry of the `logger` config group names one class by `_target_`
and is built as `instantiate(cfg, run_dir=<run folder>)` on rank 0 only. Building one
must have no side effect: a logger opens its files or its remote run when it first
writes, after a resumed run handed it back its state (`load_state_dict`) and the
checkpoint's step (`purge_after`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from src.trainer.images import image_grid

log = logging.getLogger(__name__)


class Logger(Protocol):
    """Every step is the global optimizer step, so a resumed run continues each series."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at `step` (per-step training loss, per-epoch metrics with an `epoch` entry)."""

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        """A (C, H, W) image: uint8, or float in [0, 1]."""

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The run's flattened config (a `Hyperparameters`): once when training starts
        (`metrics` empty), and once more at the end with the final metrics (best
        monitored value, test metrics)."""

    def purge_after(self, step: int) -> None:
        """The run resumes from a checkpoint taken at `step`: whatever was logged after it
        (by a process killed later, or a run resumed from an earlier checkpoint) did not
        happen. Called before anything is logged."""

    def save_artifact(self, path: Path) -> None:
        """A file worth keeping with the run: the best checkpoint, at the end."""

    def state_dict(self) -> dict[str, Any]:
        """Plain values that a resumed run needs to continue this logger's record (a
        remote run's id); stored in the checkpoint."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """What `state_dict` returned, from a checkpoint (data from elsewhere: check it)."""

    def close(self) -> None:
        """Flush and close; also after an error or a signal."""


class Hyperparameters(dict):
    """What `Logger.log_hyperparams` gets: the run's flattened config as a plain dict
    (`{"optimizer.lr": 0.001, ...}`), and in `compared` what tells the run apart from
    others: its config group choices (`{"model": "cnn", ...}`) and the values its
    command line set. A page that compares runs side by side (TensorBoard's HParams
    tab) shows `compared`; a run's own record (MLflow, W&B) keeps the whole config."""

    def __init__(self, config: Mapping[str, Any], compared: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.compared = dict(compared)


class LoggerBase:
    """No-op versions of every `Logger` method: subclass it and override what you log.

    Two optional methods are not part of the protocol, since only some backends can
    show them: `log_graph(model, example_inputs)` and `log_histograms(model, step)`.
    """

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        pass

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        pass

    def purge_after(self, step: int) -> None:
        pass

    def save_artifact(self, path: Path) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Loggers:
    """The run's loggers by name (the keys of the `logger` config), called together.

    This is all the training loop talks to; with no loggers (other torchrun ranks,
    `logger=[]`) every call does nothing.
    """

    def __init__(self, loggers: Mapping[str, Logger] | None = None) -> None:
        self.loggers = dict(loggers or {})
        self._warned: set[str] = set()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.log_metrics(metrics, step)

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        for logger in self.loggers.values():
            logger.log_image(name, image, step)

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers.values():
            logger.log_hyperparams(params, metrics, step)

    def log_inputs(self, model: nn.Module, inputs: torch.Tensor, step: int, images: bool, graph: bool) -> None:
        """Once per run: an image grid of the first training batch and, on request, the model graph."""
        if images and inputs.ndim == 4 and inputs.shape[1] in (1, 3):
            self.log_image("train/first_batch", image_grid(inputs), step)
        if graph:
            self.log_graph(model, inputs[:1])

    def log_graph(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        for logger in self._having("log_graph", "trainer.log_graph=true"):
            logger.log_graph(model, example_inputs)  # type: ignore[attr-defined]

    def log_histograms(self, model: nn.Module, step: int) -> None:
        for logger in self._having("log_histograms", "trainer.log_histograms_every_n_epochs"):
            logger.log_histograms(model, step)  # type: ignore[attr-defined]

    def purge_after(self, step: int) -> None:
        for logger in self.loggers.values():
            logger.purge_after(step)

    def save_artifact(self, path: Path) -> None:
        for logger in self.loggers.values():
            logger.save_artifact(path)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: logger.state_dict() for name, logger in self.loggers.items()}

    def load_state_dict(self, states: Any) -> None:
        """Each logger gets its own entry, if the checkpoint has one (a logger added on
        resume, or a checkpoint from before loggers kept state, has none)."""
        if not isinstance(states, Mapping):
            return
        for name, logger in self.loggers.items():
            if isinstance(states.get(name), Mapping):
                logger.load_state_dict(states[name])
        left = [name for name, state in states.items() if name not in self.loggers and state]
        if left:
            log.warning(
                f"The checkpoint's run also logged to {', '.join(left)}, which this resume does not: a resume logs to "
                f"the loggers its own command line names. Add them (logger=[...]) to continue their records."
            )

    def close(self) -> None:
        """Close every logger, even when one fails; then raise the first failure."""
        failure: BaseException | None = None
        for logger in self.loggers.values():
            try:
                logger.close()
            except Exception as err:  # the others still get closed
                failure = failure or err
        if failure is not None:
            raise failure

    def _having(self, method: str, setting: str) -> list[Any]:
        """The loggers that have an optional `method`; says once when none has it."""
        having = [logger for logger in self.loggers.values() if callable(getattr(logger, method, None))]
        if self.loggers and not having and method not in self._warned:
            self._warned.add(method)
            log.warning(f"{setting} is set, but none of the loggers ({', '.join(self.loggers)}) has {method}(); skipped (the tensorboard logger has it).")
        return having


def run_name(run_dir: Path) -> str:
    """A remote run's default name: the run folder's last two parts, `<name>/<time>`
    (`<sweep time>/<job>` in a sweep)."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def run_id_from(state: Mapping[str, Any], pattern: re.Pattern[str]) -> str | None:
    """The `run_id` a checkpoint carries, if it looks like one (`pattern`); else None."""
    run_id = state.get("run_id")
    return run_id if isinstance(run_id, str) and pattern.fullmatch(run_id) else None
