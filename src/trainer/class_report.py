"""What a classifier's confusion matrix tells: each class's precision, recall and F1,
their macro averages, and the matrix itself, labelled with the class names.

The matrix is counted on the device while a split is evaluated (ClassificationMetrics
in metrics.py, never in the training batches); the scores are computed from it on the
device too and read back once. `ClassReport` and `ConfusionMatrix` are evaluation
extras (see src/trainer/tasks/base.py): test.py and train.py's final test of best.pt
write them into their JSON, print them and log them as images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from src.trainer.images import confusion_image, table_image
from src.trainer.loggers import Loggers

# Classes shown in a printed table or a logged image; the JSON records always hold all.
# More classes than this are not readable in a terminal.
MAX_ROWS = 20


def class_labels(names: list[str] | None, num_classes: int) -> list[str]:
    """The dataset's class names when it has one per class, else the indices "0", "1", ..."""
    if names is not None and len(names) == num_classes:
        return list(names)
    return [str(i) for i in range(num_classes)]


def class_scores(confusion: torch.Tensor) -> torch.Tensor:
    """Rows precision, recall, F1 and support (true samples) of each class of a (C, C)
    confusion matrix (rows: true class), float64 on its device.

    As scikit-learn's with zero_division=0: a class that occurs but is never predicted
    has precision 0, one predicted but never occurring has recall 0. A class that
    neither occurs nor is predicted has no score at all (nan), and `macro_averages`
    leaves it out.
    """
    counts = confusion.double()
    true_pos, support, predicted = counts.diagonal(), counts.sum(dim=1), counts.sum(dim=0)
    precision = true_pos / predicted.clamp_min(1)
    recall = true_pos / support.clamp_min(1)
    f1 = 2 * true_pos / (support + predicted).clamp_min(1)  # 2TP / (2TP + FP + FN)
    seen = support + predicted > 0
    scores = torch.where(seen, torch.stack([precision, recall, f1]), math.nan)
    return torch.cat([scores, support.unsqueeze(0)])


def macro_averages(scores: torch.Tensor) -> torch.Tensor:
    """Macro precision, recall and F1 of `class_scores`: the means over the classes that
    occur or are predicted (nan when there are none)."""
    return scores[:3].nanmean(dim=1)


class ClassReport:
    """Precision, recall, F1 and support of each class, and their macro averages.

    `scores` are `class_scores(...).tolist()` and `macro` `macro_averages(...).tolist()`.
    The printed table and the logged image show every class when there are at most
    MAX_ROWS, else the MAX_ROWS with the lowest F1 (the classes to look at).
    """

    def __init__(self, labels: list[str], scores: list[list[float]], macro: list[float]) -> None:
        self.labels = labels
        self.precision, self.recall, self.f1, support = scores
        self.support = [int(s) for s in support]
        self.macro = macro

    def to_json(self) -> dict[str, Any]:
        """{"classes": {name: {precision, recall, f1, support}}, "macro": {precision, recall, f1}};
        null for a class that neither occurs nor is predicted."""
        classes = {
            label: {"precision": _number(p), "recall": _number(r), "f1": _number(f), "support": s}
            for label, p, r, f, s in zip(self.labels, self.precision, self.recall, self.f1, self.support)
        }
        macro = dict(zip(("precision", "recall", "f1"), map(_number, self.macro)))
        return {"classes": classes, "macro": macro}

    def shown(self) -> list[int]:
        """The classes the table and the image show, in the order they show them."""
        everyone = range(len(self.labels))
        if len(self.labels) <= MAX_ROWS:
            return list(everyone)
        scored = [i for i in everyone if not math.isnan(self.f1[i])]
        return sorted(scored, key=lambda i: self.f1[i])[:MAX_ROWS]

    def caption(self) -> str:
        shown = self.shown()
        if len(shown) == len(self.labels):
            return ""
        return f"the {len(shown)} of {len(self.labels)} classes with the lowest F1; the JSON record has every class"

    def rows(self) -> list[list[str]]:
        """Header, one row per shown class, and the macro averages."""
        rows = [["class", "precision", "recall", "F1", "support"]]
        for i in self.shown():
            rows.append([self.labels[i], *(_cell(v[i]) for v in (self.precision, self.recall, self.f1)), str(self.support[i])])
        rows.append(["macro average", *map(_cell, self.macro), str(sum(self.support))])
        return rows

    def table(self) -> Table:
        header, *body = self.rows()
        table = Table(title="Per class", title_justify="left", caption=self.caption() or None, caption_justify="left")
        table.add_column(header[0])
        for name in header[1:]:
            table.add_column(name, justify="right")
        for i, (label, *cells) in enumerate(body):
            table.add_row(escape(label), *cells, end_section=i == len(body) - 2)
        return table

    def log(self, loggers: Loggers, name: str, step: int) -> None:
        loggers.log_image(name, table_image(self.rows(), title=self.caption()), step)


class ConfusionMatrix:
    """Counts of (true class, predicted class): rows are true classes, in the order of
    `labels` (the class names, or indices)."""

    def __init__(self, counts: list[list[int]], labels: list[str]) -> None:
        self.counts = counts
        self.labels = labels

    def to_json(self) -> list[list[int]]:
        """The counts; rows and columns in the order of the classes of `ClassReport`."""
        return self.counts

    def table(self) -> Table | Text:
        n = len(self.counts)
        if n > MAX_ROWS:
            return Text(f"Confusion matrix: {n} classes are too many to print; it is in the JSON record and the logged image.")
        table = Table(title="Confusion matrix", title_justify="left")
        table.add_column("true \\ predicted")
        for j in range(n):
            table.add_column(str(j), justify="right")
        for i, (label, row) in enumerate(zip(self.row_labels(), self.counts)):
            table.add_row(escape(label), *(f"[bold]{c}[/bold]" if i == j else str(c) for j, c in enumerate(row)))
        return table

    def row_labels(self) -> list[str]:
        """Each row's index, which names its column, and its class name. A name that
        begins with its index already (torchvision's MNIST: "0 - zero") is left as it is."""
        return [label if label.split(" ")[0] == str(i) else f"{i} {label}" for i, label in enumerate(self.labels)]

    def log(self, loggers: Loggers, name: str, step: int) -> None:
        loggers.log_image(name, confusion_image(self.counts, self.row_labels()), step)


def _number(value: float) -> float | None:
    """A JSON number; None for nan (JSON has no nan)."""
    return None if math.isnan(value) else value


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
