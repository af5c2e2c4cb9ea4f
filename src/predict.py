"""predict.py's work: a trained model's predictions for files, one CSV row per input.

Inputs are an image file, a folder of images (searched recursively), a CSV/TSV table
whose header names the model's feature columns, or an array (.npy, or an IDX file such
as MNIST's `t10k-images-idx3-ubyte`). Each goes through the preprocessing stored in
the checkpoint (src/inference.py).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from src.data.tabular import read_feature_rows
from src.inference import Predictor, load_for_inference
from src.utils.config import PREDICT_INPUTS
from src.utils.console import logging_to
from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".tab")


def predict_files(cfg: DictConfig) -> Path:
    """Predict for `cfg.inputs` with `cfg.checkpoint`; returns the CSV file written."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with logging_to(run_dir / "predict.log"):
        return _predict(cfg, run_dir)


def _predict(cfg: DictConfig, run_dir: Path) -> Path:
    output = Path(cfg.output) if cfg.output else run_dir / "predictions.csv"
    if cfg.output and output.exists():  # never overwrite what this command did not write
        raise UserError(f"output={str(output)!r} already exists: name a new file for the predictions, or move that one away.")
    predictor = load_for_inference(cfg.checkpoint, cfg.device)
    top_k = min(cfg.top_k, int(predictor.config.data.num_outputs))
    columns, cells = _layout(predictor, top_k)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["input", *columns])
    count = 0
    for names, batch in input_batches(Path(cfg.inputs), predictor, cfg.batch_size):
        results = predictor.predict(batch)
        for name, result in zip(names, results):
            writer.writerow([name, *cells(result)])
        count += len(names)
    atomic_write(output, lambda f: f.write(text.getvalue().encode()))
    log.info(f"{count} prediction(s) written to {output}")
    return output


def _layout(predictor: Predictor, top_k: int) -> tuple[list[str], Callable[[torch.Tensor], list[str]]]:
    """The CSV's columns after `input`, and the cells of one input's result, by task."""
    if predictor.task == "classification":
        return _class_columns(top_k), lambda probabilities: _top_classes(predictor, probabilities, top_k)
    if predictor.task == "multilabel":
        labels = predictor.output_names()
        columns = [column for label in labels for column in (label, f"{label}_probability")]
        return columns, _labels
    return predictor.output_names(), lambda values: [f"{v:.7g}" for v in values.tolist()]


def _labels(probabilities: torch.Tensor) -> list[str]:
    """Per label: 1 when its probability is above 0.5 (as the multilabel metrics count), else 0; then the probability."""
    return [cell for p in probabilities.tolist() for cell in (str(int(p > 0.5)), f"{p:.6f}")]


def _class_columns(top_k: int) -> list[str]:
    """predicted, class_index, probability; then the next most probable classes."""
    return ["predicted", "class_index", "probability"] + [f"top{k}{part}" for k in range(2, top_k + 1) for part in ("", "_probability")]


def _top_classes(predictor: Predictor, probabilities: torch.Tensor, top_k: int) -> list[str]:
    values, indices = probabilities.topk(top_k)
    cells = [predictor.class_name(int(indices[0])), str(int(indices[0])), f"{float(values[0]):.6f}"]
    for value, index in zip(values[1:].tolist(), indices[1:].tolist()):
        cells += [predictor.class_name(index), f"{value:.6f}"]
    return cells


def input_batches(path: Path, predictor: Predictor, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(a name for each input, a batch of raw inputs) for the file or folder at `path`:
    file paths for images, row indices (from 0) for tables and arrays."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise UserError(f"inputs={str(path)!r} is a folder without image files ({', '.join(IMG_EXTENSIONS)}, in it or below).")
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            yield [str(f) for f in chunk], torch.stack([predictor.read_image(f) for f in chunk])
        return
    suffix = path.suffix.lower()
    if suffix in IMG_EXTENSIONS:
        yield [str(path)], predictor.read_image(path).unsqueeze(0)
        return
    if suffix in TABLE_SUFFIXES:
        array = _read_table(path, predictor)
    elif suffix == ".npy":
        array = _read_array(path, "a .npy array", lambda: torch.from_numpy(np.load(path, allow_pickle=False)))
    elif re.search(r"idx\d-ubyte$", path.name) or suffix == ".idx":
        from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

        array = _read_array(path, "an IDX file", lambda: read_sn3_pascalvincent_tensor(str(path)))
    else:
        raise UserError(f"inputs={str(path)!r}: a {suffix or 'suffix-less'} file is not an input predict.py reads. Give {PREDICT_INPUTS}.")
    array = predictor.check(array, source=str(path))
    for start in range(0, len(array), batch_size):
        yield [str(i) for i in range(start, min(start + batch_size, len(array)))], array[start : start + batch_size]


def _read_table(path: Path, predictor: Predictor) -> torch.Tensor:
    if predictor.takes_images:
        raise UserError(f"{path}: this model takes images {predictor.shape_text()}, not table rows. Give image files, or an array of images.")
    if not predictor.features:
        raise UserError(
            f"{path}: the checkpoint holds no feature names (it was written before they were kept, or by a dataset "
            f"without them), so the table's columns cannot be matched by name. Give the rows as a .npy array of shape "
            f"{predictor.shape_text()}, in the column order of training."
        )
    return read_feature_rows(path, predictor.features)


def _read_array(path: Path, kind: str, read: Callable[[], torch.Tensor]) -> torch.Tensor:
    try:
        return read()
    except Exception as err:  # numpy and torchvision raise many kinds for a file that is not what its name says
        raise UserError(f"{path} is not readable as {kind}: {type(err).__name__}: {one_line(err) or 'malformed file'}.") from None
