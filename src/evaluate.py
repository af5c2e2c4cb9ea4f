"""Evaluate a checkpoint on the test split (or val, or another compatible dataset).

The model is rebuilt from the config stored inside the checkpoint, so no model flags
are needed. Results are printed, written as JSON next to the checkpoint, and logged
to the loggers of the `logger` config group, in the evaluation's own run folder, with
the task's evaluation extras (a classifier's per-class precision, recall and F1 and its
confusion matrix, labelled with the class names the dataset or the checkpoint has).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from src.data.builder import build_data
from src.train import build_loggers
from src.trainer.checkpoint import load_checkpoint, load_model_state
from src.trainer.evaluation import evaluate
from src.trainer.forward import ForwardPass
from src.trainer.stored_config import without_downloads
from src.trainer.tasks import Extra, get_task
from src.utils.build import build
from src.utils.config import flatten, validate_data_config
from src.utils.console import logging_to, show
from src.utils.device import resolve_device
from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: DictConfig, data_chosen: bool) -> dict[str, Any]:
    """Evaluate `cfg.checkpoint` on `cfg.split`, on the data config named by `data=NAME`
    when `data_chosen`, else on the checkpoint's own; returns the JSON record it writes."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with logging_to(run_dir / "test.log"):
        return _evaluate(cfg, run_dir, data_chosen)


def _evaluate(cfg: DictConfig, run_dir: Path, data_chosen: bool) -> dict[str, Any]:
    path = Path(cfg.checkpoint)
    state = load_checkpoint(path)
    loggers = build_loggers(cfg.get("logger"), run_dir)  # a bad logger config fails before the work
    trained = OmegaConf.create(state["config"])
    data_cfg = _data_config(cfg, trained, data_chosen, path)

    device = resolve_device(cfg.device, key="device")
    # The run's statistics and class names: new data is standardised and labelled as in training.
    data = build_data(
        data_cfg, device, seed=trained.seed, splits=(cfg.split,), stats=state.get("data_stats"), classes=state.get("classes")
    )
    batches = data.test if cfg.split == "test" else data.val
    if batches is None:
        raise UserError(f"split=val but the data config has no validation set (data.val_split={data_cfg.val_split}); use split=test.")
    model = build("model", trained.model).to(device)
    load_model_state(model, state["model"], path)
    task = get_task(data_cfg, state.get("target_stats"))
    loss_fn = task.loss(instantiate(trained.loss))

    forward = ForwardPass.of_run(model, loss_fn, trained.trainer, data.input_shape, device)
    metrics = evaluate(forward, batches, task.metrics(device))
    values = {f"{cfg.split}/{k}": v for k, v in metrics.compute().items()}
    extras = metrics.extras(data.classes or state.get("classes"))

    record = {
        "checkpoint": str(path),
        "epoch": state["epoch"],
        "data": data_cfg.name,
        "split": cfg.split,
        "samples": batches.num_samples,
        "metrics": values,
        **{name: extra.to_json() for name, extra in extras.items()},
    }
    _print_results(values, extras, data_cfg.name, cfg.split)
    suffix = cfg.split if data_cfg.name == trained.data.name else f"{data_cfg.name}-{cfg.split}"
    json_path = path.with_name(f"{path.stem}.{suffix}.json")
    try:
        atomic_write_json(json_path, record)
        log.info(f"Results written to {json_path}")
    except OSError as err:  # e.g. a read-only checkpoint folder: the printed results still stand
        log.warning(f"Could not write {json_path} ({one_line(err)}); the results above are not saved beside the checkpoint.")
    try:
        loggers.log_metrics(values, state["epoch"])
        for name, extra in extras.items():
            extra.log(loggers, f"{cfg.split}/{name}", state["epoch"])
    finally:
        loggers.close()
    return record


def _data_config(cfg: DictConfig, trained: DictConfig, data_chosen: bool, path: Path) -> DictConfig:
    """The data config to evaluate on: the one given as `data=NAME` (Hydra applied its
    `data.*` overrides), or else the one stored in the checkpoint with the command
    line's `data.*` overrides applied on top."""
    if data_chosen:
        data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    else:
        data_cfg = without_downloads(OmegaConf.create(OmegaConf.to_container(trained.data)))
        for key, value in flatten(cfg.get("data") or {}):
            _override_stored(data_cfg, key, value, path)
    validate_data_config(OmegaConf.create({"data": data_cfg}))
    ours, theirs = OmegaConf.to_container(data_cfg), OmegaConf.to_container(trained.data)
    for key in ("input_shape", "num_outputs"):
        if ours[key] != theirs[key]:  # type: ignore[index]
            raise UserError(
                f"data={data_cfg.name} does not fit this checkpoint: its data.{key} is {ours[key]}, "  # type: ignore[index]
                f"but the model was trained on {trained.data.name} with data.{key}={theirs[key]}. "  # type: ignore[index]
                f"Evaluate on a dataset with the same input shape and number of outputs."
            )
    return data_cfg


def _override_stored(data_cfg: DictConfig, key: str, value: Any, path: Path) -> None:
    """Set `data.<key>` in a data config stored in a checkpoint. The stored config is
    resolved: a dataset argument that the data config set from the same key
    (`dataset.root: ${data.root}`, `dataset.path: ${data.path}`) now holds a copy of
    its value, so it gets the new value too."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(data_cfg, parent_key) if parent_key else data_cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        keys = ", ".join(f"data.{k}" for k in data_cfg if not isinstance(data_cfg[k], DictConfig))
        raise UserError(
            f"data.{key} is not a key of the data config stored in {str(path)!r} (data={data_cfg.name}), so there is "
            f"nothing to override; its keys are: {keys}. To evaluate on another dataset, name it with data=NAME."
        )
    dataset = data_cfg.get("dataset")
    if not parent_key and isinstance(dataset, DictConfig) and leaf in dataset and dataset[leaf] == data_cfg[leaf]:
        dataset[leaf] = value
    parent[leaf] = value


def _print_results(values: dict[str, float], extras: dict[str, Extra], data_name: str, split: str) -> None:
    table = Table(title=f"{data_name} {split}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in values.items():
        table.add_row(name, f"{value:.4f}")
    show(table)
    for extra in extras.values():
        show(extra.table())
