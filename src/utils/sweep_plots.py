"""Pictures of a sweep, written next to summary.md when it ends (matplotlib, the `plots` extra):

- plot_trials.png: the monitored metric of every job in the order they ran, with the
  best so far as a line (pruned trials marked apart);
- plot_<key>.png: the metric against each swept numeric hyperparameter;
- plot_importances.png: for an Optuna search, how much each hyperparameter mattered
  (Optuna's fANOVA importance over the finished trials).

They are drawn from the leaderboard's rows (and the study, for importances), so they
work for every sweeper and launcher.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from pathlib import Path
from typing import Any

from src.utils.optuna_search import STORAGE_NAME, default_storage

log = logging.getLogger(__name__)

# A hyperparameter's axis is logarithmic when its values span this factor or more and
# crowd at the low end (as a log-scale search's do: a learning rate, not a dropout).
LOG_SPAN = 20


def write_plots(sweep_dir: Path, rows: list[dict[str, Any]], monitor: str, mode: str) -> list[Path]:
    """Write the sweep's PNGs; returns their paths ([] with a note when matplotlib is missing)."""
    if importlib.util.find_spec("matplotlib") is None:
        log.info("No plots of the sweep: matplotlib is not installed (pip install -e '.[plots]').")
        return []
    jobs = sorted((row for row in rows if _finite(row.get("best"))), key=lambda row: int(row["job"]))
    if not jobs:
        return []
    paths = [_trials(sweep_dir, jobs, monitor, mode)]
    for key, values in swept_numbers(jobs).items():
        paths.append(_against(sweep_dir, jobs, monitor, key, values))
    if (sweep_dir / STORAGE_NAME).is_file():
        paths.extend(_importances(sweep_dir))
    return paths


def swept_numbers(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The hyperparameters whose value differs between `rows` and is a number in every
    row, with each row's value (from the overrides column, `key=value` separated by spaces)."""
    settings = [dict(item.lstrip("+").split("=", 1) for item in row["overrides"].split() if "=" in item) for row in rows]
    keys = dict.fromkeys(key for setting in settings for key in setting)
    swept = {}
    for key in keys:
        texts = [setting.get(key) for setting in settings]
        numbers = [_number(text) for text in texts]
        if len(set(texts)) > 1 and all(n is not None for n in numbers):
            swept[key] = numbers
    return swept  # type: ignore[return-value]


def _trials(sweep_dir: Path, jobs: list[dict[str, Any]], monitor: str, mode: str) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    numbers, values = [int(row["job"]) for row in jobs], [float(row["best"]) for row in jobs]
    best, so_far = [], None
    for value in values:
        so_far = value if so_far is None else (min(so_far, value) if mode == "min" else max(so_far, value))
        best.append(so_far)
    completed = [(n, v) for n, v, row in zip(numbers, values, jobs) if row["status"] != "pruned"]
    pruned = [(n, v, row.get("epochs")) for n, v, row in zip(numbers, values, jobs) if row["status"] == "pruned"]
    if completed:
        ax.scatter(*zip(*completed), label="completed", color="tab:blue", zorder=3)
    if pruned:
        ax.scatter([p[0] for p in pruned], [p[1] for p in pruned], label="pruned (best before its stop)", marker="x", color="tab:red", zorder=3)
    ax.step(numbers, best, where="post", color="tab:green", label="best so far")
    ax.set(xlabel="job (trial) number", ylabel=f"best {monitor}", title=f"{monitor} per job, in the order they ran")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, sweep_dir / "plot_trials.png")


def _against(sweep_dir: Path, jobs: list[dict[str, Any]], monitor: str, key: str, values: list[float]) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    colors = ["tab:red" if row["status"] == "pruned" else "tab:blue" for row in jobs]
    ax.scatter(values, [float(row["best"]) for row in jobs], c=colors)
    if _log_scaled(values):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=f"best {monitor}", title=f"{monitor} against {key}" + (" (red: pruned)" if "tab:red" in colors else ""))
    ax.grid(alpha=0.3)
    return _save(fig, sweep_dir / f"plot_{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.png")


def _importances(sweep_dir: Path) -> list[Path]:
    """One bar chart of each study's hyperparameter importances (none with too few finished trials)."""
    import optuna
    from matplotlib.figure import Figure

    storage = default_storage(sweep_dir)
    paths = []
    names = optuna.study.get_all_study_names(storage)
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as err:  # fewer than two finished trials, or a single value of each parameter
            log.info(f"No importance plot for study {name!r}: {err}")
            continue
        fig = Figure(figsize=(6, 1 + 0.5 * len(importances)), layout="constrained")
        ax = fig.add_subplot()
        keys = list(importances)[::-1]  # the most important at the top
        ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
        ax.set(xlabel="importance (share of the metric's variance, fANOVA)", title=f"Hyperparameter importances: study {name}")
        paths.append(_save(fig, sweep_dir / ("plot_importances.png" if len(names) == 1 else f"plot_importances_{name}.png")))
    return paths


def _log_scaled(values: list[float]) -> bool:
    low, high = min(values), max(values)
    if low <= 0 or high / low < LOG_SPAN:
        return False
    median = sorted(values)[len(values) // 2]
    return (median - low) / (high - low) < 0.25


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
