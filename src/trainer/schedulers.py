"""Learning-rate schedulers: building one from its config, and the warmup-then-cosine
schedule that torch does not ship as one class."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src.utils.build import build
from src.utils.errors import UserError


def build_scheduler(node: DictConfig | None, optimizer: torch.optim.Optimizer, run_steps: int) -> tuple[Any, str]:
    """The scheduler a `scheduler` config names (None for none), and when it steps: its
    `interval` (step or epoch; epoch when not given), which is not passed to the class.
    A `total_steps: null` in the config becomes the run's optimizer steps, `run_steps`."""
    if not node:
        return None, "epoch"
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    interval = values.pop("interval", None) or "epoch"
    if "total_steps" in values and values["total_steps"] is None:
        values["total_steps"] = run_steps
    return build("scheduler", OmegaConf.create(values), optimizer), interval


def check_schedule_length(scheduler: Any, run_steps: int) -> None:
    """A resumed schedule planned in steps (`total_steps`, restored from the checkpoint)
    must not be shorter than the run: OneCycleLR cannot step past its end."""
    planned = getattr(scheduler, "total_steps", None)
    if isinstance(planned, int) and run_steps > planned:
        raise UserError(
            f"This run now takes {run_steps} optimizer steps, and the learning-rate schedule restored from its "
            f"checkpoint was planned for {planned} (scheduler.total_steps). Resume with the run's own length "
            f"(the trainer.epochs and trainer.max_steps it had), or start a new run for a longer schedule."
        )


class WarmupCosine(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup from lr/warmup_steps to each group's lr over `warmup_steps` steps,
    then a cosine from there down to `min_lr` at `total_steps`; `min_lr` after that.
    Meant to step after every optimizer step (`interval: step`). The lr of step `s`
    (counted from 0) depends on `s` alone, so a resumed schedule continues exactly."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, last_epoch: int = -1) -> None:
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise UserError(f"Invalid value scheduler.total_steps={total_steps!r}: expected a positive integer, or null for the run's own steps.")
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
            raise UserError(
                f"Invalid value scheduler.warmup_steps={warmup_steps!r}: expected an integer >= 0 and below the run's "
                f"{total_steps} optimizer steps (from trainer.epochs, trainer.max_steps, the batches per epoch and "
                f"trainer.accumulate_grad_batches), e.g. scheduler.warmup_steps={total_steps // 10}."
            )
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, float(min_lr)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def lr_at(self, step: int, base_lr: float) -> float:
        """The learning rate of step `step` (from 0) for a group whose own lr is `base_lr`."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
