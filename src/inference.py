"""Use a trained model from Python, with exactly the preprocessing its checkpoint stores.

    from src.inference import load_for_inference

    predictor = load_for_inference("saved/runs/<name>/<time>/checkpoints/best.pt")
    images = torch.stack([predictor.read_image(path) for path in paths])  # uint8 (N, C, H, W)
    probabilities = predictor.predict(images)                            # (N, classes), on the CPU
    names = [predictor.class_name(i) for i in probabilities.argmax(dim=1).tolist()]

`predict` takes a batch of raw inputs: uint8 pixels (N, C, H, W) (or (N, H, W) for
one channel), floats in [0, 1], or feature rows (N, F) as they are in the table. It
normalises them as training did (data.mean/std, or a table's standardisation
statistics) and returns class probabilities, a multilabel model's probability per
label, or a regression model's values in the target's own units.
Nothing here imports the training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.data.batches import Normalize
from src.data.builder import normalization, sample_transform
from src.trainer.checkpoint import load_checkpoint, load_model_state
from src.trainer.losses import TargetScale
from src.utils.build import build
from src.utils.device import resolve_device
from src.utils.errors import UserError, one_line


@dataclass
class Predictor:
    """A trained model in eval mode on its device, with its checkpoint's preprocessing."""

    model: nn.Module
    device: torch.device
    task: str
    # One input's shape: (C, H, W) for images, (F,) for feature rows.
    input_shape: tuple[int, ...]
    # Per channel (images) or per feature (tables); None: no normalisation beyond pixels / 255.
    mean: list[float] | None
    std: list[float] | None
    # The run's resolved config, as stored in the checkpoint (already checked).
    config: DictConfig
    data_stats: dict[str, list[float]] | None = None
    classes: list[str] | None = None
    features: list[str] | None = None
    # A regression model's training-target mean/std: it outputs standardised targets.
    target_stats: dict[str, list[float]] | None = None
    # Image file -> uint8 CHW tensor: the run's eval transforms (data.transforms.eval).
    image_transform: Callable[[Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.normalize = Normalize(self.mean, self.std, self.device)

    @property
    def takes_images(self) -> bool:
        return len(self.input_shape) == 3

    def shape_text(self, batch: bool = True) -> str:
        """The expected input shape in words, e.g. "(N, 1, 28, 28)"."""
        return "(" + ", ".join((["N"] if batch else []) + [str(d) for d in self.input_shape]) + ")"

    def predict(self, inputs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities (classification), label probabilities (multilabel) or values
        in the target's units (regression), one row per input, on the CPU."""
        x = self.prepare(inputs)
        with torch.inference_mode():
            outputs = self.model(x).float()
        return self.postprocess(outputs).cpu()

    def prepare(self, inputs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A batch of raw inputs, checked and normalised as in training, on the model's
        device: what the model itself takes."""
        return self.normalize(self.check(inputs).to(self.device))

    def check(self, inputs: torch.Tensor | np.ndarray, source: str = "The input") -> torch.Tensor:
        """`inputs` as a tensor of the model's input shape (a batch of (N, H, W) gains
        its one channel), or a UserError naming `source` and the shape expected."""
        x = given = torch.as_tensor(inputs)
        if self.takes_images and self.input_shape[0] == 1 and x.ndim == 3:
            x = x.unsqueeze(1)  # (N, H, W): one channel, as MNIST's arrays are stored
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            what = "images: channels, height, width" if self.takes_images else "feature rows"
            if self.features:
                what += f": {', '.join(self.features)}"
            raise UserError(
                f"{source} has the shape {tuple(given.shape)}, but the model takes a batch of shape {self.shape_text()} "
                f"({what}). Give inputs of that shape."
            )
        if self.takes_images and x.dtype != torch.uint8 and not x.is_floating_point():
            raise UserError(f"{source} holds {x.dtype} values, but images are uint8 pixels (0-255) or floats in [0, 1]: convert them to one of those.")
        # uint8 pixels are scaled by Normalize; anything else (float64 arrays, integer
        # features) becomes float32, as the model's weights are.
        return x if self.takes_images and x.dtype == torch.uint8 else x.float()

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs in the terms of its task. This is the one place that maps
        them back: a regression target's inverse transform belongs here."""
        if self.task == "classification":
            return outputs.softmax(dim=1)
        if self.task == "multilabel":
            return outputs.sigmoid()
        if self.task == "regression":
            return TargetScale(self.target_stats).to_units(outputs) if self.target_stats else outputs
        raise UserError(f"Predicting for data.task={self.task!r} is not supported: only classification, multilabel and regression are.")

    def read_image(self, path: str | Path) -> torch.Tensor:
        """One image file as the uint8 (C, H, W) tensor the model takes: through the
        run's eval transforms when it has them (an image folder's RGB and resize),
        else as it is. An image of another size or channel count is refused."""
        if self.image_transform is None:
            raise UserError(
                f"{path}: this model takes rows of features {self.shape_text()}, not images. Give it a CSV table, "
                f"or a .npy array of the features."
            )
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
                mode = image.mode
                tensor = self.image_transform(image)
        except (OSError, ValueError) as err:  # PIL's way of saying "not an image I can read"
            raise UserError(f"{path} is not a readable image ({one_line(err)}). Give image files that PIL opens (PNG, JPEG, ...).") from None
        if tuple(tensor.shape) != self.input_shape or tensor.dtype != torch.uint8:
            got = f"{tuple(tensor.shape)} ({mode}{', not 8-bit' if tensor.dtype != torch.uint8 else ''})"
            raise UserError(
                f"{path} has the shape {got}, but the model takes images of shape {self.shape_text(batch=False)} "
                f"(channels, height, width). {self._resize_advice()}"
            )
        return tensor

    def _resize_advice(self) -> str:
        channels, height, width = self.input_shape
        colour = "grayscale (one channel)" if channels == 1 else f"{channels}-channel" if channels != 3 else "RGB"
        if self._eval_transforms():
            return f"The run's eval transforms (data.transforms.eval) did not bring it there; convert it to {colour} {width}x{height} first."
        return (
            f"This model's preprocessing does not resize or convert images (it was trained on {self.config.data.name} "
            f"images as they are): convert the image to {colour} {width}x{height} pixels first."
        )

    def _eval_transforms(self) -> Any:
        """The run's data.transforms.eval config (a list), or None."""
        return (self.config.data.get("transforms") or {}).get("eval") or None

    def _preprocessing_text(self) -> str:
        steps = ["uint8 pixels are divided by 255"] if self.takes_images else []
        if self.mean is not None and self.std is not None:
            steps.append(f"(x - mean) / std per {'channel' if self.takes_images else 'feature'}")
        return ", then ".join(steps) or "none"

    def class_name(self, index: int) -> str:
        """The name of class `index`, or the index itself when the checkpoint holds no names."""
        return self.classes[index] if self.classes and index < len(self.classes) else str(index)

    def output_names(self) -> list[str]:
        """A name per output of a regression or multilabel model: its target columns, else
        value, value_1, ..."""
        width = int(self.config.data.num_outputs)
        targets = self.config.data.get("target")
        names = [targets] if isinstance(targets, str) else list(targets or [])
        if len(names) == width and all(isinstance(name, str) for name in names):
            return names
        return ["value"] if width == 1 else [f"value_{i}" for i in range(width)]

    def metadata(self) -> dict[str, Any]:
        """What a user of an exported model needs to prepare its inputs and read its
        outputs, as plain JSON values."""
        data = self.config.data
        transforms = self._eval_transforms()
        return {
            "task": self.task,
            "input_shape": list(self.input_shape),
            "batch_dimension": "dynamic: inputs are (N, *input_shape)",
            "preprocessing": self._preprocessing_text(),
            "mean": self.mean,
            "std": self.std,
            "data_stats": self.data_stats,
            "target_stats": self.target_stats,
            "eval_transforms": OmegaConf.to_container(transforms) if transforms else None,
            "outputs": OUTPUTS.get(self.task, "values"),
            "classes": self.classes,
            "features": self.features,
            "output_names": self.output_names() if self.task in ("regression", "multilabel") else None,
            "data": data.name,
        }


# What an exported model's outputs are, by task (the metadata's "outputs").
OUTPUTS = {
    "classification": "logits: softmax over dim 1 gives the class probabilities",
    "multilabel": "logits: a sigmoid gives each label's probability; a label is predicted above 0.5",
    "regression": "values; with target_stats, standardised: value * std + mean is in the target's units",
}


def load_for_inference(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The checkpoint's model, in eval mode on `device` (`auto` = cuda > mps > cpu), with
    the preprocessing it was trained with. A missing, damaged or foreign checkpoint is a
    UserError (see load_checkpoint)."""
    path = Path(path)
    state = load_checkpoint(path)
    trained = OmegaConf.create(state["config"])
    device = device if isinstance(device, torch.device) else resolve_device(str(device), key="device")
    model = build("model", trained.model)
    load_model_state(model, state["model"], path)
    model.to(device).eval()
    data = trained.data
    if data.get("input_shape") is None:
        raise UserError(f"{str(path)!r} does not record its input shape (data.input_shape): use a checkpoint written by train.py.")
    stats = state.get("data_stats")
    if data.get("standardize") and not stats:
        raise UserError(
            f"{str(path)!r} standardises its inputs (data.standardize) but holds no data_stats to do it with: "
            f"use a checkpoint written by train.py."
        )
    input_shape = tuple(int(d) for d in data.input_shape)
    mean, std = normalization(data, stats)
    return Predictor(
        model=model,
        device=device,
        task=str(data.get("task", "classification")),
        input_shape=input_shape,
        mean=mean,
        std=std,
        config=trained,
        data_stats=stats,
        classes=state.get("classes"),
        features=state.get("features"),
        target_stats=state.get("target_stats"),
        # The stored transforms were checked by load_checkpoint (stored_config.py).
        image_transform=sample_transform(data, "eval") if len(input_shape) == 3 else None,
    )
