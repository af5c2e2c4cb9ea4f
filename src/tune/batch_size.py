"""`data.batch_size=auto`: the largest training batch that fits in the device's memory.

Candidates are tried with a real training step each (forward, backward and optimizer
step, in the run's precision and memory format, on the run's own first batch): powers
of two from 1 until one fails, then a bisection between the last that fitted and the
first that failed. A batch fits when its step raises no out-of-memory error and, on
CUDA, its peak of reserved memory leaves `memory_margin` of the device's memory free
(room for longer sequences, fragmentation and evaluation). The CPU and MPS report no
limit to measure against: there only an out-of-memory error or the caps stop the
search. The caps are `max_batch_size` and the training set's size (under torchrun, the
process's share), so a machine with room to spare gets the cap.

The model, the optimizer and the random number generators are put back afterwards:
the run then trains exactly as one started with the chosen size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from src.data.builder import DataSplits
from src.trainer.forward import ForwardPass
from src.tune.put_back import put_back
from src.utils import distributed
from src.utils.errors import UserError, one_line

log = logging.getLogger(__name__)


def largest_fitting(fits: Callable[[int], bool], cap: int) -> int:
    """The largest size in [1, cap] for which `fits` holds, assuming every smaller size
    fits too: doubling from 1, then bisecting. 0 when not even 1 fits."""
    good, size = 0, 1
    while fits(size):
        good = size
        if size == cap:
            return good
        size = min(2 * size, cap)
    bad = size
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def search_batch_size(
    model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, data: DataSplits, device: torch.device, cfg: DictConfig
) -> int:
    """The largest batch of `data.train` whose training step fits (see the module's
    docstring); `data` was built with batches of the search's cap, `cfg` is the run's
    config. Under torchrun every rank searches and all take the smallest answer."""
    settings = cfg.trainer.batch_size_search
    forward = ForwardPass.of_run(model, loss_fn, cfg.trainer, data.input_shape, device)
    assert data.train is not None
    data.train.set_epoch(0)
    inputs, targets = next(iter(data.train))  # the run's own first batch, at the cap's size
    trial = Trial(forward, optimizer, inputs.cpu(), targets.cpu(), float(settings.memory_margin))
    cap = len(targets)
    with put_back(model, optimizer):
        size = largest_fitting(trial, cap)
    size = min(distributed.gather(size))
    if size == 0:
        raise UserError(
            f"data.batch_size=auto: not even a batch of 1 fits a training step of {type(model).__name__} on {device} "
            f"({trial.failure}). Try trainer.precision=bf16-mixed, a smaller model, or a device with more memory."
        )
    why = "the cap (the training set's size, or trainer.batch_size_search.max_batch_size)" if size == cap else "the largest that fits"
    limit = f" with {settings.memory_margin:.0%} of its memory to spare" if device.type == "cuda" else f" ({device.type} reports no memory limit: only an out-of-memory error or the caps end the search)"
    tried = ", ".join(str(n) if fits else f"{n} (too big)" for n, fits in trial.tried.items())
    log.info(f"data.batch_size=auto: training with batches of {size}, {why} on {device}{limit}; tried {tried}.")
    return size


class Trial:
    """`trial(size)`: whether a training step on the first `size` samples fits."""

    def __init__(self, forward: ForwardPass, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor, margin: float) -> None:
        self.forward, self.optimizer, self.inputs, self.targets, self.margin = forward, optimizer, inputs, targets, margin
        self.tried: dict[int, bool] = {}
        self.failure = ""

    def __call__(self, size: int) -> bool:
        device = self.forward.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            self._step(size)
            fits = True
        except torch.OutOfMemoryError as err:
            fits, self.failure = False, one_line(err, limit=160)
        # Out of the except block: the activations the error's traceback held are freed.
        self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            peak, total = torch.cuda.max_memory_reserved(device), torch.cuda.get_device_properties(device).total_memory
            if fits and peak > (1 - self.margin) * total:
                fits, self.failure = False, f"its step peaked at {peak / 2**30:.1f} of {total / 2**30:.1f} GiB"
            torch.cuda.empty_cache()
        self.tried[size] = fits
        return fits

    def _step(self, size: int) -> None:
        device = self.forward.device
        inputs, targets = self.inputs[:size].to(device), self.targets[:size].to(device)
        self.forward.model.train()
        loss = self.forward(inputs, targets)[1]
        loss.backward()
        self.optimizer.step()  # optimizer state (Adam's moments) is memory a real step needs too
