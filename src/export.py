"""export.py's work: a checkpoint's model as an ONNX, torch.export or TorchScript file,
checked against the model in PyTorch, with a JSON file of its preprocessing beside it.

The exported model is the bare network (inputs normalised, outputs logits or values);
the JSON file says how to prepare its inputs and read its outputs. Every format is
exported with a dynamic batch dimension, from an example batch of EXAMPLE_BATCH
inputs, and checked on a batch of another size.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.data.builder import build_data
from src.trainer.stored_config import without_downloads
from src.inference import Predictor, load_for_inference
from src.utils.config import EXPORT_SUFFIXES
from src.utils.console import logging_to
from src.utils.errors import UserError, one_line
from src.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

# The batch a model is exported from, and the batch it is checked on: another size, so
# that a batch dimension fixed at export fails the check.
EXAMPLE_BATCH = 2
CHECK_BATCH = 5
# The largest difference from the model in PyTorch (float32) that an export may show.
TOLERANCE = 1e-4
# The names of the ONNX graph's input and output.
ONNX_INPUT, ONNX_OUTPUT = "input", "output"


class ExportFailed(Exception):
    """The model could not be exported, or the exported model computes something else (exit 1)."""


Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Format:
    """How one format writes a model to bytes and loads those bytes back to run them."""

    save: Callable[[nn.Module, torch.Tensor], bytes]
    load: Callable[[bytes], Model]
    packages: tuple[str, ...] = ()  # besides torch


def _batch_dimension() -> tuple[dict[int, torch.export.Dim], ...]:
    """dynamic_shapes for a model's one input: dimension 0 (the batch) is free."""
    return ({0: torch.export.Dim("batch")},)


def _save_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    # torch.export-based exporter (dynamo=True, torch's default and the one it maintains;
    # the TorchScript-based one is deprecated). It needs onnxscript, and nothing online.
    for name in ("onnxscript", "onnx_ir"):  # their graph optimiser reports every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(
        model, (example,), dynamo=True, dynamic_shapes=_batch_dimension(),
        input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], verbose=False,
    )
    buffer = io.BytesIO()
    program.save(buffer)  # weights inside the file (a file over 2 GB would need external data)
    return buffer.getvalue()


def _load_onnx(data: bytes) -> Model:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])


def _save_torch_export(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dimension())
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _load_torch_export(data: bytes) -> Model:
    return torch.export.load(io.BytesIO(data)).module()


def _save_torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():  # PyTorch deprecates TorchScript (said in the README and the config)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _load_torchscript(data: bytes) -> Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(io.BytesIO(data))


FORMATS = {
    "onnx": Format(_save_onnx, _load_onnx, packages=("onnx", "onnxscript", "onnxruntime")),
    "torch_export": Format(_save_torch_export, _load_torch_export),
    "torchscript": Format(_save_torchscript, _load_torchscript),
}
assert FORMATS.keys() == EXPORT_SUFFIXES.keys(), "each format of configs/export.yaml has an exporter"


def export_checkpoint(cfg: DictConfig) -> Path:
    """Export `cfg.checkpoint` in `cfg.format`; returns the file written."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with logging_to(run_dir / "export.log"):
        return _export(cfg)


def _export(cfg: DictConfig) -> Path:
    checkpoint = Path(cfg.checkpoint)
    output = Path(cfg.output) if cfg.output else checkpoint.with_name(checkpoint.stem + EXPORT_SUFFIXES[cfg.format])
    sidecar = output.with_name(output.name + ".json")
    for path in (output, sidecar):
        if path.exists():  # never overwrite what this command did not write
            raise UserError(f"{path} already exists: pass output=PATH for a new file, or move that one away.")
    fmt = FORMATS[cfg.format]
    missing = [name for name in fmt.packages if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"format={cfg.format} needs the package(s) {', '.join(missing)}: install them with "
            f"`pip install -e \".[export]\"` (make install does), or choose format=torch_export."
        )
    predictor = load_for_inference(checkpoint, "cpu")
    inputs, source = check_inputs(predictor)
    data, difference = export_and_check(predictor.model, cfg.format, inputs, source)
    try:
        atomic_write(output, lambda f: f.write(data))
        metadata = {"format": cfg.format, "file": output.name, "checkpoint": str(checkpoint), **predictor.metadata()}
        if cfg.format == "onnx":
            metadata.update(input_name=ONNX_INPUT, output_name=ONNX_OUTPUT)
        metadata["check"] = {"inputs": source, "max_abs_difference": difference, "tolerance": TOLERANCE}
        atomic_write_json(sidecar, metadata)
    except OSError as err:
        raise UserError(f"Could not write the exported model to {output}: {err.strerror or err}. Choose a writable place with output=PATH.") from None
    log.info(f"Exported {checkpoint} as {cfg.format}: {output} (its preprocessing: {sidecar})")
    return output


def check_inputs(predictor: Predictor) -> tuple[torch.Tensor, str]:
    """CHECK_BATCH model inputs (normalised) to compare the export on, and what they
    are: samples of the run's test split when it can be loaded here, else random."""
    data_cfg = without_downloads(OmegaConf.merge(predictor.config.data, {"eval_batch_size": CHECK_BATCH, "num_workers": 0}))
    try:
        data = build_data(data_cfg, torch.device("cpu"), seed=predictor.config.seed, splits=("test",), stats=predictor.data_stats)
        inputs, _ = next(iter(data.test))  # type: ignore[arg-type]
    except UserError as err:
        reason = one_line(err, limit=200)
        return torch.randn(CHECK_BATCH, *predictor.input_shape), f"{CHECK_BATCH} random inputs (the run's test split cannot be loaded here: {reason})"
    inputs = inputs[torch.arange(CHECK_BATCH) % len(inputs)]  # a split smaller than the batch repeats samples
    return inputs, f"{CHECK_BATCH} samples of the run's test split ({data_cfg.name})"


def export_and_check(model: nn.Module, format_name: str, inputs: torch.Tensor, source: str) -> tuple[bytes, float]:
    """The model exported in `format_name` (bytes), loaded back and run on `inputs`, and
    the largest difference of its outputs from the model's own; ExportFailed when the
    export fails or differs by more than TOLERANCE."""
    fmt = FORMATS[format_name]
    example = torch.randn(EXAMPLE_BATCH, *inputs.shape[1:])
    try:
        data = fmt.save(model, example)
        exported = fmt.load(data)
        with torch.inference_mode():
            got = exported(inputs)
    except Exception as err:  # exporters raise many kinds for a model they cannot handle
        raise ExportFailed(
            f"Exporting {type(model).__name__} as {format_name} and running the export failed: {type(err).__name__}: {one_line(err)}. "
            f"Another format may handle it (format={' or format='.join(f for f in FORMATS if f != format_name)})."
        ) from None
    with torch.inference_mode():
        expected = model(inputs)
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportFailed(
            f"The {format_name} export of {type(model).__name__} gives outputs of shape {tuple(got.shape)} for {source}, "
            f"but the model gives {tuple(expected.shape)}: it was exported with a batch of {EXAMPLE_BATCH} and does not "
            f"take another batch size. Nothing was written."
        )
    difference = (got.float() - expected.float()).abs().max().item()
    log.info(f"Checked the {format_name} export against the model in PyTorch on {source}: max abs difference {difference:.3g}")
    if not difference <= TOLERANCE:  # NaN too
        raise ExportFailed(
            f"The {format_name} export of {type(model).__name__} differs from the model in PyTorch by up to {difference:.3g} "
            f"on {source}, more than the tolerance of {TOLERANCE:g} for float32. Nothing was written. Another format may "
            f"export it faithfully."
        )
    return data, difference
