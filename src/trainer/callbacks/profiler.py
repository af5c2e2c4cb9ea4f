"""torch.profiler over a few training steps: `debug=profile` or `callbacks=[profiler]`."""

from __future__ import annotations

import logging
from typing import Any

import torch

from src.trainer.callbacks import Callback

log = logging.getLogger(__name__)


class Profiler(Callback):
    """Trace optimizer steps `wait + warmup + 1` to `wait + warmup + active` into the
    run's profiler/ (TensorBoard's profiler plugin, Perfetto or chrome://tracing)."""

    def __init__(self, wait: int = 1, warmup: int = 1, active: int = 5) -> None:
        self.schedule = torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1)
        self.profiler: torch.profiler.profile | None = None
        self.steps_seen = 0

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.rank_zero:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace_dir = trainer.run_dir / "profiler"
        log.info(f"Profiling a few optimizer steps; the trace goes to {trace_dir}")
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=self.schedule,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(trace_dir)),
            record_shapes=True,
        )
        self.profiler.__enter__()
        self.steps_seen = trainer.step

    def on_train_batch_end(self, trainer: Any, batch_index: int, loss: Any) -> None:
        if self.profiler is not None and trainer.step != self.steps_seen:
            self.steps_seen = trainer.step
            self.profiler.step()

    def on_fit_end(self, trainer: Any) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.profiler = None
