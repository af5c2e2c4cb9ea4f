"""TensorBoard: event files in `<run folder>/tensorboard/` (`tensorboard --logdir saved/`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from src.trainer.loggers.base import LoggerBase

log = logging.getLogger(__name__)


class TensorBoardLogger(LoggerBase):
    """Scalars, images, the HParams tab, and on request the model graph and histograms.

    A resumed run purges the events logged after its checkpoint's step, so every
    series continues without a duplicated or out-of-order point.
    """

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard") -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / subdir
        self._purge_step: int | None = None
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        """Opened on first use, after `purge_after`: the purge is an event at the start of the new file."""
        if self._writer is None:
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def purge_after(self, step: int) -> None:
        self._purge_step = step + 1  # TensorBoard drops events at purge_step and later

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a few times per epoch at most: TensorBoard shows the run as it goes

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(name, image, step)

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """Written into the run's own event file, so that runs opened together
        (`--logdir saved/`) compare in the HParams tab. That needs the final metrics,
        so the call at the start (no metrics yet) writes nothing."""
        if not metrics:
            return
        tags = {f"hparams/{name.replace('/', '_')}": value for name, value in metrics.items()}
        # The metrics themselves first: this also opens the event file, `writer.file_writer`.
        self.log_metrics({**metrics, **tags}, step)
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for summary in hparams(clean, tags):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary, step)
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
