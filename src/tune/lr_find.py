"""The learning-rate range test (`python train.py tune=lr_find`).

Starting from the run's initial weights, train for up to `num_steps` optimizer steps
while the learning rate grows exponentially from `min_lr` to `max_lr`; stop once the
smoothed loss exceeds `diverge_threshold` times its lowest value. The weights, the
optimizer and the random number generators are then put back as they were. The run
folder gets the report, and nothing else: `lr_find.json` (the curve and the suggestion)
and `lr_find.png` (loss against learning rate on a log axis, the suggestion marked).

The suggestion is the learning rate where the smoothed loss falls fastest (the most
negative slope against log10(lr), before the loss's minimum): the common "steepest
descent" rule of fastai and Lightning.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from src.data.builder import Batches, DataSplits
from src.trainer.forward import ForwardPass
from src.tune.put_back import put_back
from src.utils import distributed
from src.utils.errors import UserError
from src.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# The first steps' smoothed loss averages too few values for its slope to mean anything.
SKIP_START = 10
REPORT_JSON, REPORT_PLOT = "lr_find.json", "lr_find.png"


@dataclass
class Curve:
    """What the range test measured: per optimizer step its learning rate, its loss, and
    the smoothed (bias-corrected exponential moving average) loss."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = ""  # why the test ended
    suggestion: float | None = None

    def suggest(self) -> float | None:
        """The lr of the steepest descent of the smoothed loss between step SKIP_START and
        the loss's minimum; None when the loss has not fallen after step SKIP_START."""
        lowest = int(np.argmin(self.smoothed)) if self.smoothed else 0
        if lowest - SKIP_START < 2:  # fewer than 3 points to take slopes of
            return None
        log_lrs = np.log10(self.lrs[SKIP_START : lowest + 1])
        slopes = np.gradient(np.asarray(self.smoothed[SKIP_START : lowest + 1]), log_lrs)
        return float(self.lrs[SKIP_START + int(np.argmin(slopes))])


@dataclass
class LRFinder:
    """The range test's settings (configs/tune/lr_find.yaml); called by src/train.py."""

    min_lr: float = 1e-7
    max_lr: float = 1.0
    num_steps: int = 200
    smoothing: float = 0.9  # the weight the moving average keeps at each step
    diverge_threshold: float = 4.0

    def __post_init__(self) -> None:
        if not (0 < self.min_lr < self.max_lr and math.isfinite(self.max_lr)):
            raise UserError(
                f"Invalid learning-rate range tune.min_lr={self.min_lr}, tune.max_lr={self.max_lr}: expected "
                f"0 < min_lr < max_lr, e.g. tune.min_lr=1e-7 tune.max_lr=1."
            )
        if not (isinstance(self.num_steps, int) and self.num_steps >= 2 * SKIP_START):
            raise UserError(f"Invalid value tune.num_steps={self.num_steps!r}: expected an integer >= {2 * SKIP_START}, e.g. 200.")
        if not 0 <= self.smoothing < 1:
            raise UserError(f"Invalid value tune.smoothing={self.smoothing!r}: expected a number in [0, 1), e.g. 0.9 (0: no smoothing).")
        if not self.diverge_threshold > 1:
            raise UserError(f"Invalid value tune.diverge_threshold={self.diverge_threshold!r}: expected a number > 1, e.g. 4.")

    def __call__(
        self,
        *,
        cfg: DictConfig,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: DataSplits,
        device: torch.device,
        run_dir: Path,
        overrides: list[str],
    ) -> float:
        """Run the test with the run's model, loss, optimizer, data and trainer settings,
        write the report into `run_dir`, print the command line to train with the
        suggestion, and return the suggested lr."""
        if cfg.resume or distributed.is_distributed():
            raise UserError(
                "tune=lr_find runs in one process on a new model: drop resume=..., and run it with plain python "
                "rather than torchrun."
            )
        figure = _figure_class()  # before the test: a missing matplotlib should not cost a run
        trainer = cfg.trainer
        forward = ForwardPass.of_run(model, loss_fn, trainer, data.input_shape, device)
        assert data.train is not None
        curve = self.range_test(forward, optimizer, data.train, int(trainer.accumulate_grad_batches), float(trainer.gradient_clip_val))
        atomic_write_json(run_dir / REPORT_JSON, {"settings": asdict(self), "rule": "steepest descent of the smoothed loss", **asdict(curve)})
        _plot(figure, curve, run_dir / REPORT_PLOT)
        log.info(f"Learning-rate range test: {len(curve.lrs)} steps from lr {self.min_lr:.1e}; {curve.stopped}.")
        log.info(f"Report: {run_dir / REPORT_PLOT} and {run_dir / REPORT_JSON}")
        if curve.suggestion is None:
            log.warning(
                f"No suggestion: the smoothed loss was lowest within the first {SKIP_START} steps, which leaves no "
                f"descent to measure. Lower tune.min_lr (or raise tune.num_steps), and look at {run_dir / REPORT_PLOT}."
            )
            return math.nan
        log.info(f"Suggested learning rate (steepest descent of the smoothed loss): {curve.suggestion:.2e}. Train with:")
        log.info(suggested_command(overrides, curve.suggestion))
        return curve.suggestion

    def range_test(
        self, forward: ForwardPass, optimizer: torch.optim.Optimizer, batches: Batches, accumulate: int = 1, clip: float = 0.0
    ) -> Curve:
        """The curve of the test; the model, the optimizer and the RNGs end as they began."""
        curve = Curve()
        with put_back(forward.model, optimizer):
            self._steps(curve, forward, optimizer, _forever(batches), accumulate, clip)
        curve.suggestion = curve.suggest()
        return curve

    def _steps(
        self, curve: Curve, forward: ForwardPass, optimizer: torch.optim.Optimizer, batches: Iterator, accumulate: int, clip: float
    ) -> None:
        scaler = torch.amp.GradScaler(forward.device.type, enabled=forward.precision == "16-mixed")
        forward.model.train()
        average, lowest = 0.0, math.inf
        for step in range(self.num_steps):
            lr = self.min_lr * (self.max_lr / self.min_lr) ** (step / (self.num_steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for _ in range(accumulate):
                inputs, targets = next(batches)
                batch_loss = forward(inputs, targets)[1] / accumulate
                scaler.scale(batch_loss).backward()
                loss += batch_loss.item()
            if not math.isfinite(loss):
                curve.stopped = f"stopped at lr {lr:.2e}, where the loss became {loss}"
                return
            if clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(forward.model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            average = self.smoothing * average + (1 - self.smoothing) * loss
            smoothed = average / (1 - self.smoothing ** (step + 1))
            curve.lrs.append(lr)
            curve.losses.append(loss)
            curve.smoothed.append(smoothed)
            lowest = min(lowest, smoothed)
            if smoothed > self.diverge_threshold * lowest:
                curve.stopped = f"stopped at lr {lr:.2e}, where the smoothed loss passed {self.diverge_threshold:g}x its lowest value"
                return
        curve.stopped = f"reached tune.max_lr={self.max_lr:g} without the loss diverging"


def _forever(batches: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches, epoch after epoch, in each epoch's own order."""
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def suggested_command(overrides: list[str], lr: float) -> str:
    """The command line that trains what the test measured, with the suggested lr."""
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~") in ("tune", "optimizer.lr") and not o.startswith("tune.")]
    return shlex.join(["python", "train.py", *kept, f"optimizer.lr={lr:.2e}"])


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "tune=lr_find draws its plot with matplotlib, which is not installed: pip install matplotlib "
            "(or pip install -e '.[dev]'), then run it again."
        ) from None
    return Figure


def _plot(figure_class: Any, curve: Curve, path: Path) -> None:
    """Loss against learning rate on a log axis, the suggestion marked; saved as a PNG."""
    figure = figure_class(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(curve.lrs, curve.losses, color="tab:blue", alpha=0.3, label="loss")
    ax.plot(curve.lrs, curve.smoothed, color="tab:blue", label="smoothed loss")
    if curve.suggestion is not None:
        i = curve.lrs.index(curve.suggestion)
        ax.axvline(curve.suggestion, color="tab:red", linestyle="--", linewidth=1)
        ax.plot([curve.suggestion], [curve.smoothed[i]], "o", color="tab:red", label=f"suggested lr {curve.suggestion:.2e} (steepest descent)")
    ax.set_xscale("log")
    low, high = min(curve.losses, default=0.0), max(curve.smoothed, default=0.0)
    if high > low:  # the diverged tail of the raw loss would squash the curve
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.legend()
    figure.savefig(path, dpi=120)
