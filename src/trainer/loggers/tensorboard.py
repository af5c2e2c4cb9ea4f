"""TensorBoard: event files in the run folder itself, so that `tensorboard --logdir saved/`
names each run by its folder (`runs/<name>/<time>`, `multirun/<time>/<job>`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from src.trainer.loggers.base import LoggerBase

log = logging.getLogger(__name__)

# TensorBoard's Scalars and Time Series pages group tags by what comes before the first
# `/`, sort the groups by name and open the first two: the curves (train/, val/) must
# come first. The epoch counter and the final results (points the HParams tab reads as
# its metric columns) go under a group that sorts after them.
LAST_GROUP = "zz_hparams"
# Entries of an epoch's metrics that count, rather than measure.
BOOKKEEPING = ("epoch",)
# The custom-scalars category with one chart per metric, its train and val curves together.
TRAIN_VS_VAL = "train vs val"


class TensorBoardLogger(LoggerBase):
    """Scalars, images, a train-versus-val chart per metric (Custom Scalars), the HParams
    tab, and on request the model graph and histograms.

    Everything is logged against the global step, per-epoch metrics too (at the step
    that ends the epoch): a resumed run purges the events logged after its checkpoint's
    step, so every series continues without a duplicated or out-of-order point.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._purge_step: int | None = None
        self._writer: SummaryWriter | None = None
        self._layout_written = False

    @property
    def writer(self) -> SummaryWriter:
        """Opened on first use, after `purge_after`: the purge is an event at the start of the new file."""
        if self._writer is None:
            self._writer = SummaryWriter(str(self.run_dir), purge_step=self._purge_step)
        return self._writer

    def purge_after(self, step: int) -> None:
        self._purge_step = step + 1  # TensorBoard drops events at purge_step and later

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{LAST_GROUP}/{name}" if name in BOOKKEEPING else name, value, step)
        if "epoch" in metrics and not self._layout_written:  # the first epoch's metrics name the charts
            self.writer.add_custom_scalars({TRAIN_VS_VAL: train_vs_val_charts(metrics)})
            self._layout_written = True
        self.writer.flush()  # a few times per epoch at most: TensorBoard shows the run as it goes

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(name, image, step)

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """The HParams tab's session: at the start, the values that tell this run apart
        (`params.compared`), so the run shows in the tab while it trains; at the end the
        final metrics and the session's end.

        No experiment summary is written: TensorBoard then gathers the columns from all
        the runs it shows, and puts first the hparams whose values differ between them
        (the swept ones). Its metric columns are the runs' scalars."""
        if not metrics:
            if self._purge_step is None:  # a resumed run's session began with its first process
                shown = getattr(params, "compared", params)
                session_start = hparams({key: _hparam_value(value) for key, value in shown.items()}, {})[1]
                self.writer.file_writer.add_summary(session_start, step)
                self.writer.flush()
            return
        self.log_metrics({f"{LAST_GROUP}/{name}": value for name, value in metrics.items()}, step)
        session_end = hparams({}, {})[2]  # status: success
        self.writer.file_writer.add_summary(session_end, step)
        self.writer.flush()

    def log_graph(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        with torch.no_grad():
            self.writer.add_graph(model, example_inputs)

    def log_histograms(self, model: nn.Module, step: int) -> None:
        """Every parameter and its last gradient."""
        for name, parameter in model.named_parameters():
            self.writer.add_histogram(f"parameters/{name}", parameter.detach().float().cpu(), step)
            if parameter.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", parameter.grad.detach().float().cpu(), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            log.info(f"TensorBoard: tensorboard --logdir {self.run_dir.parent.parent}")


def train_vs_val_charts(epoch_metrics: Mapping[str, float]) -> dict[str, list[Any]]:
    """One multiline chart per metric of an epoch (`loss`, `accuracy`, ...) holding its
    `train/` and `val/` curves, as `SummaryWriter.add_custom_scalars` takes them. The
    epoch's mean training loss is `train/epoch_loss` (`train/loss` is per step)."""
    tags: dict[str, list[str]] = {}
    for name in epoch_metrics:
        split, _, metric = name.partition("/")
        if split in ("train", "val"):
            tags.setdefault(metric.removeprefix("epoch_"), []).append(name)
    return {metric: ["Multiline", [f"^{re.escape(tag)}$" for tag in names]] for metric, names in tags.items()}


def _hparam_value(value: Any) -> float | str:
    """A number, or else text: the HParams tab shows numbers, strings and booleans, and
    a list (`model.hidden_sizes`) as its text."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
