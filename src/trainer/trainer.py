"""The training loop, written out: train an epoch, validate, log, checkpoint, early-stop."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from src.data.builder import Batches, DataSplits
from src.trainer.checkpoint import FORMAT_VERSION, save_checkpoint
from src.trainer.early_stopping import EarlyStopping, is_better
from src.trainer.metrics import ClassificationMetrics
from src.trainer.progress import NoProgress, make_progress
from src.utils.seed import rng_state

log = logging.getLogger(__name__)


def use_channels_last(model: nn.Module, setting: str | bool) -> bool:
    """`auto`: channels-last for any model with a 2-d convolution."""
    if setting == "auto":
        return any(isinstance(m, nn.Conv2d) for m in model.modules())
    return bool(setting)


def to_memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Batches,
    num_classes: int,
    device: torch.device,
    confusion: bool = False,
    channels_last: bool = False,
) -> ClassificationMetrics:
    """Run `model` over every batch once, in eval mode, and return the summed metrics."""
    model.eval()
    metrics = ClassificationMetrics(num_classes, device, confusion=confusion)
    batches.set_epoch(0)
    for inputs, targets in batches:
        outputs = model(to_memory_format(inputs, channels_last))
        metrics.update(outputs, targets, loss_fn(outputs, targets))
    return metrics


class Trainer:
    """Owns the loop state (epoch, step, best metric, history) and the run's outputs.

    `cfg` is the `trainer` config group. Checkpoints go to `run_dir/checkpoints`,
    TensorBoard events to `run_dir/tensorboard`.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data: DataSplits,
        cfg: DictConfig,
        num_classes: int,
        device: torch.device,
        run_dir: Path,
        config_yaml: str,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.data, self.cfg = data, cfg
        self.num_classes, self.device = num_classes, device
        self.config_yaml = config_yaml
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.channels_last = use_channels_last(model, cfg.channels_last)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.checkpoint_dir = run_dir / "checkpoints"
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.early_stopping = EarlyStopping(cfg.mode, cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        self.stopped_early = False

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        with make_progress(self.cfg.progress) as progress:
            while self.epoch < self.cfg.epochs and not self.stopped_early:
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                metrics = self._train_epoch(progress)
                if self.data.val is not None:
                    val = evaluate(
                        self.model, self.loss_fn, self.data.val, self.num_classes, self.device, channels_last=self.channels_last
                    )
                    metrics.update({f"val/{k}": v for k, v in val.compute().items()})
                self.epoch += 1
                self._step_scheduler(metrics[self.monitor])
                improved = is_better(metrics[self.monitor], self.best_metric, self.mode)
                if improved:
                    self.best_metric, self.best_epoch = metrics[self.monitor], self.epoch
                self.stopped_early = self.early_stopping.update(metrics[self.monitor])
                self.history.append({"epoch": self.epoch, **metrics, "lr": lr, "seconds": time.perf_counter() - started})
                self._log_epoch(improved)
                self._save_checkpoints(best=improved)
        if self.stopped_early:
            es = self.early_stopping
            log.info(
                f"Early stopping after epoch {self.epoch}: {self.monitor} has not improved by more than "
                f"{es.min_delta} for {es.patience} epochs (best {self.best_metric:.4f} at epoch {self.best_epoch})."
            )

    def _train_epoch(self, progress: NoProgress) -> dict[str, float]:
        self.model.train()
        metrics = ClassificationMetrics(self.num_classes, self.device)
        batches = self.data.train
        assert batches is not None
        batches.set_epoch(self.epoch)
        clip = self.cfg.gradient_clip_val
        progress.start(f"epoch {self.epoch + 1}/{self.cfg.epochs}", total=len(batches))
        for inputs, targets in batches:
            outputs = self.model(to_memory_format(inputs, self.channels_last))
            loss = self.loss_fn(outputs, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            self.step += 1
            metrics.update(outputs.detach(), targets, loss.detach())
            if self.step % self.cfg.log_every_n_steps == 0:
                value = loss.item()  # the loop's only host-device sync, every N steps
                self.writer.add_scalar("train/loss", value, self.step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                progress.show_loss(value)
            progress.advance()
        progress.stop()
        return {f"train/{k}": v for k, v in metrics.compute().items()}

    def _step_scheduler(self, monitored: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored)
        else:
            self.scheduler.step()

    # ------------------------------------------------------------------ outputs
    def _log_epoch(self, improved: bool) -> None:
        record = self.history[-1]
        metrics = {k: v for k, v in record.items() if "/" in k}
        for name, value in metrics.items():
            # Per-step train/loss already has its tag; the epoch mean gets its own.
            self.writer.add_scalar("train/epoch_loss" if name == "train/loss" else name, value, self.epoch)
        self.writer.flush()
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        mark = "  * best" if improved else ""
        log.info(f"epoch {self.epoch}/{self.cfg.epochs}  {text}  lr {record['lr']:.2e}  {record['seconds']:.1f}s{mark}")

    def _save_checkpoints(self, best: bool) -> None:
        state = self.state_dict()
        save_checkpoint(self.checkpoint_dir / "last.pt", state)
        if best:
            save_checkpoint(self.checkpoint_dir / "best.pt", state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: tensors and plain values only."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": None,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": 0,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": rng_state(),
            "config": self.config_yaml,
            "history": self.history,
        }

    def close(self) -> None:
        self.writer.close()
