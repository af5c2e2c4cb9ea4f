"""Config checks and helpers. Nothing here imports torch: a bad config must fail fast."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.utils.errors import UserError

PROGRESS_CHOICES = ("rich", "tqdm", "none")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], expected: str, optional: bool = False) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and optional:
        return
    if not ok(value):
        raise UserError(f"Invalid value {key}={value!r}: expected {expected}.")


def classification_metric_names(num_classes: int) -> list[str]:
    return ["loss", "accuracy"] + (["top5"] if num_classes > 5 else [])


def validate_train_config(cfg: DictConfig) -> None:
    """Raise a UserError naming the first bad value in a composed training config."""
    _check(cfg, "seed", lambda v: _is_int(v, 0), "an integer >= 0")
    _check(cfg, "trainer.epochs", lambda v: _is_int(v, 1), "a positive integer number of epochs")
    _check(cfg, "trainer.log_every_n_steps", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "trainer.gradient_clip_val", lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 disables clipping)")
    _check(cfg, "trainer.progress", lambda v: v in PROGRESS_CHOICES, "one of " + ", ".join(PROGRESS_CHOICES))
    _check(cfg, "trainer.device", lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps")
    _check(cfg, "trainer.save_every_n_epochs", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables)")
    _check(cfg, "trainer.keep_last_k", lambda v: _is_int(v, 1), "a positive integer, or null to keep all", optional=True)
    _check(cfg, "trainer.deterministic", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "trainer.detect_anomaly", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "trainer.channels_last", lambda v: v in ("auto", True, False), "auto, true or false")
    _check(cfg, "trainer.mode", lambda v: v in ("min", "max"), "min or max")
    _check(cfg, "trainer.early_stopping.patience", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables early stopping)")
    _check(cfg, "trainer.early_stopping.min_delta", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    validate_data_config(cfg)
    _check(cfg, "optimizer.lr", lambda v: _is_number(v) and v > 0, "a positive number, e.g. optimizer.lr=1e-3", optional=True)
    _check_monitor(cfg)


def validate_data_config(cfg: DictConfig) -> None:
    _check(cfg, "data.batch_size", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "data.eval_batch_size", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "data.num_workers", lambda v: _is_int(v, 0), "an integer >= 0")
    _check(cfg, "data.val_split", lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)")
    _check(cfg, "data.in_memory", lambda v: v in ("auto", True, False), "auto, true or false")
    _check(cfg, "data.num_classes", lambda v: _is_int(v, 1), "a positive integer")
    _check(
        cfg,
        "data.input_shape",
        lambda v: isinstance(v, ListConfig) and len(v) > 0 and all(_is_int(x, 1) for x in v),
        "a list of positive integers, e.g. [1, 28, 28]",
    )
    for key in ("data.mean", "data.std"):
        _check(cfg, key, lambda v: isinstance(v, ListConfig) and all(_is_number(x) for x in v), "a list of numbers, or null", optional=True)


def _check_monitor(cfg: DictConfig) -> None:
    monitor = cfg.trainer.monitor
    names = classification_metric_names(cfg.data.num_classes)
    splits = ["train", "val"] if cfg.data.val_split > 0 else ["train"]
    choices = [f"{split}/{name}" for split in splits for name in names]
    if monitor not in choices:
        why = " (there is no validation set: data.val_split=0)" if str(monitor).startswith("val/") and "val" not in splits else ""
        raise UserError(f"Invalid value trainer.monitor={monitor!r}{why}: expected one of {', '.join(choices)}.")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("a.b.c", value) for every leaf; lists become one value."""
    items = cfg.items() if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True).items()  # type: ignore[union-attr]
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, name + ".")
        else:
            yield name, value


def config_tree(cfg: DictConfig) -> Any:
    """A rich Tree of the resolved config, one branch per top-level key."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(f"[bold]{key}[/bold]")
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else f"{value}"
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    return tree


def validate_test_config(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise UserError(
            "No checkpoint given: pass one as checkpoint=PATH, "
            "e.g. `python test.py checkpoint=saved/runs/<name>/<time>/checkpoints/best.pt`."
        )
    _check(cfg, "split", lambda v: v in ("test", "val"), "test or val")
    _check(cfg, "device", lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps")
    if cfg.get("data") is not None:
        validate_data_config(cfg)


STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


def claim_stamp(base: str) -> str:
    """A new folder `<base>/<timestamp>` for this process, created atomically; a second
    process started in the same second gets `<timestamp>_1`, and so on.

    The name is remembered in the environment: Hydra may resolve the run or sweep dir
    more than once, and launcher processes (joblib) inherit it and reuse it.
    """
    key = "HYDRA_TORCH_TRAINER_STAMP_" + hashlib.md5(base.encode()).hexdigest()[:12]
    if key in os.environ:
        return os.environ[key]
    stamp = datetime.now().strftime(STAMP_FORMAT)
    for n in itertools.count():
        name = stamp if n == 0 else f"{stamp}_{n}"
        try:
            (Path(base) / name).mkdir(parents=True)
        except FileExistsError:
            continue
        os.environ[key] = name
        return name
    raise AssertionError("unreachable")


def run_dir(resume: str | None, base: str) -> str:
    """Hydra resolver for `hydra.run.dir`: a resumed run continues in its own folder
    (the parent of the checkpoint's `checkpoints/`); any other run gets a new folder."""
    if resume:
        checkpoint = Path(str(resume))
        if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / ".hydra").is_dir():
            return str(checkpoint.parent.parent)
    return f"{base}/{claim_stamp(base)}"


def sweep_dir(resume: str | None, base: str) -> str:
    """Hydra resolver for `hydra.sweep.dir`: `sweep.resume=PATH` continues that sweep."""
    return str(resume) if resume else f"{base}/{claim_stamp(base)}"


def output_subdir(resume: str | None) -> str:
    """Hydra resolver for `hydra.output_subdir`: a resume keeps the run's original
    `.hydra/` snapshot and writes its own next to it."""
    return f".hydra/resume_{datetime.now().strftime(STAMP_FORMAT)}" if resume else ".hydra"


def register_resolvers() -> None:
    for name, resolver in (("run_dir", run_dir), ("sweep_dir", sweep_dir), ("output_subdir", output_subdir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
