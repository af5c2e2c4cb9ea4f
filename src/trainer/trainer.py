"""The training loop, written out: train an epoch, validate, log, checkpoint, early-stop."""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from src.data.builder import Batches, DataSplits
from src.trainer.checkpoint import FORMAT_VERSION, load_model_state, save_checkpoint
from src.trainer.early_stopping import EarlyStopping, is_better
from src.trainer.images import image_grid
from src.trainer.loggers import Loggers
from src.trainer.metrics import Metrics, make_metrics
from src.trainer.progress import NoProgress, make_progress
from src.trainer.signals import StopRequest
from src.utils import distributed
from src.utils.errors import RunStopped, UserError, one_line
from src.utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


def use_channels_last(
    model: nn.Module, setting: str | bool, input_shape: Sequence[int], device: torch.device, precision: str = "32"
) -> bool:
    """Decide `trainer.channels_last` for `model` and put the model in that memory format.

    `auto` is on for a model with a Conv2d on image inputs, once a dry training step
    shows that the model works in channels-last (one that flattens with `.view()`
    after a convolution does not); otherwise the model keeps the default format.
    `true` makes such a failure a UserError. Training and evaluation both decide here.
    """
    images = len(input_shape) == 3
    on = (images and any(isinstance(m, nn.Conv2d) for m in model.modules())) if setting == "auto" else bool(setting)
    failure = _channels_last_failure(model, input_shape, device, precision) if on and images else None
    if failure is not None and setting is True:
        raise UserError(
            f"trainer.channels_last=true, but {type(model).__name__} fails a training step in the channels-last "
            f"memory format that works in the default one: {failure}. The likely cause is a `.view()` after a "
            f"convolution (such as `x.view(-1, 320)`): `.reshape()` or `torch.flatten(x, 1)` does the same in either "
            f"format. Or set trainer.channels_last=false (or auto, which leaves it off for such a model)."
        )
    if failure is not None:
        log.info(
            f"trainer.channels_last=auto: channels-last stays off, since {type(model).__name__} fails in it "
            f"({failure}); continuing in the default memory format."
        )
        on = False
    if on:
        model.to(memory_format=torch.channels_last)
    return on


def _channels_last_failure(model: nn.Module, input_shape: Sequence[int], device: torch.device, precision: str) -> str | None:
    """The error of a dry training step that fails in channels-last and works in the
    default format; None when it works in channels-last, or fails in both (then the
    model's trouble is not the layout, and its first real step reports it)."""
    model.to(memory_format=torch.channels_last)
    failure = _dry_step(model, input_shape, device, precision, channels_last=True)
    model.to(memory_format=torch.contiguous_format)
    if failure is None or _dry_step(model, input_shape, device, precision, channels_last=False) is not None:
        return None
    return failure


def _dry_step(model: nn.Module, input_shape: Sequence[int], device: torch.device, precision: str, channels_last: bool) -> str | None:
    """Forward and backward two zero samples in train mode, as a training step does;
    returns the error, or None. It leaves no trace: it changes no weight, and the
    gradients, buffers (batch-norm statistics) and every RNG (dropout draws from it)
    are put back, so that a run stays bitwise the same with or without it."""
    inputs = to_memory_format(torch.zeros(2, *input_shape, device=device), channels_last)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    rng, was_training = rng_state(), model.training
    model.train()
    try:
        with autocast(device, precision):
            outputs = model(inputs)
        if isinstance(outputs, torch.Tensor) and outputs.requires_grad:
            outputs.float().sum().backward()
        return None
    except Exception as err:  # whatever the model raises is the answer
        return f"{type(err).__name__}: {one_line(err)}"
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        set_rng_state(rng)
        model.train(was_training)


def to_memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


# trainer.precision -> the autocast dtype (None: plain float32).
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to the precision's dtype; for plain float32 a no-op context (building a
    disabled torch.autocast costs tens of microseconds, on every step)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Batches,
    num_outputs: int,
    device: torch.device,
    *,
    task: str = "classification",
    confusion: bool = False,
    channels_last: bool = False,
    precision: str = "32",
    stop: StopRequest | None = None,
) -> Metrics:
    """Run `model` over every batch once, in eval mode, and return the summed metrics;
    when `stop` receives a signal, return after the current batch."""
    model.eval()
    metrics = make_metrics(task, num_outputs, device, confusion=confusion)
    batches.set_epoch(0)
    for inputs, targets in batches:
        if stop is not None and stop.signum:
            break
        with autocast(device, precision):
            outputs = model(to_memory_format(inputs, channels_last))
            loss = loss_fn(outputs, targets)
        metrics.update(outputs, targets, loss)
    return metrics


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
        num_outputs: int,
        device: torch.device,
        run_dir: Path,
        config_yaml: str,
        choices: dict[str, str] | None = None,
        task: str = "classification",
        data_stats: dict[str, list[float]] | None = None,
        loggers: Loggers | None = None,
    ) -> None:
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler = optimizer, scheduler
        self.data, self.cfg = data, cfg
        self.task, self.num_outputs, self.device = task, num_outputs, device
        self.config_yaml, self.choices, self.data_stats = config_yaml, dict(choices or {}), data_stats
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.precision = str(cfg.precision)
        self.channels_last = use_channels_last(model, cfg.channels_last, data.input_shape, device, self.precision)
        # Loss scaling is only needed for float16; disabled, the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "16-mixed")
        # Under torchrun the training forward goes through DistributedDataParallel,
        # which averages the gradients of all ranks; evaluation uses the bare model,
        # each rank on its own share of the batches. Checkpoints always come from
        # `model`, so they never carry a `module.` or torch.compile `_orig_mod.`
        # prefix, and load in one process, without compile.
        self.distributed = distributed.is_distributed()
        self.ddp = None
        if self.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_model = self.ddp if self.ddp is not None else model
        self.forward_model = torch.compile(train_model) if cfg.compile else train_model
        self.eval_model = model if self.distributed else self.forward_model
        self.rank_zero = distributed.is_rank_zero()
        self.world_size = distributed.rank_and_world_size()[1]
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.loggers = loggers if loggers is not None else Loggers()

        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of epoch `epoch + 1` already done (mid-epoch resume)
        self.partial_metrics: dict[str, Any] | None = None  # their metric sums
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self.early_stopping = EarlyStopping(cfg.mode, cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        self.stopped_early = False
        self.stop = StopRequest()
        self.stopping = 0  # the signal every rank agreed to stop for (0: none)
        self.first_step_logged = False
        self.epoch_first_step = 0  # the global step count when the current epoch began
        self.profiler: torch.profiler.profile | None = None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        if self.rank_zero:
            for stale in self.checkpoint_dir.glob(".*.tmp"):  # left by a process killed mid-save
                stale.unlink()
        anomaly = torch.autograd.detect_anomaly() if self.cfg.detect_anomaly else nullcontext()
        self.profiler = self._profiler()
        bar = make_progress(self.cfg.progress if self.rank_zero else "none")
        with self.stop, anomaly, self.profiler or nullcontext(), bar as progress:
            while self.epoch < self.cfg.epochs and not self.stopped_early:
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                metrics = self.train_epoch(progress)
                self.sync_buffers()
                if self.data.val is not None:
                    val = evaluate(
                        self.eval_model,
                        self.loss_fn,
                        self.data.val,
                        self.num_outputs,
                        self.device,
                        task=self.task,
                        channels_last=self.channels_last,
                        precision=self.precision,
                    )
                    metrics.update({f"val/{k}": v for k, v in val.compute().items()})
                # Every decision below (best, scheduler, early stop) is rank 0's. The
                # all-reduced sums agree on every rank already; the broadcast makes the
                # agreement a guarantee rather than a property of the reduction.
                metrics = distributed.broadcast(metrics)
                self._stop_on_non_finite_validation(metrics)
                self.epoch += 1
                self._step_scheduler(metrics[self.monitor])
                improved = is_better(metrics[self.monitor], self.best_metric, self.mode)
                if improved:
                    self.best_metric, self.best_epoch = metrics[self.monitor], self.epoch
                self.stopped_early = self.early_stopping.update(metrics[self.monitor])
                self.history.append({"epoch": self.epoch, **metrics, "lr": lr, "seconds": time.perf_counter() - started})
                self._save_checkpoints(best=improved)
                self._log_epoch(improved)  # after the save: the line means the epoch is on disk
                if self._signalled():
                    self._stop_for_signal()
        if self.distributed:
            self._check_ranks_agree()
        if self.stopped_early:
            es = self.early_stopping
            log.info(
                f"Early stopping after epoch {self.epoch}: {self.monitor} has not improved by more than "
                f"{es.min_delta} for {es.patience} epochs (best {self.best_metric:.4f} at epoch {self.best_epoch})."
            )

    def train_epoch(self, progress: NoProgress | None = None) -> dict[str, float]:
        """One pass over the training batches (from `batch_in_epoch` when resuming)."""
        progress = progress or NoProgress()
        self.model.train()
        metrics = make_metrics(self.task, self.num_outputs, self.device, training=True)
        if self.partial_metrics is not None:  # resuming in the middle of this epoch
            metrics.load_state_dict(self.partial_metrics)
        start, self.batch_in_epoch, self.partial_metrics = self.batch_in_epoch, 0, None
        batches = self.data.train
        assert batches is not None
        batches.set_epoch(self.epoch, start_batch=start)
        self.epoch_first_step = self.step - start // self.cfg.accumulate_grad_batches
        # Each step's loss tensor, kept (not read) until the loop syncs anyway: every
        # log_every_n_steps, before a checkpoint and at the epoch's end. Then one
        # transfer gives the logged loss and the exact step of any NaN.
        recent: list[torch.Tensor] = []
        # Plain Python values: reading a DictConfig inside the loop costs microseconds per access.
        clip, accumulate = float(self.cfg.gradient_clip_val), int(self.cfg.accumulate_grad_batches)
        log_every, num_batches = int(self.cfg.log_every_n_steps), len(batches)
        scaling = self.scaler.is_enabled()
        every = int(self.cfg.log_histograms_every_n_epochs)
        histograms_due = every > 0 and (self.epoch + 1) % every == 0
        progress.start(f"epoch {self.epoch + 1}/{self.cfg.epochs}", total=num_batches, completed=start)
        for batch, (inputs, targets) in enumerate(batches, start=start):
            stepping = (batch + 1) % accumulate == 0 or batch + 1 == num_batches
            # Under DDP, gradients are averaged across ranks only on the window's last batch.
            with self._no_sync() if not stepping else nullcontext():
                with autocast(self.device, self.precision):
                    outputs = self.forward_model(to_memory_format(inputs, self.channels_last))
                    loss = self.loss_fn(outputs, targets)
                if batch == start or batch % accumulate == 0:
                    # Cleared right before the window's first backward, as in the classic
                    # loop: clearing right after the step instead lets the next forward
                    # reuse the gradients' memory, which cost 10-15% on CPU convnets.
                    self.optimizer.zero_grad(set_to_none=True)
                # Averaging over the accumulated batches makes k batches of n one batch of k*n.
                scaled = loss if accumulate == 1 else loss / accumulate
                self._backward(self.scaler.scale(scaled) if scaling else scaled, batch)
            detached = loss.detach()
            metrics.update(outputs.detach(), targets, detached)
            recent.append(detached)
            progress.advance()
            if not stepping:
                continue  # keep accumulating gradients
            if clip > 0:
                if scaling:
                    self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            if scaling:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if histograms_due and batch + 1 == num_batches:  # the epoch's last gradients
                self.loggers.log_histograms(self.model, self.step + 1)
            self.step += 1
            if self.profiler is not None:
                self.profiler.step()
            if not self.first_step_logged:
                self.first_step_logged = True
                log.info(f"first optimizer step done; {num_batches} batches per epoch")
                self._log_inputs(inputs)
            if self.step % log_every == 0:
                value = self._read_losses(recent, batch)  # the loop's only sync, every N steps
                self.loggers.log_metrics({"train/loss": value, "train/lr": self.optimizer.param_groups[0]["lr"]}, self.step)
                progress.show_loss(value)
            if self._signalled() and batch + 1 < num_batches:
                if recent:  # empty right after a logging step
                    self._read_losses(recent, batch)  # never checkpoint past a NaN
                self.batch_in_epoch, self.partial_metrics = batch + 1, metrics.state_dict()
                self._save_checkpoints(best=False)
                self._stop_for_signal()
        progress.stop()
        if recent:
            self._read_losses(recent, len(batches) - 1)
        return {f"train/{k}": v for k, v in metrics.compute().items()}

    def _no_sync(self) -> AbstractContextManager:
        """DDP's no_sync(): a backward that keeps its gradients on this rank."""
        return self.ddp.no_sync() if self.ddp is not None else nullcontext()

    def _signalled(self) -> bool:
        """Whether SIGINT/SIGTERM arrived. Under torchrun the ranks agree after every
        step (one tiny CPU all-reduce), so they all stop at the same step; only the
        agreed value counts, since a signal may land on one rank right after the vote."""
        signum = self.stop.signum or 0  # read once
        if self.distributed:
            signum = distributed.max_across_ranks(signum)
        self.stopping = signum
        return signum != 0

    def _check_ranks_agree(self) -> None:
        """Under torchrun, check that every rank ends with bitwise the same weights: DDP
        keeps them equal, unless code outside it changes one rank's model."""
        digest = hashlib.sha256()
        for tensor in self.model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digests = distributed.gather(digest.hexdigest())
        if len(set(digests)) > 1:  # reported, not raised: rank 0's checkpoints are still sound
            log.error(f"The ranks ended with different weights (sha256 per rank: {digests}); DDP should keep them equal.")
        else:
            log.info(f"Final weights identical on all {len(digests)} ranks (sha256 {digests[0][:16]})")

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics), which each rank's
        last training forward changed on its own, so that evaluation on every rank uses
        the model rank 0 checkpoints."""
        if self.distributed:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _profiler(self) -> torch.profiler.profile | None:
        """torch.profiler over a few steps (trainer.profile), traced into tensorboard/."""
        if not self.cfg.profile or not self.rank_zero:
            return None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace_dir = self.run_dir / "tensorboard"
        log.info(f"Profiling optimizer steps 3 to 7; the trace goes to {trace_dir}")
        return torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=5, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(trace_dir)),
            record_shapes=True,
        )

    def _log_inputs(self, inputs: torch.Tensor) -> None:
        """Once per run: an image grid of the first batch and, on request, the graph."""
        if self.cfg.log_images and inputs.ndim == 4 and inputs.shape[1] in (1, 3):
            self.loggers.log_image("train/first_batch", image_grid(inputs), self.step)
        if self.cfg.log_graph:
            self.loggers.log_graph(self.model, to_memory_format(inputs[:1], self.channels_last))

    def _read_losses(self, recent: list[torch.Tensor], batch: int) -> float:
        """Read the losses of the last batches (`batch` is the newest) back at once:
        stop on the first non-finite one, else return their mean. Empties `recent`.
        Under torchrun they are averaged over the ranks first, so every rank sees the
        same values and stops at the same NaN."""
        values = (distributed.sum_across_ranks(torch.stack(recent)) / self.world_size).tolist()
        recent.clear()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                bad_batch = batch - len(values) + 1 + i
                raise RunStopped(
                    f"Non-finite training loss ({value}) at step {self.step_of(bad_batch)} (epoch {self.epoch + 1}, "
                    f"batch {bad_batch + 1}). {self._checkpoints_on_disk()} Try a lower optimizer.lr, "
                    f"trainer.gradient_clip_val, or trainer.detect_anomaly=true to find the operation that produced it.",
                    exit_code=1,
                )
        return sum(values) / len(values)

    def _stop_on_non_finite_validation(self, metrics: dict[str, float]) -> None:
        """Stop when the validation loss or the monitored metric is nan or inf: the model
        has diverged. Such an epoch never counts as an improvement, so in the first epoch
        it would leave no best.pt to test, and later ones would only train on from a
        broken model. (Other metrics may be nan by definition, such as R² of constant targets.)"""
        for name, value in metrics.items():
            if name in ("val/loss", self.monitor) and not math.isfinite(value):
                raise RunStopped(
                    f"Non-finite validation metric {name}={value} after epoch {self.epoch + 1}: the model diverged "
                    f"(its outputs or loss on the validation split are not finite). {self._checkpoints_on_disk()} Try a lower optimizer.lr or "
                    f"trainer.gradient_clip_val.",
                    exit_code=1,
                )

    def step_of(self, batch: int) -> int:
        """The optimizer step (1-based, global) that batch `batch` of this epoch belongs to."""
        return self.epoch_first_step + batch // int(self.cfg.accumulate_grad_batches) + 1

    def _backward(self, loss: torch.Tensor, batch: int) -> None:
        try:
            loss.backward()
        except RuntimeError as err:
            if not self.cfg.detect_anomaly:
                raise
            reason = one_line(err)
            raise RunStopped(
                f"Anomaly detected at step {self.step + 1} (epoch {self.epoch + 1}, batch {batch + 1}): {reason}. "
                f"{self._checkpoints_on_disk()}",
                exit_code=1,
            ) from err

    def _checkpoints_on_disk(self) -> str:
        if not (self.checkpoint_dir / "last.pt").exists():
            return "No checkpoint was saved before it."
        return (
            f"The checkpoints in {self.checkpoint_dir} are from before it and were not touched "
            f"(last.pt: epoch {self.epoch}, best.pt: epoch {self.best_epoch})."
        )

    def _stop_for_signal(self) -> None:
        where = f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}" if self.batch_in_epoch else f"the end of epoch {self.epoch}"
        last = self.checkpoint_dir / "last.pt"
        launch = f"torchrun --nproc_per_node={self.world_size}" if self.distributed else "python"
        message = f"{signal.Signals(self.stopping).name} received: saved {last} at {where} (step {self.step}). Resume with: {launch} train.py resume={last}"
        self.stop.pass_on()  # e.g. submitit requeues a preempted SLURM job (and exits)
        raise RunStopped(message, exit_code=128 + self.stopping)

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
        # Per-step train/loss already has its name; the epoch mean gets its own.
        logged = {"train/epoch_loss" if name == "train/loss" else name: value for name, value in metrics.items()}
        self.loggers.log_metrics({**logged, "epoch": self.epoch}, self.step)
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        mark = "  * best" if improved else ""
        log.info(f"epoch {self.epoch}/{self.cfg.epochs}  {text}  lr {record['lr']:.2e}  {record['seconds']:.1f}s{mark}")

    def _save_checkpoints(self, best: bool) -> None:
        # last.pt is renamed last: it is what a resume starts from, so after a kill
        # between two renames the resume repeats this save, and every file it names
        # (this epoch's epoch_NNN.pt, best.pt) exists; see resume.restore_best.
        paths = []
        every = self.cfg.save_every_n_epochs
        if every and not self.batch_in_epoch and self.epoch % every == 0:
            paths.append(self.checkpoint_dir / f"epoch_{self.epoch:03d}.pt")
        if best:
            paths.append(self.checkpoint_dir / "best.pt")
        paths.append(self.checkpoint_dir / "last.pt")
        state = self.state_dict()  # on every rank: it gathers each rank's RNG state
        if self.rank_zero:
            try:
                save_checkpoint(state, *paths)
            except OSError as err:  # a full or read-only disk: each file is whole, old or new
                raise RunStopped(
                    f"Could not write a checkpoint in {self.checkpoint_dir}: {err.strerror or err}. Every checkpoint "
                    f"there is whole (each is replaced only once its new version is complete). Free some space, then "
                    f"resume: python train.py resume={self.checkpoint_dir / 'last.pt'}",
                    exit_code=1,
                ) from None
            if self.cfg.keep_last_k:
                for old in sorted(self.checkpoint_dir.glob("epoch_*.pt"))[: -self.cfg.keep_last_k]:
                    old.unlink()
        # No rank goes on (to read best.pt, or to exit after a signal) before the files are written.
        distributed.barrier()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: tensors and plain values only."""
        rng = rng_state()
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "partial_epoch_metrics": self.partial_metrics,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": rng,
            # Under torchrun, each rank's own RNGs and partial metric sums (rank order),
            # so that every rank resumes exactly where it stopped.
            "world_size": self.world_size,
            "rank_states": distributed.gather({"rng": rng, "partial_epoch_metrics": self.partial_metrics})
            if self.distributed
            else None,
            "config": self.config_yaml,
            "choices": self.choices,
            "data_stats": self.data_stats,
            "history": self.history,
            "loggers": self.loggers.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restore a checkpoint written by `state_dict`; the RNGs last, so that nothing
        built after this call draws from them before the loop does."""
        load_model_state(self.model, state["model"], path)
        if (state["scheduler"] is None) != (self.scheduler is None):
            had = "a" if state["scheduler"] is not None else "no"
            raise UserError(f"{str(path)!r} was trained with {had} learning-rate scheduler; resume it with the same scheduler config.")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise UserError(f"The optimizer or scheduler state in {str(path)!r} does not fit this run's config: {one_line(err)}.") from None
        self.epoch, self.step = state["epoch"], state["step"]
        own = self._own_rank_state(state, path)
        self.batch_in_epoch, self.partial_metrics = state["batch_in_epoch"], own["partial_epoch_metrics"]
        self.best_metric, self.best_epoch = state["best_metric"], state["best_epoch"]
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.stopped_early = self.early_stopping.should_stop  # a run that stopped early stays stopped
        self.history = list(state["history"])
        # What the loggers need to continue their records (e.g. a remote run's id), and
        # the step after which what they hold did not happen.
        self.loggers.load_state_dict(state.get("loggers"))
        self.loggers.purge_after(self.step)
        if own["rng"] is not None:
            set_rng_state(own["rng"])

    def _own_rank_state(self, state: dict[str, Any], path: Path) -> dict[str, Any]:
        """This rank's RNG state and partial epoch metrics from a checkpoint: its own
        entry when the checkpoint comes from as many ranks as run now."""
        saved_world = state.get("world_size", 1)
        ranks = state.get("rank_states")
        if saved_world == self.world_size and ranks:
            return ranks[distributed.rank()]
        if saved_world != self.world_size and state["batch_in_epoch"]:
            raise UserError(
                f"{str(path)!r} was saved in the middle of an epoch by {saved_world} process(es), and this run has "
                f"{self.world_size}: each process's position in its share of the data only holds for the same number. "
                f"Resume it with torchrun --nproc_per_node={saved_world}"
                f"{'' if saved_world > 1 else ' (or plain python)'}, or resume an epoch-end checkpoint (epoch_NNN.pt)."
            )
        if saved_world != self.world_size:
            log.warning(
                f"{path} comes from {saved_world} process(es) and this run has {self.world_size}: training continues "
                f"from it, but not bitwise as the original run would have (the data is shared out differently)."
            )
            # Each rank keeps the random numbers of its own seed (seed + rank), rather
            # than every rank taking rank 0's and drawing the same dropout masks.
            return {"rng": None, "partial_epoch_metrics": None}
        return {"rng": state["rng"], "partial_epoch_metrics": state.get("partial_epoch_metrics")}

    def close(self) -> None:
        self.loggers.close()
