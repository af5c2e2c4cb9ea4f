"""The training loop, written out: train an epoch, validate, log, checkpoint, early-stop.

What the loop does not do itself, it asks of small objects at named points: the
callbacks (src/trainer/callbacks/), DDP's helpers (ddp.py), how the model is called
(forward.py), and the checkpoint writer (checkpoint.py). Resuming lives in resume.py.
"""

from __future__ import annotations

import logging
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from src.data.builder import DataSplits
from src.trainer.callbacks import Callbacks
from src.trainer import ddp, stops
from src.trainer.checkpoint import CheckpointFolder, RunInfo, TrainingState
from src.trainer.clock import Clock
from src.trainer.early_stopping import EarlyStopping, is_better
from src.trainer.evaluation import evaluate
from src.trainer.forward import ForwardPass, use_channels_last
from src.trainer.loss_log import PendingLosses
from src.trainer.micro_batches import MicroBatches, recovers_on
from src.trainer.loggers import Loggers
from src.trainer.progress import NoProgress, make_progress
from src.trainer.records import log_validation
from src.trainer.signals import StopRequest
from src.trainer.tasks import Task
from src.utils import distributed
from src.utils.errors import one_line

log = logging.getLogger(__name__)


class Trainer:
    """Owns the loop state (epoch, step, best metric, history) and the run's outputs.

    `cfg` is the `trainer` config group. Checkpoints go to `run_dir/checkpoints`;
    metrics, images and hyperparameters go to `loggers` (none on torchrun ranks other
    than 0). Everything is logged against the global step, so a resumed run can purge
    what came after its checkpoint.
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
        task: Task,
        device: torch.device,
        run_dir: Path,
        run_info: RunInfo | None = None,
        callbacks: Callbacks | None = None,
        loggers: Loggers | None = None,
        resume_command: str | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.data, self.cfg, self.device, self.task = data, cfg, device, task
        self.run_info = run_info or RunInfo()
        self.callbacks = callbacks or Callbacks()
        self.monitor, self.mode = cfg.monitor, cfg.mode
        # Plain values for the code run every step: each DictConfig read costs microseconds.
        self.clip, self.log_every, self.histograms_every = float(cfg.gradient_clip_val), int(cfg.log_every_n_steps), int(cfg.log_histograms_every_n_epochs)
        self.precision = str(cfg.precision)
        channels_last = use_channels_last(model, cfg.channels_last, data.input_shape, device, self.precision)
        # Loss scaling is only needed for float16; disabled, the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "16-mixed")
        self.scaling = self.scaler.is_enabled()
        # DDP (torchrun: averaged gradients) and torch.compile wrap training only: evaluation
        # uses the bare model, as compiling its no-grad eval-mode graph would be a second
        # compilation. Checkpoints come from `model` (no `module.`/`_orig_mod.` prefix).
        self.distributed = distributed.is_distributed()
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if self.distributed else None
        trained = torch.compile(self.ddp or model) if cfg.compile else (self.ddp or model)
        self.train_forward = ForwardPass(trained, loss_fn, device, channels_last, self.precision)
        self.eval_forward = ForwardPass(model, loss_fn, device, channels_last, self.precision)
        self.micro_batches = MicroBatches(self.train_forward, optimizer, self._backward, device, enabled=not self.distributed and recovers_on(device))
        self.rank_zero = distributed.is_rank_zero()
        self.world_size = distributed.rank_and_world_size()[1]
        self.run_dir, self.checkpoint_dir = run_dir, run_dir / "checkpoints"
        # What the stop messages tell the user to run (a sweep job continues with its sweep).
        launch = f"torchrun --nproc_per_node={self.world_size}" if self.distributed else "python"
        self.resume_command = resume_command or f"{launch} train.py resume={self.checkpoint_dir / 'last.pt'}"
        self.checkpoints = CheckpointFolder(self.checkpoint_dir, cfg.save_every_n_epochs, cfg.keep_last_k, self.resume_command)
        self.loggers = loggers if loggers is not None else Loggers()
        self.clock = Clock(cfg, scheduler, scheduler_interval)  # run length, what is due after a step, scheduler steps

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of epoch `epoch + 1` already done (mid-epoch resume)
        self.partial_metrics: dict[str, Any] | None = None  # their metric sums
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.history: list[dict[str, float]] = []
        self.early_stopping = EarlyStopping(cfg.mode, cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        self.stopped_early = False
        self.stop_requested: str | None = None  # a callback's status for ending after this epoch ("pruned")
        self.stop = StopRequest()
        self.stopping = 0  # the signal every rank agreed to stop for (0: none)
        self.losses = PendingLosses()
        self.first_step_logged = False
        self.epoch_first_step = 0  # the global step count when the current epoch began

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        self.checkpoints.remove_stale_temporaries()
        anomaly = torch.autograd.detect_anomaly() if self.cfg.detect_anomaly else nullcontext()
        bar = make_progress(self.cfg.progress if self.rank_zero else "none")
        with self.stop, anomaly, bar as progress:
            self.callbacks.call("on_fit_start", self)
            self.clock.lap()  # the first record's seconds count from here
            while self.clock.running(self.epoch, self.step) and not self.stopped_early and not self.stop_requested:
                self.callbacks.call("on_train_epoch_start", self)
                metrics = self.train_epoch(progress)
                if metrics is None:  # the run ended inside the epoch (max_steps, early stopping)
                    break
                self.callbacks.call("on_train_epoch_end", self, metrics)
                self._validation_point(metrics, progress, epoch_end=True)
                if self._signalled():
                    self._stop_for_signal()
            self.callbacks.call("on_fit_end", self)
        if self.distributed:
            ddp.check_ranks_agree(self.model)
        if self.stopped_early:
            why = self.early_stopping.why(self.monitor)
            log.info(f"Early stopping after epoch {self.epoch}, step {self.step}: {why} (best {self.best_metric:.4f} at step {self.best_step}).")

    def train_epoch(self, progress: NoProgress | None = None) -> dict[str, float] | None:
        """One pass over the training batches (from `batch_in_epoch` when resuming): its
        train/* metrics, or None when the run ends inside it (see `_inside_epoch`)."""
        progress = progress or NoProgress()
        self.model.train()
        metrics = self.task.metrics(self.device, training=True)
        if self.partial_metrics is not None:  # resuming in the middle of this epoch
            metrics.load_state_dict(self.partial_metrics)
        start, self.batch_in_epoch, self.partial_metrics = self.batch_in_epoch, 0, None
        batches = self.data.train
        assert batches is not None
        batches.set_epoch(self.epoch, start_batch=start)
        # Plain Python values: reading a DictConfig inside the loop costs microseconds per access.
        accumulate, num_batches = int(self.cfg.accumulate_grad_batches), len(batches)
        self.epoch_first_step = self.step - start // accumulate
        progress.start(self.clock.epoch_name(self.epoch + 1), total=num_batches, completed=start, batch_size=batches.batch_size)
        for batch, (inputs, targets) in enumerate(batches, start=start):
            steps = (batch + 1) % accumulate == 0 or batch + 1 == num_batches  # the accumulation window's last batch
            with ddp.gradient_sync(self.ddp, steps):  # forward and backward, in pieces once out of memory
                outputs, loss = self.micro_batches(inputs, targets, batch == start or batch % accumulate == 0, accumulate, batch)
            loss = loss.detach()
            metrics.update(outputs.detach(), targets, loss)
            self.losses.add(loss)
            progress.advance()
            if steps:
                self._optimizer_step(last_of_epoch=batch + 1 == num_batches)
                self._after_step(batch, inputs, progress)
            self.callbacks.call("on_train_batch_end", self, batch, loss)
            if steps and batch + 1 < num_batches and self._inside_epoch(batch, metrics):
                progress.stop()
                return None
        progress.stop()
        self._read_losses(num_batches - 1)
        return {f"train/{k}": v for k, v in metrics.compute().items()}

    def _backward(self, loss: torch.Tensor, batch: int) -> None:
        try:
            (self.scaler.scale(loss) if self.scaling else loss).backward()
        except RuntimeError as err:
            if not self.cfg.detect_anomaly or isinstance(err, torch.OutOfMemoryError):
                raise
            raise stops.anomaly(one_line(err), self.step + 1, self.epoch + 1, batch + 1, self._on_disk()) from err

    def _optimizer_step(self, last_of_epoch: bool) -> None:
        if self.clip > 0:
            if self.scaling:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if self.scaling:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if last_of_epoch and self.histograms_every > 0 and (self.epoch + 1) % self.histograms_every == 0:  # the epoch's last gradients
            self.loggers.log_histograms(self.model, self.step + 1)
        self.step += 1

    def _after_step(self, batch: int, inputs: torch.Tensor, progress: NoProgress) -> None:
        """The first step's one-time logs, the loss and the lr the step used every
        `log_every_n_steps` steps; then a per-step scheduler steps."""
        if not self.first_step_logged:
            self.first_step_logged = True
            log.info(f"first optimizer step done; {len(self.data.train)} batches per epoch")  # type: ignore[arg-type]
            self.loggers.log_inputs(self.model, inputs, self.step, images=self.cfg.log_images, graph=self.cfg.log_graph)
        if self.step % self.log_every == 0:
            value = self._read_losses(batch)  # the loop's only sync, every N steps
            self.loggers.log_metrics({"train/loss": value, "train/lr": self.optimizer.param_groups[0]["lr"]}, self.step)
            progress.show_loss(value)
        self.clock.after_step()  # a per-step scheduler: after the step's lr was logged

    def validate(self, model: nn.Module | None = None, progress: NoProgress | None = None) -> dict[str, float]:
        """The val/* metrics of `model` (the run's own by default); {} without a validation split."""
        if self.data.val is None:
            return {}
        ddp.sync_buffers(self.model)
        forward = self.eval_forward if model is None else ForwardPass(model, self.loss_fn, self.device, self.eval_forward.channels_last, self.precision)
        progress = progress or NoProgress()
        progress.start("validating", total=len(self.data.val), batch_size=self.data.val.batch_size)
        metrics = evaluate(forward, self.data.val, self.task.metrics(self.device), progress=progress)
        progress.stop()
        return {f"val/{k}": v for k, v in metrics.compute().items()}

    def _validation_point(self, metrics: dict[str, float], progress: NoProgress, epoch_end: bool) -> None:
        """Validate; then the scheduler, best checkpoint, early stopping, the history
        record (of epoch `epoch`, at step `step`), checkpoints and the log line."""
        self.callbacks.call("on_validation_start", self)
        metrics.update(self.validate(progress=progress))
        # Every decision below (best, scheduler, early stop) is rank 0's. The all-reduced
        # sums agree on every rank already; the broadcast makes it a guarantee.
        metrics = distributed.broadcast(metrics)
        self.callbacks.call("on_validation_end", self, metrics)
        epoch, monitored, lr = self.epoch + 1, metrics[self.monitor], self.optimizer.param_groups[0]["lr"]
        stops.check_validation_is_finite(metrics, ("val/loss", self.monitor), epoch, self._on_disk)
        if epoch_end:
            self.epoch = epoch
            self.clock.after_epoch()
        self.clock.after_validation(monitored)
        improved = is_better(monitored, self.best_metric, self.mode)
        if improved:
            self.best_metric, self.best_epoch, self.best_step = monitored, epoch, self.step
        self.stopped_early = self.early_stopping.update(monitored)
        self.history.append({"epoch": epoch, "step": self.step, **metrics, "lr": lr, "seconds": self.clock.lap()})
        self._save_checkpoints(best=improved)
        log_validation(self.loggers, self.history[-1], self.clock.epoch_name(epoch), improved, epoch_end)  # after the save: the line means it is on disk

    def _inside_epoch(self, batch: int, metrics: Any) -> bool:
        """After a step inside an epoch (batch `batch`; the epoch's `metrics` so far): validate or
        save when due, stop for a signal. True: the run ends here, and its last.pt is here."""
        if not (self.clock.counts_steps or self.distributed or self.stop.signum):
            return False  # the common case, answered at once: this runs after every step
        due, signalled = self.clock.due(self.step), self._signalled()
        if not (due.validate or due.save or signalled):
            return False
        self._read_losses(batch)  # never checkpoint past a NaN
        self.batch_in_epoch, self.partial_metrics = batch + 1, metrics.state_dict()
        if due.validate:
            self._validation_point({f"train/{k}": v for k, v in metrics.compute().items()}, NoProgress(), epoch_end=False)
        else:
            self._save_checkpoints(best=False)
        if signalled:
            self._stop_for_signal()
        if due.last or self.stopped_early:
            return True
        self.batch_in_epoch, self.partial_metrics = 0, None
        self.callbacks.call("on_train_continue", self)
        return False

    def _signalled(self) -> bool:
        self.stopping = ddp.agreed_signal(self.stop, self.distributed)
        return self.stopping != 0

    def _read_losses(self, batch: int) -> float:
        """The mean loss of the batches up to `batch`; a run stop at the first non-finite one."""
        return self.losses.mean(batch, self._non_finite_loss)

    def _non_finite_loss(self, value: float, bad: int) -> Exception:
        step = self.epoch_first_step + bad // int(self.cfg.accumulate_grad_batches) + 1
        return stops.non_finite_loss(value, step, self.epoch + 1, bad + 1, self._on_disk())

    def _on_disk(self) -> str:
        return stops.on_disk(self.checkpoint_dir, self.epoch, self.best_epoch)

    def _stop_for_signal(self) -> None:
        self.stop.pass_on()  # e.g. submitit requeues a preempted SLURM job (and exits)
        name, last = signal.Signals(self.stopping).name, self.checkpoint_dir / "last.pt"
        raise stops.signal_received(name, self.stopping, last, self.epoch, self.batch_in_epoch, self.step, self.resume_command)

    # ------------------------------------------------------------------ outputs
    def _save_checkpoints(self, best: bool) -> None:
        # state_dict() on every rank: it gathers each rank's RNG state.
        self.checkpoints.save(self.state_dict(), self.epoch, best, mid_epoch=bool(self.batch_in_epoch))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see checkpoint.TrainingState)."""
        return self.callbacks.checkpoint(self, TrainingState.of(self).to_dict())

    def close(self) -> None:
        self.loggers.close()
