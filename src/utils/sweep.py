"""Sweeps (`--multirun`): each job's failure stays in its folder, and a leaderboard of
all jobs is written and printed when the sweep ends.

Every job folder holds a metrics.json: the run writes it when it finishes, or stops on
an error such as a NaN (`status: failed`, with its history), and `run_sweep_job` writes
one with `status: failed` for any other job that raised. The summary
reads those files, so it works the same for every launcher (in-process, joblib,
SLURM, Ray), whose jobs may run in other processes or on other machines.

A sweep over cross-validation folds (`data.folds=K 'data.fold=range(K)'`) adds one row
per configuration (the jobs that differ only in `data.fold`): the mean and standard
deviation over its folds of the monitored metric and of each test metric.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from src.trainer.signals import STOP_EXIT_CODES
from src.utils.console import report_error, show
from src.utils.errors import RunStopped, UserError, one_line
from src.utils.io import atomic_write, atomic_write_json
from src.utils.run_folder import LOCK_NAME, is_locked
from src.utils.sweep_plots import write_plots

log = logging.getLogger(__name__)

# Hydra's default launcher runs every job in the process the user started.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def resume_command(hydra_cfg: DictConfig) -> str:
    """How to continue the sweep a job belongs to: the sweep's own command line plus
    `sweep.resume=<sweep folder>` (see the README, "Continuing an interrupted sweep").

    A job's config holds only its own overrides, not the sweep's (`model=mlp,cnn`), so
    the command line is known where jobs run in the process the user started (Hydra's
    basic launcher, also under Optuna); other launchers' jobs get it in words."""
    sweep = str(hydra_cfg.sweep.dir)
    if hydra_cfg.launcher.get("_target_") != BASIC_LAUNCHER:
        return f"the sweep's own command again, with sweep.resume={shlex.quote(sweep)} added"
    arguments = [arg for arg in sys.argv[1:] if not arg.startswith("sweep.resume=")]
    return shlex.join(["python", sys.argv[0], *arguments, f"sweep.resume={sweep}"])


def run_sweep_job(task: Callable[[], float], job_dir: Path, overrides: list[str]) -> float:
    """Run one job of a sweep. A failure is recorded in the job's folder (metrics.json
    with `status: failed`, the traceback in train.log) and returned as NaN, so the
    other jobs still run; Ctrl-C, SIGTERM or SLURM's SIGUSR2 still stops the whole sweep."""
    started = time.time()
    try:
        return task()
    except RunStopped as stop:
        if stop.exit_code in STOP_EXIT_CODES:
            report_error(str(stop), prefix="Stopped:")
            raise SystemExit(stop.exit_code) from None
        error: BaseException = stop
    except Exception as err:  # noqa: BLE001 - any failure of one job must not end the sweep
        error = err
    message = one_line(error)
    report_error(f"job {job_dir.name} failed: {message}")
    job_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(error, (UserError, RunStopped)):  # a bug: keep the traceback
        with open(job_dir / "train.log", "a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(error)))
    if not (isinstance(error, RunStopped) and error.recorded):  # else the run's own record, with its history, stays
        atomic_write_json(
            job_dir / "metrics.json",
            {"status": "failed", "error": message, "overrides": overrides, "wall_seconds": time.time() - started},
        )
    return math.nan


# How a job ended without failing: it trained all its epochs, or Optuna's pruner
# stopped it early (a search's decision, not an error). `running`: another sweep
# process on the same study still holds its folder.
FINISHED = ("completed", "pruned")
NOT_FAILED = (*FINISHED, "running")


def finished_job_metric(job_dir: Path) -> float | None:
    """The best metric of a job that already finished (for `sweep.resume`), else None."""
    path = job_dir / "metrics.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return float(record["best_metric"]) if record.get("status") in FINISHED else None


def job_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides as the leaderboard shows them: without the one that gives an
    Optuna trial its pruning callback (it names the study, not what the job trains)."""
    from src.utils.optuna_search import is_pruning_override

    return [override for override in overrides if not is_pruning_override(override)]


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (a folder with .hydra/), best first, failures last."""
    rows = []
    for job_dir in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        path = job_dir / "metrics.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": _unfinished(job_dir)}
        row: dict[str, Any] = {
            "job": job_dir.name.split("_", 1)[0],
            "status": record.get("status", "completed"),
            "overrides": " ".join(record.get("overrides", [])) or job_dir.name.partition("_")[2],
            "monitor": record.get("monitor", ""),
            "best": record.get("best_metric"),
            "best_epoch": record.get("best_epoch"),
            "epochs": record.get("epochs_run"),
            "best_step": record.get("best_step"),
        }
        row.update(record.get("test", {}))
        row["wall_seconds"] = round(record["wall_seconds"], 1) if "wall_seconds" in record else None
        row["error"] = record.get("error", "")
        row["run_dir"] = str(job_dir)
        row["_mode"] = record.get("mode", "min")
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple[int, float]:
        """Completed jobs best first, then pruned ones best first, then the rest."""
        best = row["best"]
        if row["status"] not in FINISHED or best is None or math.isnan(best):
            return (2, 0.0)
        return (FINISHED.index(row["status"]), best if row["_mode"] == "min" else -best)

    rows.sort(key=order)
    for row in rows:
        del row["_mode"]
    return rows


# The override that picks a job's cross-validation fold (`data.fold=2`). The fold is a
# small integer, so the override never holds a space.
FOLD_OVERRIDE = re.compile(r"(?:^|\s)(?:\+\+)?data\.fold=\S+")


def fold_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One row per configuration cross-validated over folds (jobs whose overrides differ
    only in `data.fold`), best mean first: how many of its folds completed, and over
    those the mean and the sample standard deviation of the monitored metric (`best`)
    and of each test metric. Empty when no job sets `data.fold`."""
    configurations: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if FOLD_OVERRIDE.search(row["overrides"]):
            configurations.setdefault(FOLD_OVERRIDE.sub("", row["overrides"]).strip(), []).append(row)
    summaries = []
    for configuration, jobs in configurations.items():
        done = [job for job in jobs if job["status"] == "completed"]
        summary: dict[str, Any] = {"configuration": configuration, "folds": f"{len(done)}/{len(jobs)}", "monitor": jobs[0]["monitor"]}
        for metric in ["best", *sorted({key for job in done for key in job if key.startswith("test/")})]:
            values = [float(job[metric]) for job in done if job.get(metric) is not None]
            summary[f"{metric} mean"] = statistics.fmean(values) if values else None
            summary[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else None
        summaries.append(summary)

    def order(summary: dict[str, Any]) -> tuple[int, float]:
        mean = summary["best mean"]
        if mean is None or math.isnan(mean):
            return (1, 0.0)
        return (0, mean if mode == "min" else -mean)

    return sorted(summaries, key=order)


def _unfinished(job_dir: Path) -> str:
    """A job without metrics.json: `running` while a process holds its lock (or is about
    to: a job takes its lock right after Hydra creates its folder), else `interrupted`."""
    return "running" if is_locked(job_dir) or not (job_dir / LOCK_NAME).exists() else "interrupted"


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], folds: list[dict[str, Any]] | None = None, plots: list[Path] | None = None) -> None:
    """summary.csv and summary.md in the sweep folder, best job first; with `folds`
    (from `fold_rows`), summary_folds.csv and a section of summary.md, best mean first;
    summary.md shows `plots`."""
    _write_csv(sweep_dir / "summary.csv", rows)
    text = f"# Sweep {sweep_dir}\n\n" + _markdown_table(rows)
    if folds:
        _write_csv(sweep_dir / "summary_folds.csv", folds)
        text += "\n## Cross-validation: mean ± standard deviation over the folds\n\n" + _markdown_table([_mean_and_std(s) for s in folds])
    if plots:
        text += "\n## Plots\n\n" + "".join(f"![{path.stem}]({path.name})\n\n" for path in plots)
    atomic_write(sweep_dir / "summary.md", lambda f: f.write(text.encode()))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _mean_and_std(summary: dict[str, Any]) -> dict[str, Any]:
    """A `fold_rows` row with each metric's mean and std in one cell: `0.9120 ± 0.0100`."""
    shown = {}
    for key, value in summary.items():
        if key.endswith(" std"):
            continue
        if key.endswith(" mean"):
            std = summary[key.removesuffix(" mean") + " std"]
            value = f"{_cell(value)} ± {_cell(std)}" if value is not None and std is not None else value
            key = key.removesuffix(" mean")
        shown[key] = value
    return shown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def fold_table(folds: list[dict[str, Any]]) -> Table:
    """The printed cross-validation rows (`fold_rows`): mean ± std per metric."""
    shown = [_mean_and_std(summary) for summary in folds]
    table = Table(title="Cross-validation: mean ± std over the folds (best first)", title_justify="left")
    for column in dict.fromkeys(key for row in shown for key in row):
        table.add_column(column, justify="left" if column in ("configuration", "monitor") else "right")
    for row in shown:
        table.add_row(*(Text(_cell(value)) for value in row.values()))
    return table


def summary_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> Table:
    shown = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in ("run_dir", "error")]
    table = Table(title=f"Sweep {sweep_dir} (best first)", title_justify="left")
    for column in shown:
        table.add_column(column, justify="right" if column not in ("status", "overrides", "monitor") else "left")
    for row in rows:
        style = "red" if row["status"] not in NOT_FAILED else None
        # Text, not markup: rich would take `logger=[tensorboard,csv]` for a style tag and drop it.
        table.add_row(*(Text(_cell(row.get(c))) for c in shown), style=style)
    return table


class SweepSummary(Callback):
    """Hydra callback: when a --multirun ends, write summary.csv, summary.md and the
    plots (src/utils/sweep_plots.py), print the leaderboard, and exit non-zero if any
    job failed (a pruned trial, or one another process still runs, has not)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = job_rows(sweep_dir)
        if not rows:
            log.warning(f"No job folders found in {sweep_dir}: no sweep summary written.")
            return
        folds = fold_rows(rows, str(config.trainer.mode))
        write_summary(sweep_dir, rows, folds, write_plots(sweep_dir, rows, str(config.trainer.monitor), str(config.trainer.mode)))
        show(summary_table(sweep_dir, rows))
        if folds:
            show(fold_table(folds))
        log.info(f"Sweep summary: {sweep_dir / 'summary.csv'} and summary.md (with its plots)")
        failed = [row for row in rows if row["status"] not in NOT_FAILED]
        for row in failed:
            report_error(f"job {row['job']} ({row['overrides']}) {row['status']}: {row['error'] or 'no metrics.json'}")
        if failed:
            raise SystemExit(1)
