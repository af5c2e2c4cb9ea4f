"""Resuming a run: its config (the checkpoint's own, with the command line's single-value
overrides on top), the trainer's state restored from the checkpoint, and a best.pt
made to agree with it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.trainer.stored_config import without_downloads
from src.utils import distributed
from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write

if TYPE_CHECKING:
    from src.trainer.trainer import Trainer

log = logging.getLogger(__name__)

# Components whose saved state only loads into the same class.
STATEFUL = ("model", "optimizer", "scheduler", "loss")


def resumed_config(cfg: DictConfig, state: dict[str, Any], overrides: list[str], groups: set[str]) -> DictConfig:
    """`cfg` is what Hydra composed from the command line; `state` the checkpoint (its
    config and group choices); `overrides` the command line's overrides; `groups` the
    names of the config groups. A group choice (`model=cnn`) may only repeat the saved
    one, which lets Hydra accept that group's keys (`model=cnn model.dropout=0.2`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.create(state["config"])
    saved_choices = state.get("choices", {})
    merged = OmegaConf.create(OmegaConf.to_container(saved))
    without_downloads(merged.data)
    # Trainer keys newer than the checkpoint take their defaults.
    merged.trainer = OmegaConf.merge(cfg.trainer, saved.get("trainer", {}))
    parsed = OverridesParser.create().parse_overrides(overrides)
    # Loggers hold no training state, and their arguments say where to write (files,
    # tracking servers): a checkpoint is data, so a resume logs to the loggers its own
    # command line names (the default, or logger=[tensorboard,mlflow]); their run ids
    # still come from the checkpoint.
    merged.logger = cfg.get("logger") or {}
    for override in parsed:
        key = override.key_or_group
        if key in ("resume", "logger") or key.startswith("hydra"):
            continue
        if key == "data.batch_size" and override.value() == "auto":
            continue  # the size the run's search chose is in its config
        if key in groups:
            if saved_choices.get(key) == override.value():
                continue
            raise UserError(
                f"Cannot change the config group choice {override.input_line!r} when resuming (the run used "
                f"{key}={saved_choices.get(key, '?')}): a resumed run continues with the config stored in its "
                f"checkpoint. Override single values instead (e.g. trainer.epochs=30), or start a new run."
            )
        if override.is_delete():
            raise UserError(f"Cannot delete {key!r} when resuming; override its value instead.")
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    merged.resume = cfg.resume
    merged.print_config = cfg.print_config  # how this command prints, not the run's state
    _check_same_data_order(saved, merged, mid_epoch=bool(state.get("batch_in_epoch")))
    for name in STATEFUL:
        before, after = OmegaConf.select(saved, f"{name}._target_"), OmegaConf.select(merged, f"{name}._target_")
        if before != after:
            raise UserError(
                f"Cannot resume with {name}._target_={after!r}: the checkpoint's {name} state was saved by "
                f"{before!r} and only loads into the same class. Start a new run to switch {name}s."
            )
    return merged


# What decides which samples are validation samples: changed on resume, the new
# validation set would hold samples the model was trained on.
SPLIT_KEYS = ("data.val_split", "data.split_seed", "data.folds", "data.fold")
# What decides the batches of an epoch: a mid-epoch position means nothing without them.
ORDER_KEYS = ("data.batch_size", "seed")


def _check_same_data_order(saved: DictConfig, merged: DictConfig, mid_epoch: bool) -> None:
    for key in SPLIT_KEYS + (ORDER_KEYS if mid_epoch else ()):
        before, after = OmegaConf.select(saved, key), OmegaConf.select(merged, key)
        if before != after:
            why = (
                "the validation set would then hold samples the model was trained on"
                if key in SPLIT_KEYS
                else "the checkpoint was saved in the middle of an epoch, and its position there only means something for the same batches"
            )
            raise UserError(
                f"Cannot resume with {key}={after!r}: the run used {key}={before!r}, and {why}. Resume without "
                f"changing it{'' if key in SPLIT_KEYS else ' (or resume an epoch-end checkpoint such as epoch_NNN.pt)'}, or start a new run."
            )


def changed_optimizer_values(saved_yaml: str, cfg: DictConfig) -> dict[str, object]:
    """Optimizer hyperparameters the resumed config changes (e.g. `optimizer.lr=1e-4`).

    Loading the optimizer's state restores its saved param_groups, so these are
    applied on top afterwards; otherwise a resume would silently ignore them."""
    saved = OmegaConf.create(saved_yaml).get("optimizer", {})
    return {
        key: value
        for key, value in OmegaConf.to_container(cfg.optimizer, resolve=True).items()  # type: ignore[union-attr]
        if not key.startswith("_") and saved.get(key) != value
    }


def restore_best(state: dict[str, Any], resumed_from: Path, checkpoint_dir: Path) -> None:
    """Make the run's `best.pt` hold the validation that the resumed `state` names as best.

    A kill between the renames of one save (best.pt, then last.pt) leaves best.pt one
    improvement ahead of last.pt; a copy of the run or a hand-deleted file can leave it
    behind. The right weights are then in the resumed checkpoint itself (saved at its
    best validation) or in that epoch's epoch_NNN.pt."""
    best_epoch = state.get("best_epoch")
    best = checkpoint_dir / "best.pt"
    if best_epoch is None or best == resumed_from or _holds_best(best, state):
        return
    epoch_file = f"epoch_{best_epoch:03d}.pt"
    candidates = list(dict.fromkeys([checkpoint_dir / epoch_file, resumed_from.parent / epoch_file]))
    if _is_best_of(state, state):
        candidates.insert(0, resumed_from)
    for source in candidates:
        if source.is_file() and _holds_best(source, state):
            data = source.read_bytes()
            atomic_write(best, lambda f: f.write(data))
            log.warning(f"{best} did not hold the best epoch ({best_epoch}) that {resumed_from.name} names; restored it from {source.name}.")
            return
    log.warning(
        f"{best} does not hold the best epoch ({best_epoch}) that {resumed_from.name} names, and no checkpoint of that "
        f"epoch is left to restore it from; it will be replaced when {state.get('monitor', 'the monitored metric')} improves."
    )


def _holds_best(path: Path, state: dict[str, Any]) -> bool:
    """Whether `path` is the checkpoint saved at the best validation that `state` names."""
    from src.trainer.checkpoint import load_checkpoint

    if not path.is_file():
        return False
    try:
        saved = load_checkpoint(path)
    except UserError:
        return False
    return _is_best_of(saved, state)


def _is_best_of(saved: dict[str, Any], state: dict[str, Any]) -> bool:
    """Whether checkpoint `saved` was written at the best validation `state` names: at
    its step (at the end of its epoch, for checkpoints older than `best_step`)."""
    if saved.get("best_metric") != state["best_metric"]:
        return False
    if state.get("best_step") is not None:
        return saved["step"] == state["best_step"]
    return saved["epoch"] == state["best_epoch"] and not saved.get("batch_in_epoch")


def restore(trainer: Trainer, state: dict[str, Any], path: Path, cfg: DictConfig) -> None:
    """Continue `trainer` from a checkpoint written by `Trainer.state_dict`. The RNGs are
    set last, so that nothing built after this call draws from them before the loop does."""
    from src.trainer.checkpoint import damaged, load_model_state
    from src.utils.seed import set_rng_state

    load_model_state(trainer.model, state["model"], path)
    if (state["scheduler"] is None) != (trainer.scheduler is None):
        had = "a" if state["scheduler"] is not None else "no"
        raise UserError(f"{str(path)!r} was trained with {had} learning-rate scheduler; resume it with the same scheduler config.")
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"The optimizer or scheduler state in {str(path)!r} does not fit this run's config: {one_line(err)}.") from None
    for key, value in changed_optimizer_values(state["config"], cfg).items():
        scaled = " (times each parameter group's lr_scale)" if key == "lr" else ""
        log.info(f"Resumed optimizer: {key} set to {value}{scaled} for every parameter group")
        for group in trainer.optimizer.param_groups:
            group[key] = value * group.get("lr_scale", 1.0) if key == "lr" else value
            if key == "lr" and "initial_lr" in group:  # what schedulers scale from
                group["initial_lr"] = group["lr"]
    trainer.epoch, trainer.step = state["epoch"], state["step"]
    own = _own_rank_state(state, path, trainer.world_size)
    trainer.batch_in_epoch, trainer.partial_metrics = state["batch_in_epoch"], own["partial_epoch_metrics"]
    if trainer.partial_metrics is not None:
        # Loaded for real only when the epoch continues: tried now, a changed sum stops the
        # resume with its name instead of a traceback from inside the loop.
        try:
            trainer.task.metrics(trainer.device, training=True).load_state_dict(trainer.partial_metrics)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise damaged(path, f"its partial_epoch_metrics cannot be restored ({one_line(err, limit=200)})") from None
    trainer.best_metric, trainer.best_epoch, trainer.best_step = state["best_metric"], state["best_epoch"], state.get("best_step")
    if state.get("grad_scaler") and trainer.scaling:
        trainer.scaler.load_state_dict(state["grad_scaler"])
    trainer.early_stopping.load_state_dict(state["early_stopping"])
    trainer.stopped_early = trainer.early_stopping.should_stop  # a run that stopped early stays stopped
    trainer.history = list(state["history"])
    trainer.callbacks.load_state_dict(state.get("callbacks") or {})
    # What the loggers need to continue their records (e.g. a remote run's id), and the
    # step after which what they hold did not happen.
    trainer.loggers.load_state_dict(state.get("loggers"))
    trainer.loggers.purge_after(trainer.step)
    if trainer.rank_zero:
        restore_best(state, path, trainer.checkpoint_dir)
    if own["rng"] is not None:
        set_rng_state(own["rng"])


def vouched_targets(cfg: DictConfig) -> dict[str, str]:
    """The callbacks' `_target_`s a config names, by place ("callbacks.NAME")."""
    return {f"callbacks.{name}": str(node.get("_target_")) for name, node in (cfg.get("callbacks") or {}).items() if node}


def _own_rank_state(state: dict[str, Any], path: Path, world_size: int) -> dict[str, Any]:
    """This rank's RNG state and partial epoch metrics from a checkpoint: its own entry
    when the checkpoint comes from as many ranks as run now."""
    saved_world = state.get("world_size", 1)
    ranks = state.get("rank_states")
    if saved_world == world_size and ranks:
        return ranks[distributed.rank()]
    if saved_world != world_size and state["batch_in_epoch"]:
        raise UserError(
            f"{str(path)!r} was saved in the middle of an epoch by {saved_world} process(es), and this run has "
            f"{world_size}: each process's position in its share of the data only holds for the same number. "
            f"Resume it with torchrun --nproc_per_node={saved_world}"
            f"{'' if saved_world > 1 else ' (or plain python)'}, or resume an epoch-end checkpoint (epoch_NNN.pt)."
        )
    if saved_world != world_size:
        log.warning(
            f"{path} comes from {saved_world} process(es) and this run has {world_size}: training continues "
            f"from it, but not bitwise as the original run would have (the data is shared out differently)."
        )
        # Each rank keeps the random numbers of its own seed (seed + rank), rather
        # than every rank taking rank 0's and drawing the same dropout masks.
        return {"rng": None, "partial_epoch_metrics": None}
    return {"rng": state["rng"], "partial_epoch_metrics": state.get("partial_epoch_metrics")}
