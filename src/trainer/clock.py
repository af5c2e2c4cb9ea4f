"""The run's clock: how long a run lasts (epochs, optimizer steps, or whichever ends
first), what is due after an optimizer step inside an epoch (a validation, a
resumable last.pt, the run's last step), and when the learning-rate scheduler steps.

The loop asks it at named points: `running` before each epoch, `after_step` and
`due` after each optimizer step, `after_epoch` and `after_validation`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from torch.optim.lr_scheduler import ReduceLROnPlateau


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches (its last window may be short)."""
    return math.ceil(batches / accumulate)


def total_steps(epochs: int | None, max_steps: int | None, batches: int, accumulate: int) -> int:
    """The optimizer steps a run takes: `epochs` epochs of `batches` batches with
    `accumulate` batches per step, or `max_steps`, whichever ends first (None: no limit)."""
    limits = [epochs * steps_per_epoch(batches, accumulate)] if epochs is not None else []
    return min(limits + ([max_steps] if max_steps is not None else []))


@dataclass(frozen=True)
class Due:
    """What follows an optimizer step inside an epoch."""

    validate: bool
    save: bool
    last: bool  # the run's last step: validate, save and stop here


class Clock:
    """`cfg` is the `trainer` config group; `interval` says when `scheduler` steps:
    "step" after every optimizer step, "epoch" at every epoch's end. ReduceLROnPlateau
    steps after every validation instead, on the monitored value."""

    def __init__(self, cfg: DictConfig, scheduler: Any = None, interval: str = "epoch") -> None:
        self.epochs, self.max_steps = cfg.epochs, cfg.max_steps
        self.val_every, self.save_every = cfg.val_every_n_steps or 0, cfg.save_every_n_steps or 0
        # Whether anything can be due inside an epoch at all (Trainer._inside_epoch asks first).
        self.counts_steps = self.max_steps is not None or self.val_every > 0 or self.save_every > 0
        self.scheduler = scheduler
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)
        self.per_step = scheduler is not None and interval == "step" and not self.plateau
        self.per_epoch = scheduler is not None and interval == "epoch" and not self.plateau
        self._lap = time.perf_counter()

    def running(self, epoch: int, step: int) -> bool:
        """Whether another epoch starts after `epoch` epochs and `step` steps."""
        return (self.epochs is None or epoch < self.epochs) and (self.max_steps is None or step < self.max_steps)

    def after_step(self) -> None:
        """An optimizer step was taken (and its learning rate logged)."""
        if self.per_step:
            self.scheduler.step()

    def due(self, step: int) -> Due:
        """What is due after optimizer step `step` when the epoch goes on after it (at an
        epoch's end, the epoch's own validation and checkpoint come anyway)."""
        last = self.max_steps is not None and step >= self.max_steps
        validate = last or (self.val_every > 0 and step % self.val_every == 0)
        return Due(validate=validate, save=self.save_every > 0 and step % self.save_every == 0, last=last)

    def after_epoch(self) -> None:
        if self.per_epoch:
            self.scheduler.step()

    def after_validation(self, monitored: float) -> None:
        if self.plateau:
            self.scheduler.step(monitored)

    def lap(self) -> float:
        """Seconds since the previous lap (or since the clock was made)."""
        now = time.perf_counter()
        seconds, self._lap = now - self._lap, now
        return seconds

    def epoch_name(self, epoch: int) -> str:
        """`epoch 3/10`, or `epoch 3` for a run that only counts steps."""
        return f"epoch {epoch}" + (f"/{self.epochs}" if self.epochs is not None else "")
