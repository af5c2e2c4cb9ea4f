"""CSV/TSV files as datasets: numeric feature columns in, target column(s) out."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from src.trainer.tasks import task_class
from src.utils.config import FLOAT32_MAX
from src.data.splits import seeded_split
from src.utils.errors import UserError


class CSVTable(Dataset):
    """The rows of a CSV (or TSV) file with a header line.

    Inputs are the `features` columns (all but the targets when null) as float32;
    the `task` (`data.task`) makes the targets of the `target` columns: e.g. integer
    class indices below `num_classes` for classification, floats for regression, 0/1
    rows for multilabel. A class column may hold names instead (`setosa`, ...): class
    `i` is then `classes[i]`, by default the sorted distinct names in the file, and
    `classes` (a trained model's) maps a new file the same way. The file is split into
    train and test rows by `test_split` with `split_seed`; the validation split is
    carved out of the train rows later.
    `data` (N, F) and `targets` hold the rows of the requested split.
    """

    def __init__(
        self,
        path: str,
        target: str | Sequence[str],
        features: Sequence[str] | None = None,
        task: str = "regression",
        num_classes: int | None = None,
        train: bool = True,
        test_split: float = 0.2,
        split_seed: int = 0,
        delimiter: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"data.path={path!r} is not a file: point it at a CSV or TSV file with a header line.")
        targets = [target] if isinstance(target, str) else list(target)
        header, rows = _read_table(file, delimiter)
        missing = [name for name in [*targets, *(features or [])] if name not in header]
        if missing:
            raise UserError(f"{path} has no column(s) {', '.join(map(repr, missing))}; its columns are: {', '.join(header)}.")
        features = list(features) if features else [name for name in header if name not in targets]
        if not features:
            raise UserError(f"{path}: no feature columns are left besides the target(s) {targets}.")

        columns = {name: header.index(name) for name in header}
        x = _numeric(rows, [columns[n] for n in features], features, path)
        self.classes = list(classes) if classes else None
        if task_class(task).one_output_per_class and len(targets) == 1 and (classes or not _numbers_only(rows, columns[targets[0]])):
            y, self.classes = _class_indices(rows, columns[targets[0]], targets[0], self.classes, num_classes, path)
        else:
            y = _numeric(rows, [columns[n] for n in targets], targets, path)
            y = task_class(task).targets_from_table(y, targets, path, num_classes)

        train_rows, test_rows = seeded_split(len(x), test_split, split_seed)
        rows_of_split = train_rows if train else test_rows
        if len(rows_of_split) == 0:
            raise UserError(
                f"{path}: the {'train' if train else 'test'} split is empty: data.dataset.test_split={test_split} of "
                f"{len(x)} rows gives it none. Set data.dataset.test_split to a fraction that leaves rows on both "
                f"sides (the default is 0.2), or use a larger table."
            )
        self.data, self.targets = x[rows_of_split], y[rows_of_split]
        self.feature_names, self.target_names = features, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index], self.targets[index]


def read_feature_rows(path: str | Path, features: Sequence[str]) -> torch.Tensor:
    """The `features` columns of a CSV or TSV file with a header line, found by name and
    in that order (other columns are ignored): the inputs of a model trained on a table."""
    header, rows = _read_table(Path(path), None)
    missing = [name for name in features if name not in header]
    if missing:
        raise UserError(
            f"{path} has no column(s) {', '.join(map(repr, missing))}, which the model takes as input: it was trained "
            f"on the features {', '.join(features)} (found by name, in any order). The file's columns are: {', '.join(header)}."
        )
    return _numeric(rows, [header.index(name) for name in features], list(features), str(path))


def _read_table(file: Path, delimiter: str | None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a table with a header line and at least one data row; the
    delimiter is a tab for .tsv/.tab files and a comma otherwise, unless given."""
    if delimiter is None:
        delimiter = "\t" if file.suffix.lower() in (".tsv", ".tab") else ","
    rows = _read_rows(file, delimiter)
    if len(rows) < 2:
        raise UserError(f"{file} has no data rows: expected a header line and at least one row.")
    header = [name.strip() for name in rows[0]]
    _check_shape(rows, header, str(file))
    return header, rows


def _read_rows(file: Path, delimiter: str) -> list[list[str]]:
    """The file's rows as lists of cells. It must be UTF-8 text (a byte-order mark is fine)."""
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{file}, line {line}: byte {raw[err.start:err.start + 1]!r} is not UTF-8 text. Expected a CSV or TSV "
            f"file in UTF-8: save it as UTF-8 (e.g. from a spreadsheet, 'CSV UTF-8'), or check that it is a table at all."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return list(reader)
    except csv.Error as err:
        raise UserError(f"{file}, line {reader.line_num}: not a readable CSV line ({err}). Expected a CSV or TSV text file.") from None


def _check_shape(rows: list[list[str]], header: list[str], path: str) -> None:
    """Unique column names, and no data row longer than the header (its extra cells
    would belong to no column)."""
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        name = duplicates[0]
        numbers = [str(i + 1) for i, n in enumerate(header) if n == name]
        raise UserError(
            f"{path}: the header names column {name!r} more than once (columns {', '.join(numbers)}). "
            f"Every column needs its own name: rename or remove the copies."
        )
    for line, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            raise UserError(
                f"{path}, line {line}: {len(row)} cells, but the header has {len(header)} columns. "
                f"Every row needs one cell per header column (a cell holding the delimiter must be quoted)."
            )


def _data_rows(rows: list[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every data row that is not blank."""
    for line, row in enumerate(rows[1:], start=2):
        if any(cell.strip() for cell in row):
            yield line, row


def _numbers_only(rows: list[list[str]], index: int) -> bool:
    """Whether column `index` holds only numbers (class indices), not names."""
    return all(_finite_number(row[index] if index < len(row) else "") is not None for _, row in _data_rows(rows))


def _class_indices(
    rows: list[list[str]], index: int, name: str, classes: list[str] | None, num_classes: int | None, path: str
) -> tuple[torch.Tensor, list[str]]:
    """The class index of each row's label in column `index`, and the class names: the
    given `classes` (a trained model's), or the sorted distinct labels of the file."""
    labels = [(line, row[index].strip() if index < len(row) else "") for line, row in _data_rows(rows)]
    blank = next((line for line, label in labels if not label), None)
    if blank is not None:
        raise UserError(f"{path}, line {blank}: the class column {name!r} is empty. Every row needs its class name.")
    classes = classes or sorted({label for _, label in labels})
    if num_classes is not None and len(classes) != num_classes:
        raise UserError(
            f"{path}: the class column {name!r} names {len(classes)} classes ({_few(classes)}), but "
            f"data.num_classes={num_classes}. Set data.num_classes={len(classes)}."
        )
    index_of = {label: i for i, label in enumerate(classes)}
    unseen = next(((line, label) for line, label in labels if label not in index_of), None)
    if unseen is not None:
        line, label = unseen
        raise UserError(
            f"{path}, line {line}: the class column {name!r} holds {label!r}, which is not one of the "
            f"{len(classes)} classes its labels are mapped to ({_few(classes)}: data.classes, or the trained model's). "
            f"Give rows of those classes only, or train a model that knows {label!r}."
        )
    return torch.tensor([index_of[label] for _, label in labels], dtype=torch.int64), classes


def _few(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _numeric(rows: list[list[str]], indices: list[int], names: list[str], path: str) -> torch.Tensor:
    values = []
    for line, row in _data_rows(rows):
        cells = [row[i] if i < len(row) else "" for i in indices]
        numbers = [_finite_number(cell) for cell in cells]
        if None in numbers:
            name, cell = next((n, c) for n, c, v in zip(names, cells, numbers) if v is None)
            raise UserError(
                f"{path}, line {line}: column {name!r} holds {cell!r}, which is not a finite number. Every feature "
                f"and target column must hold numbers of magnitude at most {FLOAT32_MAX:.3g} (float32), not nan or "
                f"inf (list the usable columns in data.features)."
            )
        values.append(numbers)
    return torch.tensor(values, dtype=torch.float32)


def _finite_number(text: str) -> float | None:
    """The cell's value, or None when it is not a number that float32 holds finitely
    (float() accepts 'nan' and 'inf', and 1e308 overflows to inf in float32)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) <= FLOAT32_MAX else None
