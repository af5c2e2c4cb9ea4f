"""The run's validation records (`Trainer.history`): one per validation, at an epoch's
end or every `trainer.val_every_n_steps` steps, each with its `epoch` and `step`."""

from __future__ import annotations

import logging
from typing import Any

from src.trainer.loggers import Loggers

log = logging.getLogger(__name__)


def log_validation(loggers: Loggers, record: dict[str, Any], epoch_name: str, improved: bool, epoch_end: bool) -> None:
    """`record` to the loggers (at its step) and as one log line: `epoch 3/10`, with the
    step when inside the epoch."""
    metrics = {k: v for k, v in record.items() if "/" in k}
    # Per-step train/loss already has its name; the epoch mean gets its own. Inside an
    # epoch the train/* means are of a part of it: only val/* goes to the loggers.
    logged = {"train/epoch_loss" if name == "train/loss" else name: value for name, value in metrics.items()}
    logged = {**logged, "epoch": record["epoch"]} if epoch_end else {k: v for k, v in logged.items() if k.startswith("val/")}
    loggers.log_metrics(logged, record["step"])
    text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    where = epoch_name if epoch_end else f"{epoch_name}, step {record['step']}"
    log.info(f"{where}  {text}  lr {record['lr']:.2e}  {record['seconds']:.1f}s{'  * best' if improved else ''}")


def best_record(history: list[dict[str, Any]], best_step: int | None, best_epoch: int | None) -> dict[str, Any] | None:
    """The record best.pt was saved at: by its step (by its epoch for a run whose
    checkpoints predate steps in records)."""
    if best_step is not None:
        return next((r for r in history if r.get("step") == best_step), None)
    return next((r for r in history if r["epoch"] == best_epoch), None)
