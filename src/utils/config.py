"""Config checks and helpers. Nothing here imports torch: a bad config must fail fast."""

from __future__ import annotations

import hashlib
import os
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.trainer.tasks import TASKS, get_task
from src.utils import distributed
from src.utils.errors import UserError

PROGRESS_CHOICES = ("rich", "tqdm", "none")
PRINT_CONFIG_CHOICES = ("short", "full")
# trainer.precision -> the name of its autocast dtype in torch (None: plain float32).
PRECISIONS = {"32": None, "16-mixed": "float16", "bf16-mixed": "bfloat16"}
# When a scheduler steps (`scheduler.interval`): after every optimizer step, or every epoch.
SCHEDULER_INTERVALS = ("step", "epoch")

# The largest float32 (torch.finfo(torch.float32).max, written out: this module must not
# import torch). Larger values, an lr of 1e300 or a CSV cell of 1e308, overflow to inf
# in float32 tensors.
FLOAT32_MAX = 3.4028234663852886e38


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


def validate_train_config(cfg: DictConfig) -> None:
    """Raise a UserError naming the first bad value in a composed training config."""
    _check(cfg, "seed", lambda v: _is_int(v, 0), "an integer >= 0")
    _check(cfg, "print_config", lambda v: v in PRINT_CONFIG_CHOICES, "one of " + ", ".join(PRINT_CONFIG_CHOICES))
    _check_run_length(cfg)
    _check(cfg, "trainer.log_every_n_steps", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "trainer.gradient_clip_val", lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 disables clipping)")
    _check(cfg, "trainer.progress", lambda v: v in PROGRESS_CHOICES, "one of " + ", ".join(PROGRESS_CHOICES))
    _check(cfg, "trainer.device", lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps")
    _check(cfg, "trainer.save_every_n_epochs", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables)")
    _check(cfg, "trainer.keep_last_k", lambda v: _is_int(v, 1), "a positive integer, or null to keep all", optional=True)
    _check(cfg, "trainer.deterministic", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "trainer.detect_anomaly", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "trainer.precision", lambda v: str(v) in PRECISIONS, "one of " + ", ".join(PRECISIONS))
    _check(cfg, "trainer.compile", lambda v: isinstance(v, bool), "true or false")
    _check(cfg, "trainer.accumulate_grad_batches", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "trainer.batch_size_search.max_batch_size", lambda v: _is_int(v, 1), "a positive integer (the largest batch data.batch_size=auto tries)")
    _check(cfg, "trainer.batch_size_search.memory_margin", lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1) of the device's memory to keep free")
    _check(cfg, "trainer.limit_batches", lambda v: _is_int(v, 1), "a positive integer, or null for all", optional=True)
    _check(cfg, "trainer.overfit_batches", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables)")
    _check(cfg, "trainer.log_histograms_every_n_epochs", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables)")
    _check(cfg, "trainer.channels_last", lambda v: v in ("auto", True, False), "auto, true or false")
    _check(cfg, "trainer.mode", lambda v: v in ("min", "max"), "min or max")
    _check(cfg, "trainer.early_stopping.patience", lambda v: _is_int(v, 0), "an integer >= 0 (0 disables early stopping)")
    _check(cfg, "trainer.early_stopping.min_delta", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    validate_data_config(cfg)
    _check(
        cfg,
        "optimizer.lr",
        lambda v: _is_number(v) and math.isfinite(v) and 0 < v <= FLOAT32_MAX,
        f"a finite positive number (at most {FLOAT32_MAX:.3g}, the float32 range), e.g. optimizer.lr=1e-3",
        optional=True,
    )
    _check(cfg, "scheduler.step_size", lambda v: _is_int(v, 1), "a positive integer number of epochs", optional=True)
    _check_scheduler(cfg)
    get_task(cfg.data).check_loss(OmegaConf.select(cfg, "loss._target_", default=None))
    _check_monitor(cfg)
    check_loggers(cfg)


def _check_run_length(cfg: DictConfig) -> None:
    """Epochs, steps, or both; validation and saves every N steps."""
    _check(cfg, "trainer.epochs", lambda v: _is_int(v, 1), "a positive integer number of epochs, or null with trainer.max_steps", optional=True)
    _check(cfg, "trainer.max_steps", lambda v: _is_int(v, 1), "a positive integer number of optimizer steps, or null", optional=True)
    if cfg.trainer.epochs is None and cfg.trainer.get("max_steps") is None:
        raise UserError(
            "trainer.epochs=null needs trainer.max_steps=N: a run must end. Give trainer.epochs, trainer.max_steps "
            "or both (whichever comes first ends the run)."
        )
    for key in ("val_every_n_steps", "save_every_n_steps"):
        _check(cfg, f"trainer.{key}", lambda v: _is_int(v, 1), "a positive integer number of optimizer steps, or null (epoch ends only)", optional=True)
    every = cfg.trainer.get("val_every_n_steps")
    if every is not None and not cfg.data.val_split > 0:
        raise UserError(
            f"trainer.val_every_n_steps={every} needs validation data, and data.val_split={cfg.data.val_split!r} leaves "
            f"none. Set data.val_split (e.g. 0.1), or drop trainer.val_every_n_steps."
        )


def _check_scheduler(cfg: DictConfig) -> None:
    """When the scheduler steps, and what a run that only counts steps can use."""
    scheduler = cfg.get("scheduler")
    if not scheduler:
        return
    _check(cfg, "scheduler.interval", lambda v: v in SCHEDULER_INTERVALS, "one of " + ", ".join(SCHEDULER_INTERVALS), optional=True)
    _check(cfg, "scheduler.warmup_steps", lambda v: _is_int(v, 0), "an integer >= 0", optional=True)
    target = str(scheduler.get("_target_", ""))
    if target.endswith("ReduceLROnPlateau") and scheduler.get("interval") == "step":
        raise UserError(
            "scheduler.interval=step does not fit ReduceLROnPlateau: it steps on the monitored value after every "
            "validation (epoch ends, and every trainer.val_every_n_steps). Drop scheduler.interval."
        )
    if "T_max" in scheduler and OmegaConf.select(cfg, "scheduler.T_max") is None:
        raise UserError(
            "scheduler.T_max=null: scheduler=cosine counts epochs (T_max: ${trainer.epochs}), and trainer.epochs is "
            "null. Use scheduler=warmup_cosine, which counts the run's optimizer steps, or set scheduler.T_max."
        )


def validate_data_config(cfg: DictConfig) -> None:
    _check(cfg, "data.batch_size", lambda v: _is_int(v, 1) or v == "auto", "a positive integer, or auto (the largest batch that fits in memory)")
    _check(cfg, "data.eval_batch_size", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "data.num_workers", lambda v: _is_int(v, 0), "an integer >= 0")
    _check(cfg, "data.val_split", lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)")
    _check(cfg, "data.in_memory", lambda v: v in ("auto", True, False), "auto, true or false")
    _check_folds(cfg)
    for key in ("path", "target", "root", "num_classes"):
        if key in cfg.data.keys() and OmegaConf.is_missing(cfg.data, key):
            raise UserError(f"data={cfg.data.name} needs data.{key}=... on the command line (see configs/data/{cfg.data.name}.yaml).")
    # The task first: a classifier's num_outputs follows data.num_classes, which it checks.
    get_task(cfg.data).check_data(cfg.data)  # an unknown data.task is refused with the known ones
    _check(cfg, "data.num_outputs", lambda v: _is_int(v, 1), "a positive integer (the model's output width)")
    _check(
        cfg,
        "data.input_shape",
        lambda v: isinstance(v, ListConfig) and len(v) > 0 and all(_is_int(x, 1) for x in v),
        "a list of positive integers, e.g. [1, 28, 28], or null to read it from the data",
        optional=True,
    )
    _check(
        cfg,
        "data.classes",
        lambda v: isinstance(v, ListConfig) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v),
        "a list of distinct class names in class-index order, e.g. [setosa,versicolor,virginica], or null",
        optional=True,
    )
    for key in ("data.mean", "data.std"):
        _check(cfg, key, lambda v: isinstance(v, ListConfig) and all(_is_number(x) for x in v), "a list of numbers, or null", optional=True)


def _check_folds(cfg: DictConfig) -> None:
    """Cross-validation takes both data.folds=K and data.fold=i (the fold that validates)."""
    folds, fold = cfg.data.get("folds"), cfg.data.get("fold")
    _check(cfg, "data.folds", lambda v: _is_int(v, 2), "an integer >= 2 (how many folds to cross-validate over), or null", optional=True)
    if folds is None and fold is not None:
        raise UserError(
            f"data.fold={fold!r} needs data.folds, the number of folds: e.g. data.folds=5 data.fold={fold}. "
            f"Without data.folds, leave data.fold out (the validation split is then a data.val_split fraction)."
        )
    if folds is not None and fold is None:
        raise UserError(
            f"data.folds={folds} needs data.fold, the fold that validates (0 to {folds - 1}): e.g. data.fold=0, "
            f"or all {folds} folds with `python train.py -m data.folds={folds} 'data.fold=range({folds})'`."
        )
    if folds is not None:
        _check(cfg, "data.fold", lambda v: _is_int(v, 0) and v < folds, f"an integer from 0 to {folds - 1} (a fold of data.folds={folds})")


def has_validation(data: DictConfig) -> bool:
    """Whether a run validates: on a fold (data.folds) or on a data.val_split fraction."""
    return bool(data.get("folds")) or data.val_split > 0


def check_loggers(cfg: DictConfig) -> None:
    """`logger` maps names to configs that each name their class (`logger=[tensorboard,csv]`)."""
    loggers = cfg.get("logger")  # None after logger=[]
    if loggers is None:
        return
    if not isinstance(loggers, DictConfig):
        raise UserError(f"Invalid value logger={loggers!r}: choose loggers as logger=tensorboard or logger=[tensorboard,csv] (or logger=[] for none).")
    for name, node in loggers.items():
        if not isinstance(node, DictConfig) or not node.get("_target_"):
            raise UserError(
                f"logger.{name} names no class: every logger config needs a _target_ (see configs/logger/; "
                f"choose them as logger=[tensorboard,csv])."
            )


def _check_monitor(cfg: DictConfig) -> None:
    monitor = cfg.trainer.monitor
    task = get_task(cfg.data)
    choices = [f"train/{name}" for name in task.metric_names(training=True)]
    if has_validation(cfg.data):
        choices += [f"val/{name}" for name in task.metric_names()]
    if monitor not in choices:
        why = " (there is no validation set: data.val_split=0)" if str(monitor).startswith("val/") and not has_validation(cfg.data) else ""
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


def config_summary(cfg: DictConfig, choices: dict[str, str], overrides: list[str]) -> Any:
    """What a run prints of its config by default: the config group choices and the
    command line's overrides (`print_config=full` prints `config_tree` instead)."""
    from rich.text import Text
    from rich.tree import Tree

    chosen = {group: choice for group, choice in choices.items() if choice not in (None, "None")}
    # Hydra records no choice for a list of options such as logger=[tensorboard,csv].
    chosen["logger"] = f"[{','.join(cfg.get('logger') or {})}]"
    groups = " ".join(f"{group}={chosen[group]}" for group in sorted(chosen))
    # Text, not markup: rich would take `logger=[tensorboard,csv]` for a style tag.
    tree = Tree(Text("config (print_config=full shows every value)"), guide_style="dim")
    tree.add(Text(f"groups: {groups}"))
    tree.add(Text(f"overrides: {' '.join(overrides) or 'none'}"))
    return tree


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


def _check_checkpoint_given(cfg: DictConfig, script: str, more: str = "") -> None:
    """`script` was given a checkpoint; `more`: the rest of an example command line."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise UserError(
            f"No checkpoint given: pass one as checkpoint=PATH, "
            f"e.g. `python {script} checkpoint=saved/runs/<name>/<time>/checkpoints/best.pt{more}`."
        )


def validate_test_config(cfg: DictConfig, data_chosen: bool) -> None:
    """`data_chosen`: the command line named a data config (`data=NAME`)."""
    _check_checkpoint_given(cfg, "test.py")
    _check(cfg, "split", lambda v: v in ("test", "val"), "test or val")
    _check(cfg, "device", lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps")
    check_loggers(cfg)
    if data_chosen:  # else `data` holds only overrides of the checkpoint's own data config
        validate_data_config(cfg)


# export.py's formats, and the file each writes next to its checkpoint (best.pt -> best.onnx).
EXPORT_SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2", "torchscript": ".torchscript.pt"}


# What predict.py reads (src/predict.py tells them apart).
PREDICT_INPUTS = (
    "an image file, a folder of images, a CSV or TSV table with a header line, a .npy array, "
    "or an IDX file (such as MNIST's t10k-images-idx3-ubyte)"
)


def validate_predict_config(cfg: DictConfig) -> None:
    _check_checkpoint_given(cfg, "predict.py", " inputs=photos/")
    if OmegaConf.is_missing(cfg, "inputs") or not cfg.inputs:
        raise UserError(f"No inputs given: pass inputs=PATH, {PREDICT_INPUTS}; e.g. `python predict.py checkpoint=... inputs=photos/`.")
    if not Path(str(cfg.inputs)).exists():
        raise UserError(f"inputs={str(cfg.inputs)!r} does not exist. Give {PREDICT_INPUTS}.")
    _check(cfg, "top_k", lambda v: _is_int(v, 1), "a positive integer (how many of the most probable classes to list)")
    _check(cfg, "batch_size", lambda v: _is_int(v, 1), "a positive integer")
    _check(cfg, "device", lambda v: isinstance(v, str) and v != "", "auto, cpu, cuda, cuda:N or mps")
    _check(cfg, "output", lambda v: isinstance(v, str) and v != "", "a file path for the CSV, or null", optional=True)


def validate_export_config(cfg: DictConfig) -> None:
    _check_checkpoint_given(cfg, "export.py", " format=onnx")
    _check(cfg, "format", lambda v: v in EXPORT_SUFFIXES, "one of " + ", ".join(EXPORT_SUFFIXES))
    _check(cfg, "output", lambda v: isinstance(v, str) and v != "", "a file path for the exported model, or null", optional=True)


def stored_data_overrides(argv: list[str]) -> list[str]:
    """test.py's command line, with its `data.KEY=VALUE` overrides made acceptable to
    Hydra when no `data=NAME` is given.

    The data config then comes from the checkpoint, which Hydra never sees, so it would
    refuse `data.root=...` as a key that is not in the config. As `++data.root=...`
    Hydra collects them in a partial `data` node, which src/evaluate.py applies onto
    the stored data config, as train.py applies them onto a data group's config."""
    if any(arg.split("=", 1)[0].lstrip("+~") == "data" for arg in argv):
        return argv
    return [f"++{arg}" if arg.startswith("data.") else arg for arg in argv]


# The repository's root folder (this file is src/utils/config.py).
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(relative: str) -> str:
    """Config resolver `${repo_path:data}`: the absolute path of a folder in the
    repository, whatever the current directory. Pure: nothing is created."""
    return str(REPO_ROOT / relative)


STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
# This process's start time names its run or sweep folder (`RunFolderCallback` adds
# `_1`, `_2`, ... when another process took that name in the same second).
START_STAMP = datetime.now().strftime(STAMP_FORMAT)


def run_dir(resume: str | None, base: str) -> str:
    """Hydra resolver for `hydra.run.dir`: a resumed run continues in its own folder
    (the parent of the checkpoint's `checkpoints/`); any other run gets `<base>/<time>`.
    Pure: the folder is claimed later, by `RunFolderCallback`."""
    return resume_folder(resume) or f"{base}/{START_STAMP}"


def resume_folder(resume: str | None) -> str | None:
    """The run folder a `resume=` checkpoint belongs to, or None for a file elsewhere."""
    if not resume:
        return None
    checkpoint = Path(str(resume))
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / ".hydra").is_dir():
        return str(checkpoint.parent.parent)
    return None


def sweep_dir(resume: str | None, base: str) -> str:
    """Hydra resolver for `hydra.sweep.dir`: `sweep.resume=PATH` continues that sweep."""
    return str(resume) if resume else f"{base}/{START_STAMP}"


def output_subdir(resume: str | None) -> str | None:
    """Hydra resolver for `hydra.output_subdir`: a resume keeps the run's original
    `.hydra/` snapshot and writes its own next to it. Under torchrun only rank 0
    writes one (None: Hydra writes none)."""
    if not distributed.is_rank_zero():
        return None
    # The pid too: two resumes of one run started in the same second must not share it.
    return f".hydra/resume_{START_STAMP}_{os.getpid()}" if resume else ".hydra"


def job_dirname(number: int, overrides: str) -> str:
    """Hydra resolver for `hydra.sweep.subdir`: `<job number>_<its overrides>`, without
    the overrides every job of the sweep shares (`RunFolderCallback` adds their keys to
    `override_dirname.exclude_keys`)."""
    return folder_name(f"{number}_{overrides}" if overrides else str(number))


def eval_dirname(checkpoint: str | None, data: str | None, split: str) -> str:
    """Hydra resolver naming test.py's folder for evaluating `checkpoint` on `data` (None:
    the checkpoint's own) and `split`: `<run>-<checkpoint>-<data>-<split>`, with `<run>` the
    training run's `<name>_<time>` (`<sweep time>_<job>` in a sweep), e.g.
    `mnist-cnn_2026-01-02_03-04-05-best-mnist-test`. The data's name, when not given,
    comes from the run's `.hydra/config.yaml`; a checkpoint outside a run folder is
    named by its file alone."""
    path = Path(str(checkpoint or "checkpoint"))
    run = resume_folder(str(path))
    run_parts = [f"{Path(run).parent.name}_{Path(run).name}"] if run else []
    data = data or (_data_name(Path(run)) if run else None)
    return folder_name("-".join([*run_parts, path.stem, *([str(data)] if data else []), str(split)]))


def _data_name(run: Path) -> Any:
    """`data.name` in a run's `.hydra/config.yaml`, or None when it cannot be read."""
    try:
        return OmegaConf.select(OmegaConf.load(run / ".hydra" / "config.yaml"), "data.name", default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001 - a folder name only: the evaluation itself reports a bad run
        return None


def folder_name(name: str) -> str:
    """`name` as one folder level (a `/` would nest folders), short enough for any
    filesystem (a long name ends in a hash of the full one)."""
    name = name.replace("/", "_")
    if len(name) > 120:
        name = name[:110] + "-" + hashlib.md5(name.encode()).hexdigest()[:8]
    return name


def overridden_keys(overrides: list[str]) -> list[str]:
    """The config keys and groups a command line's overrides set (`optimizer.lr`,
    `model`); deletions (`~key`) set nothing."""
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if not o.is_delete()]


def shared_override_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep's command line gives a single value (`data` in `-m model=mlp,cnn
    data=mnist`): every job of the sweep shares them."""
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]


def num_columns(columns: Any) -> int:
    """How many columns `data.target` names (one name, or a list of names)."""
    return len(columns) if isinstance(columns, (list, ListConfig)) else 1


def table_outputs(task: str, target: Any, num_classes: int | None) -> int | None:
    """Resolver for a table's default `data.num_outputs`: `num_classes` for a task with
    one output per class, else one output per target column. (An unknown task is left
    to the config checks, which name the known ones.)"""
    cls = TASKS.get(task)
    return num_classes if cls is not None and cls.one_output_per_class else num_columns(target)


def is_presplit(root: Path) -> bool:
    """An image folder with train/ and test/ folders: those are its splits."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def class_folder_names(folder: Path) -> list[str]:
    """The names of the folders in an image folder, sorted: its classes."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def class_folders(root: Any) -> int | None:
    """Resolver for an image folder's default `data.num_classes`: how many class folders
    `root/` holds (`root/train/` when it has train/ and test/), or None when `root` is
    not such a folder (the data checks then say so). Pure: it only reads."""
    base = Path(str(root))
    folder = base / "train" if is_presplit(base) else base
    if not folder.is_dir():
        return None
    return len(class_folder_names(folder)) or None


def register_resolvers() -> None:
    resolvers = {
        "run_dir": run_dir,
        "sweep_dir": sweep_dir,
        "output_subdir": output_subdir,
        "job_dirname": job_dirname,
        "repo_path": repo_path,
        "eval_dirname": eval_dirname,
        "table_outputs": table_outputs,
        "class_folders": class_folders,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


# Where `--help` sends whoever looks for speed switches: the measured effect of each.
SPEED_NOTE = (
    "Speed: trainer.compile=true was slower than the default on the CPU where benchmarks/run.py measured it, and "
    "trainer.precision=bf16-mixed faster; the comments in configs/trainer/default.yaml and README (Speed) give the numbers."
)


def app_help(script: str, config_name: str, overrides: list[str], example: str, groups: list[str] | None = None) -> str:
    """The text of `python <script> --help`: the config groups with their options, and
    the config those overrides compose.

    Hydra's own help also formats every group of Hydra and its plugins, which takes
    about 1.5 s; `--hydra-help` still shows Hydra's flags.
    """
    from hydra import compose, initialize_config_dir

    config_dir = REPO_ROOT / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    listed = [
        f"  {group.name}: {', '.join(sorted(p.stem for p in group.glob('*.yaml')))}"
        for group in sorted(config_dir.iterdir())
        if group.is_dir() and group.name != "hydra" and (groups is None or group.name in groups)
    ]
    return "\n".join(
        [
            f"{script}: choose one option per config group and override any value, e.g.",
            f"  python {script} {example}",
            "",
            *(["== Config groups ==", *listed, ""] if listed else []),
            "== Config ==",
            OmegaConf.to_yaml(cfg).rstrip(),
            "",
            "Sweeps: --multirun (-m) with comma-separated values. Hydra's flags: --hydra-help.",
            *([SPEED_NOTE] if "trainer" in cfg else []),
        ]
    )


def wants_app_help(argv: list[str]) -> bool:
    """`--help`/`-h` with nothing but overrides beside it (other Hydra flags go to Hydra)."""
    flags = [a for a in argv if a.startswith("-")]
    return bool(flags) and all(a in ("--help", "-h") for a in flags)
