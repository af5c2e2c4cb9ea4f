"""`metrics.csv` in the run folder: a table a spreadsheet opens as it is."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from src.trainer.loggers.base import LoggerBase
from src.utils.errors import UserError
from src.utils.io import atomic_write

log = logging.getLogger(__name__)


class CSVLogger(LoggerBase):
    """One row per step at which something was logged: `step`, `epoch` (on the rows
    of epoch ends) and a column per metric, in the order they first appeared.

    Rows are appended as they come. A new metric (a new column), or a second call at
    the same step (the epoch's metrics after that step's loss, the final metrics),
    rewrites the whole file atomically. A resumed run keeps the rows up to its
    checkpoint's step and drops the rest. The config is in `.hydra/config.yaml`.
    """

    def __init__(self, run_dir: str | Path, filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename
        self._columns = ["step", "epoch"]
        self._rows: list[dict[str, str]] | None = None  # None: the file is not ours yet

    def purge_after(self, step: int) -> None:
        self._rows = []
        if self.path.is_file():
            self._rows = [row for row in self._read() if int(row["step"]) <= step]
        self._rewrite()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._rows is None:  # a new run: whatever an earlier run left in this folder is replaced
            self._rows = []
        cells = {name: _cell(value) for name, value in metrics.items()}
        new_columns = [name for name in cells if name not in self._columns]
        self._columns += new_columns
        if self._rows and int(self._rows[-1]["step"]) == step:
            self._rows[-1].update(cells)
            self._rewrite()
            return
        self._rows.append({"step": str(step), **cells})
        if new_columns or len(self._rows) == 1:
            self._rewrite()
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([self._rows[-1].get(column, "") for column in self._columns])

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        if metrics:
            self.log_metrics(metrics, step)

    def close(self) -> None:
        if self._rows:
            log.info(f"Metrics table: {self.path}")

    def _rewrite(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self._columns, restval="")
        writer.writeheader()
        writer.writerows(self._rows or [])
        data = text.getvalue().encode("utf-8")
        atomic_write(self.path, lambda f: f.write(data))

    def _read(self) -> list[dict[str, str]]:
        """The rows of the file an earlier process of this run wrote (its columns become ours)."""
        with open(self.path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f, restval="")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        try:
            for row in rows:
                int(row["step"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{self.path} has no whole-number `step` on every row, so it is not the metrics table this run "
                f"wrote (which a resume continues). Move it away (or pick another logger.csv.filename), then resume again."
            ) from None
        self._columns = columns + [c for c in self._columns if c not in columns]
        return [{k: v for k, v in row.items() if k is not None} for row in rows]


def _cell(value: Any) -> str:
    """Whole numbers as such (`epoch`), other values at full float precision."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))
