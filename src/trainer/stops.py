"""Why a run stops before its end, in words a user can act on. Each function returns
the RunStopped the loop raises; the run folder and its checkpoints are kept."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from src.utils.errors import RunStopped


def on_disk(checkpoint_dir: Path, epoch: int, best_epoch: int | None) -> str:
    """What the checkpoints on disk hold, said after a stop."""
    if not (checkpoint_dir / "last.pt").exists():
        return "No checkpoint was saved before it."
    return (
        f"The checkpoints in {checkpoint_dir} are from before it and were not touched "
        f"(last.pt: epoch {epoch}, best.pt: epoch {best_epoch})."
    )


def non_finite_loss(value: float, step: int, epoch: int, batch: int, checkpoints: str) -> RunStopped:
    return RunStopped(
        f"Non-finite training loss ({value}) at step {step} (epoch {epoch}, batch {batch}). {checkpoints} Try a lower "
        f"optimizer.lr, trainer.gradient_clip_val, or trainer.detect_anomaly=true to find the operation that produced it.",
        exit_code=1,
    )


def check_validation_is_finite(metrics: dict[str, float], names: tuple[str, ...], epoch: int, on_disk: Callable[[], str]) -> None:
    """A nan or inf validation loss or monitored metric (`names`) means the model diverged:
    such an epoch never counts as an improvement, so the first would leave no best.pt to
    test. (Other metrics may be nan by definition, such as R² of constant targets.)"""
    for name, value in metrics.items():
        if name in names and not math.isfinite(value):
            raise non_finite_validation(name, value, epoch, on_disk())


def non_finite_validation(name: str, value: float, epoch: int, checkpoints: str) -> RunStopped:
    return RunStopped(
        f"Non-finite validation metric {name}={value} after epoch {epoch}: the model diverged (its outputs or loss "
        f"on the validation split are not finite). {checkpoints} Try a lower optimizer.lr or trainer.gradient_clip_val.",
        exit_code=1,
    )


def anomaly(reason: str, step: int, epoch: int, batch: int, checkpoints: str) -> RunStopped:
    return RunStopped(f"Anomaly detected at step {step} (epoch {epoch}, batch {batch}): {reason}. {checkpoints}", exit_code=1)


def signal_received(name: str, signum: int, last: Path, epoch: int, batch_in_epoch: int, step: int, resume_command: str) -> RunStopped:
    """`epoch` epochs done, and `batch_in_epoch` batches of the next one."""
    where = f"epoch {epoch + 1}, batch {batch_in_epoch}" if batch_in_epoch else f"the end of epoch {epoch}"
    return RunStopped(
        f"{name} received: saved {last} at {where} (step {step}). Resume with: {resume_command}",
        exit_code=128 + signum,
    )


def signal_in_final_test(name: str, signum: int, last: Path, resume_command: str) -> RunStopped:
    return RunStopped(
        f"{name} received during the final test of best.pt: training is complete and saved in {last}. "
        f"To run the test and write metrics.json: {resume_command}",
        exit_code=128 + signum,
    )


def not_written(what: str, reason: str, checkpoint_dir: Path, resume_command: str, done: str = "") -> RunStopped:
    """A checkpoint or metrics.json that a full or read-only disk refused."""
    return RunStopped(
        f"Could not write {what}: {reason}. {done}Every checkpoint in {checkpoint_dir} is whole (each is replaced "
        f"only once its new version is complete). Free some space, then resume: {resume_command}",
        exit_code=1,
    )
