"""Sweeps (`--multirun`): each job's failure stays in its folder, and a leaderboard of
all jobs is written and printed when the sweep ends.

Every job folder holds a metrics.json: the run writes it when it finishes, or stops on
an error such as a NaN (`status: failed`, with its history), and `run_sweep_job` writes
one with `status: failed` for any other job that raised. The summary
reads those files, so it works the same for every launcher (in-process, joblib,
SLURM), whose jobs may run in other processes or on other machines.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shlex
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


def finished_job_metric(job_dir: Path) -> float | None:
    """The best metric of a job that already finished (for `sweep.resume`), else None."""
    path = job_dir / "metrics.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return float(record["best_metric"]) if record.get("status") == "completed" else None


def job_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder (a folder with .hydra/), best first, failures last."""
    rows = []
    for job_dir in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        path = job_dir / "metrics.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": "interrupted"}
        row: dict[str, Any] = {
            "job": job_dir.name.split("_", 1)[0],
            "status": record.get("status", "completed"),
            "overrides": " ".join(record.get("overrides", [])) or job_dir.name.partition("_")[2],
            "monitor": record.get("monitor", ""),
            "best": record.get("best_metric"),
            "best_epoch": record.get("best_epoch"),
            "best_step": record.get("best_step"),
        }
        row.update(record.get("test", {}))
        row["wall_seconds"] = round(record["wall_seconds"], 1) if "wall_seconds" in record else None
        row["error"] = record.get("error", "")
        row["run_dir"] = str(job_dir)
        row["_mode"] = record.get("mode", "min")
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple[int, float]:
        best = row["best"]
        if row["status"] != "completed" or best is None or math.isnan(best):
            return (1, 0.0)
        return (0, best if row["_mode"] == "min" else -best)

    rows.sort(key=order)
    for row in rows:
        del row["_mode"]
    return rows


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """summary.csv and summary.md in the sweep folder, best job first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "summary.csv", lambda f: f.write(buffer.getvalue().encode()))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    text = f"# Sweep {sweep_dir}\n\n" + "\n".join(lines) + "\n"
    atomic_write(sweep_dir / "summary.md", lambda f: f.write(text.encode()))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def summary_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> Table:
    shown = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in ("run_dir", "error")]
    table = Table(title=f"Sweep {sweep_dir} (best first)", title_justify="left")
    for column in shown:
        table.add_column(column, justify="right" if column not in ("status", "overrides", "monitor") else "left")
    for row in rows:
        style = "red" if row["status"] != "completed" else None
        # Text, not markup: rich would take `logger=[tensorboard,csv]` for a style tag and drop it.
        table.add_row(*(Text(_cell(row.get(c))) for c in shown), style=style)
    return table


class SweepSummary(Callback):
    """Hydra callback: when a --multirun ends, write summary.csv and summary.md, print
    the leaderboard, and exit non-zero if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = job_rows(sweep_dir)
        if not rows:
            log.warning(f"No job folders found in {sweep_dir}: no sweep summary written.")
            return
        write_summary(sweep_dir, rows)
        show(summary_table(sweep_dir, rows))
        log.info(f"Sweep summary: {sweep_dir / 'summary.csv'} and summary.md")
        failed = [row for row in rows if row["status"] != "completed"]
        for row in failed:
            report_error(f"job {row['job']} ({row['overrides']}) {row['status']}: {row['error'] or 'no metrics.json'}")
        if failed:
            raise SystemExit(1)
