"""How a run calls its model: the memory format (channels-last) and mixed precision,
decided once and used alike by training, validation and test."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from src.utils.config import PRECISIONS
from src.utils.errors import UserError, one_line
from src.utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


def use_channels_last(
    model: nn.Module, setting: str | bool, input_shape: Sequence[int], device: torch.device, precision: str = "32"
) -> bool:
    """Decide `trainer.channels_last` for `model` and put the model in that memory format.

    `auto` is on for a model with a Conv2d on image inputs, once a dry training step
    shows that the model works in channels-last (one that flattens with `.view()`
    after a convolution does not); otherwise the model keeps the default format.
    `true` makes such a failure a UserError. Training and evaluation both decide here.
    """
    images = len(input_shape) == 3
    on = (images and any(isinstance(m, nn.Conv2d) for m in model.modules())) if setting == "auto" else bool(setting)
    failure = _channels_last_failure(model, input_shape, device, precision) if on and images else None
    if failure is not None and setting is True:
        raise UserError(
            f"trainer.channels_last=true, but {type(model).__name__} fails a training step in the channels-last "
            f"memory format that works in the default one: {failure}. The likely cause is a `.view()` after a "
            f"convolution (such as `x.view(-1, 320)`): `.reshape()` or `torch.flatten(x, 1)` does the same in either "
            f"format. Or set trainer.channels_last=false (or auto, which leaves it off for such a model)."
        )
    if failure is not None:
        log.info(
            f"trainer.channels_last=auto: channels-last stays off, since {type(model).__name__} fails in it "
            f"({failure}); continuing in the default memory format."
        )
        on = False
    if on:
        model.to(memory_format=torch.channels_last)
    return on


def _channels_last_failure(model: nn.Module, input_shape: Sequence[int], device: torch.device, precision: str) -> str | None:
    """The error of a dry training step that fails in channels-last and works in the
    default format; None when it works in channels-last, or fails in both (then the
    model's trouble is not the layout, and its first real step reports it)."""
    model.to(memory_format=torch.channels_last)
    failure = _dry_step(model, input_shape, device, precision, channels_last=True)
    model.to(memory_format=torch.contiguous_format)
    if failure is None or _dry_step(model, input_shape, device, precision, channels_last=False) is not None:
        return None
    return failure


def _dry_step(model: nn.Module, input_shape: Sequence[int], device: torch.device, precision: str, channels_last: bool) -> str | None:
    """Forward and backward two zero samples in train mode, as a training step does;
    returns the error, or None. It leaves no trace: it changes no weight, and the
    gradients, buffers (batch-norm statistics) and every RNG (dropout draws from it)
    are put back, so that a run stays bitwise the same with or without it."""
    inputs = to_memory_format(torch.zeros(2, *input_shape, device=device), channels_last)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    rng, was_training = rng_state(), model.training
    model.train()
    try:
        with autocast(device, precision):
            outputs = model(inputs)
        if isinstance(outputs, torch.Tensor) and outputs.requires_grad:
            outputs.float().sum().backward()
        return None
    except Exception as err:  # whatever the model raises is the answer
        return f"{type(err).__name__}: {one_line(err)}"
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        set_rng_state(rng)
        model.train(was_training)


def to_memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and inputs.ndim == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast to the precision's dtype; for plain float32 a no-op context (building a
    disabled torch.autocast costs tens of microseconds, on every step)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype is not None else nullcontext()


@dataclass
class ForwardPass:
    """How a run calls its model: inputs in the model's memory format, the forward and
    the loss under the run's autocast. `model` may be wrapped (DDP, torch.compile)."""

    model: nn.Module
    loss_fn: nn.Module
    device: torch.device
    channels_last: bool = False
    precision: str = "32"

    def __post_init__(self) -> None:
        # Called every step: the context is built once (torch.autocast may be entered
        # again once exited), and plain float32 enters none at all.
        self._autocast = autocast(self.device, self.precision) if PRECISIONS[self.precision] is not None else None

    @classmethod
    def of_run(
        cls, model: nn.Module, loss_fn: nn.Module, trainer: Any, input_shape: Sequence[int], device: torch.device
    ) -> ForwardPass:
        """The pass a run's `trainer` settings ask for (its precision, and channels-last as
        `use_channels_last` decides it, which also puts `model` in that format)."""
        precision = str(trainer.get("precision", "32"))
        channels_last = use_channels_last(model, trainer.get("channels_last", False), input_shape, device, precision)
        return cls(model, loss_fn, device, channels_last, precision)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, loss) of one batch."""
        if self.channels_last:
            inputs = to_memory_format(inputs, True)
        if self._autocast is None:
            outputs = self.model(inputs)
            return outputs, self.loss_fn(outputs, targets)
        with self._autocast:
            outputs = self.model(inputs)
            return outputs, self.loss_fn(outputs, targets)
