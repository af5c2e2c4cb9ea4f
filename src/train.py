"""One training run: from a composed, validated config to the monitored metric.

Reads top to bottom like a hand-written script: build the data, model, loss,
optimizer and scheduler from their configs, fit, test the best checkpoint, report.

The best epoch's evaluation extras (a classifier's per-class precision, recall and F1,
and its confusion matrix labelled with the class names) are those of that test of
best.pt: written into metrics.json, printed, and logged once at the end of training
as the `test/...` images (validation counts the matrix too, for `val/macro_f1`, but
the loop draws and logs nothing per epoch).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from src.data.builder import DataSplits, build_data
from src.trainer import stops
from src.trainer.callbacks import Callbacks
from src.trainer.checkpoint import RunInfo, load_checkpoint, load_model_state
from src.trainer.clock import total_steps
from src.trainer.evaluation import evaluate
from src.trainer.loggers import Hyperparameters, Loggers
from src.trainer.records import best_record
from src.trainer.schedulers import build_scheduler, check_schedule_length
from src.trainer.trainer import Trainer
from src.trainer.signals import StopRequest
from src.trainer.resume import restore, resumed_config, vouched_targets
from src.trainer.tasks import Extra, get_task
from src.tune.batch_size import search_batch_size
from src.utils import distributed
from src.utils.build import build
from src.utils.config import config_summary, config_tree, flatten, overridden_keys, validate_train_config
from src.utils.console import logging_to, show
from src.utils.device import resolve_device, set_thread_share
from src.utils.errors import RunStopped
from src.utils.io import atomic_write_json
from src.utils.seed import seed_everything, set_deterministic
from src.utils.summary import model_summary
from src.utils.sweep import job_overrides, resume_command

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Train, validate and test one run; returns the best value of `trainer.monitor`."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with logging_to(run_dir / "train.log"):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> float:
    started = time.time()
    set_thread_share(HydraConfig.get().launcher)
    state = None
    if cfg.resume:
        state = load_checkpoint(cfg.resume, resuming=True, vouched=vouched_targets(cfg))
        hydra = HydraConfig.get()
        cfg = resumed_config(cfg, state, list(hydra.overrides.task), set(hydra.runtime.choices))
        validate_train_config(cfg)
        within = f", batch {state['batch_in_epoch']} of epoch {state['epoch'] + 1}" if state["batch_in_epoch"] else ""
        log.info(f"Resuming {cfg.resume}: {state['epoch']} epochs done{within}, step {state['step']}")
    overrides = list(HydraConfig.get().overrides.task)
    show(config_tree(cfg) if cfg.print_config == "full" else config_summary(cfg, _group_choices(state), overrides))
    tuner = build("tune", cfg.tune) if cfg.get("tune") else None  # e.g. tune=lr_find: a report instead of a run
    # Each torchrun rank draws its own random numbers (dropout, say); DDP starts every
    # rank from rank 0's initial weights.
    seed_everything(cfg.seed + distributed.rank())
    set_deterministic(cfg.trainer.deterministic)
    device = resolve_device(cfg.trainer.device)
    searching = cfg.data.batch_size == "auto"  # a resumed run keeps the size its search chose
    if searching:  # the search's first batch holds as many samples as it may try
        cfg.data.batch_size = int(cfg.trainer.batch_size_search.max_batch_size)

    def load_data() -> DataSplits:
        return build_data(
            cfg.data,
            device,
            seed=cfg.seed,
            stats=state.get("data_stats") if state else None,
            limit_batches=cfg.trainer.limit_batches,
            overfit_batches=cfg.trainer.overfit_batches,
            # A resume keeps the run's own target statistics and class names.
            target_stats=state.get("target_stats") if state else None,
            classes=state.get("classes") if state else None,
        )

    data = load_data()
    if cfg.data.input_shape is None:  # e.g. a CSV's number of feature columns
        cfg.data.input_shape = list(data.input_shape)
    model = build("model", cfg.model).to(device)
    task = get_task(cfg.data, data.target_stats)
    loss_fn = task.loss(build("loss", cfg.loss))
    optimizer = build("optimizer", cfg.optimizer, parameter_groups(model))
    for group in optimizer.param_groups:  # e.g. a pretrained backbone learning slower than its head
        # Kept in the group, and so in checkpoints: a resume's new optimizer.lr is scaled alike.
        group.setdefault("lr_scale", 1.0)
        group["lr"] *= group["lr_scale"]
    if searching:  # stored in the run's config, and so in its checkpoints
        cfg.data.batch_size = search_batch_size(model, loss_fn, optimizer, data, device, cfg)
        del data  # before loading it again in batches of the chosen size
        data = load_data()
    run_steps = total_steps(cfg.trainer.epochs, cfg.trainer.max_steps, len(data.train), cfg.trainer.accumulate_grad_batches)
    scheduler, interval = build_scheduler(cfg.scheduler, optimizer, run_steps)
    show(model_summary(model, data.input_shape, device))
    ranks = distributed.rank_and_world_size()[1]
    ddp = f"; DDP over {ranks} processes, {cfg.data.batch_size} samples per process and batch" if distributed.is_distributed() else ""
    log.info(
        f"{type(model).__name__} on {device}; {data.train.num_samples} training, "
        f"{data.val.num_samples if data.val else 0} validation samples "
        f"({'in-memory' if data.in_memory else 'DataLoader'} data path)"
        f"{ddp}"
    )
    if tuner is not None:
        return tuner(cfg=cfg, model=model, loss_fn=loss_fn, optimizer=optimizer, data=data, device=device, run_dir=run_dir, overrides=overrides)

    callbacks = Callbacks({name: build(f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items() if node})
    run_info = RunInfo(
        OmegaConf.to_yaml(cfg, resolve=True), _group_choices(state), data.stats, data.classes, data.features, data.target_stats
    )
    trainer = Trainer(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        data=data,
        cfg=cfg.trainer,
        task=task,
        device=device,
        run_dir=run_dir,
        run_info=run_info,
        callbacks=callbacks,
        loggers=build_loggers(cfg.get("logger"), run_dir),
        resume_command=resume_command(HydraConfig.get()) if HydraConfig.get().mode == RunMode.MULTIRUN else None,
        scheduler_interval=interval,
    )
    try:
        if state is not None:
            restore(trainer, state, Path(cfg.resume), cfg)
            check_schedule_length(trainer.scheduler, run_steps)
        trainer.loggers.log_hyperparams(hyperparameters(cfg, run_info.choices), {}, trainer.step)
        trainer.fit()
        best_path = trainer.checkpoint_dir / "best.pt"
        load_model_state(model, load_checkpoint(best_path)["model"], best_path)
        with StopRequest() as stop:
            tested = evaluate(trainer.eval_forward, data.test, task.metrics(device), stop=stop)
            test = {f"test/{k}": v for k, v in tested.compute().items()}
        if stop.signum:
            raise stops.signal_in_final_test(stop.name, stop.signum, trainer.checkpoint_dir / "last.pt", trainer.resume_command)
        # The best epoch's extras (a classifier's per-class scores and confusion matrix):
        # those of best.pt on the test split, from the pass above.
        extras = tested.extras(data.classes)
        if distributed.is_rank_zero():
            _write_results(cfg, trainer, test, extras, run_dir, time.time() - started)
    except RunStopped as stop:
        if stop.exit_code == 1 and distributed.is_rank_zero():  # a NaN, a full disk; not a signal, which resumes
            _write_failure(trainer, stop, run_dir, time.time() - started)
        raise
    finally:
        trainer.close()
    _print_summary(trainer, test, extras, run_dir)
    return float(trainer.best_metric)


def _write_results(cfg: DictConfig, trainer: Trainer, test: dict[str, float], extras: dict[str, Extra], run_dir: Path, seconds: float) -> None:
    """metrics.json; the hyperparameters with the best and test metrics, the test's
    extras (as `test/<name>` images, once, at the last step) and the best checkpoint,
    to the loggers."""
    results = _results(trainer, run_dir, seconds, status=trainer.stop_requested or "completed", test=test)
    results.update({f"test_{name}": extra.to_json() for name, extra in extras.items()})
    try:
        atomic_write_json(run_dir / "metrics.json", results)
    except OSError as err:
        done = f"Training and the test finished ({trainer.monitor} best {trainer.best_metric:.4f} at epoch {trainer.best_epoch}; test {test}). "
        reason = err.strerror or str(err)
        raise stops.not_written(str(run_dir / "metrics.json"), reason, trainer.checkpoint_dir, trainer.resume_command, done) from None
    final = {f"best/{trainer.monitor}": trainer.best_metric, **test}
    trainer.loggers.log_hyperparams(hyperparameters(cfg, trainer.run_info.choices), final, trainer.step)
    for name, extra in extras.items():
        extra.log(trainer.loggers, f"test/{name}", trainer.step)
    trainer.loggers.save_artifact(trainer.checkpoint_dir / "best.pt")


# Config keys and groups that say where a run reads and writes (this machine's paths)
# or how it reports, not what it trains: never hyperparameters.
NOT_HYPERPARAMETERS = ("data.root", "data.path", "data.dataset.root", "data.dataset.path", "resume", "sweep", "name", "logger", "hparams_search", "trainer.device", "trainer.progress", "print_config", "callbacks.optuna_pruning")


def hyperparameters(cfg: DictConfig, choices: dict[str, str]) -> Hyperparameters:
    """What the loggers record: the flattened config; and, to compare runs by, the config
    group `choices` (`model: cnn`) and the values the command line set."""
    config = {key: value for key, value in flatten(cfg) if not _is_one_of(key, NOT_HYPERPARAMETERS)}
    compared: dict[str, Any] = {
        group: choice for group, choice in choices.items() if choice != "None" and not _is_one_of(group, NOT_HYPERPARAMETERS)
    }
    for key in overridden_keys(list(HydraConfig.get().overrides.task)):
        if key not in choices:
            compared.update((name, value) for name, value in config.items() if _is_one_of(name, (key,)))
    return Hyperparameters(config, compared)


def _is_one_of(key: str, names: tuple[str, ...]) -> bool:
    """`key` is one of `names`, or inside one (`logger.csv.filename` is inside `logger`)."""
    return any(key == name or key.startswith(f"{name}.") for name in names)


def build_loggers(cfg: DictConfig | None, run_dir: Path) -> Loggers:
    """One logger per entry of the `logger` config, on rank 0 only: under torchrun the
    other ranks get none, and log nothing."""
    if not cfg or not distributed.is_rank_zero():
        return Loggers()
    return Loggers({name: build(f"logger.{name}", node, run_dir=run_dir) for name, node in cfg.items()})


def _group_choices(state: dict[str, Any] | None) -> dict[str, str]:
    """Which option of each config group this run uses (a resumed run keeps its own)."""
    if state is not None:
        return dict(state.get("choices", {}))
    choices = HydraConfig.get().runtime.choices
    return {group: str(choice) for group, choice in choices.items() if not group.startswith("hydra")}


def parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """What the optimizer trains: the model's own groups when it defines them (a
    pretrained backbone and its new head), else every trainable parameter; frozen
    parameters get no optimizer state."""
    if hasattr(model, "parameter_groups"):
        return model.parameter_groups()
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def _write_failure(trainer: Trainer, stop: RunStopped, run_dir: Path, seconds: float) -> None:
    """metrics.json for a run that stopped on an error: `status: failed`, the reason and
    the history so far (a sweep's leaderboard reads it). A disk that refuses it leaves
    the stop's own message to tell."""
    try:
        atomic_write_json(run_dir / "metrics.json", _results(trainer, run_dir, seconds, status="failed", error=str(stop)))
    except OSError:
        return
    stop.recorded = True


def _results(trainer: Trainer, run_dir: Path, seconds: float, **outcome: Any) -> dict[str, Any]:
    """What metrics.json holds: `outcome` (status, and test metrics or the error), then
    the run's record so far."""
    best = best_record(trainer.history, trainer.best_step, trainer.best_epoch)
    best_checkpoint = trainer.checkpoint_dir / "best.pt"
    return {
        **outcome,
        "monitor": trainer.monitor,
        "mode": trainer.mode,
        "best_metric": trainer.best_metric,
        "best_epoch": trainer.best_epoch,
        "best_step": trainer.best_step,
        "epochs_run": trainer.epoch,
        "steps_run": trainer.step,
        "stopped_early": trainer.stopped_early,
        "best": best,
        "final": trainer.history[-1] if trainer.history else None,
        "history": trainer.history,
        "run_dir": str(run_dir),
        "best_checkpoint": str(best_checkpoint) if best_checkpoint.is_file() else None,
        "overrides": job_overrides(list(HydraConfig.get().overrides.task)),
        "wall_seconds": seconds,
    }


def _print_summary(trainer: Trainer, test: dict[str, float], extras: dict[str, Extra], run_dir: Path) -> None:
    epochs = Table(title="Validations", title_justify="left")
    columns = [k for k in trainer.history[-1] if "/" in k]
    for column in ["epoch", "step", *columns, "lr", "time"]:
        epochs.add_column(column, justify="right")
    best = best_record(trainer.history, trainer.best_step, trainer.best_epoch)
    for record in trainer.history:
        mark = " *" if record is best else ""
        epochs.add_row(
            f"{record['epoch']}{mark}",
            str(record.get("step", "")),
            *(f"{record[c]:.4f}" for c in columns),
            f"{record['lr']:.2e}",
            f"{record['seconds']:.1f}s",
        )
    show(epochs)

    final = trainer.history[-1]
    assert best is not None
    results = Table(title="Results", title_justify="left")
    results.add_column("metric")
    results.add_column(f"train (epoch {final['epoch']})", justify="right")
    results.add_column(f"val (best, epoch {trainer.best_epoch}, step {trainer.best_step})", justify="right")
    results.add_column("test (best.pt)", justify="right")
    # Every metric of any split (training leaves top-5 out; its cell shows "-").
    names = dict.fromkeys(key.split("/", 1)[1] for key in [*final, *best, *test] if "/" in key)
    for name in names:
        cells = [final.get(f"train/{name}"), best.get(f"val/{name}"), test.get(f"test/{name}")]
        results.add_row(name, *("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" for v in cells))
    show(results)
    if extras:
        log.info(f"The test split on best.pt (epoch {trainer.best_epoch}):")
    for extra in extras.values():
        show(extra.table())
    log.info(f"Run folder: {run_dir}")
    log.info(f"Best checkpoint: {trainer.checkpoint_dir / 'best.pt'} ({trainer.monitor} {trainer.best_metric:.4f} at epoch {trainer.best_epoch}, step {trainer.best_step})")
