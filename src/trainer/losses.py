"""Losses on the model's raw outputs (negative log-likelihood), and targets prepared
for a loss as the run's task asks (see src/trainer/tasks/)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# Losses that compare each output with a target of the same shape, rather than taking
# a class index per sample: a classification task one-hot encodes its targets for them.
ELEMENTWISE_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.BCEWithLogitsLoss, nn.BCELoss)


class PreparedTargets(nn.Module):
    """`loss(outputs, prepare(outputs, targets))`: the loss sees targets in the form it
    needs, while the metrics still get them as the data yields them."""

    def __init__(self, loss: nn.Module, prepare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss, self.prepare = loss, prepare

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, self.prepare(outputs, targets))


def one_hot(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class indices (N,) as one-hot rows (N, C) in the outputs' dtype."""
    return F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)


def like_outputs(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targets in the outputs' shape and dtype: (N,) targets for (N, 1) outputs are
    viewed as (N, 1), never broadcast to (N, N)."""
    if targets.shape != outputs.shape and targets.numel() == outputs.numel():
        targets = targets.view_as(outputs)
    return targets.to(outputs.dtype)


# The loss classes of configs saved before tasks prepared the targets (a checkpoint's
# config names them): the plain torch losses now, wrapped by the task.
MSELoss, L1Loss, HuberLoss = nn.MSELoss, nn.L1Loss, nn.HuberLoss


class NLLLoss(nn.NLLLoss):
    """Negative log-likelihood of the model's outputs after log_softmax, so any model
    (one that outputs logits, as every model here does) works with it. log_softmax
    leaves log-probabilities as they are, so a model that ends in log_softmax itself
    gets the same loss."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(F.log_softmax(outputs, dim=1), targets)


class TargetScale:
    """The per-column mean and std of a regression task's training targets: targets are
    standardised for the loss, and outputs mapped back to the targets' own units for the
    metrics and predictions."""

    def __init__(self, stats: dict[str, list[float]]) -> None:
        self.mean, self.std = stats["mean"], stats["std"]
        self._tensors: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std on `like`'s device and in its dtype (made once per pair, not per step)."""
        key = (like.device, like.dtype)
        if key not in self._tensors:
            self._tensors[key] = (
                torch.tensor(self.mean, device=like.device, dtype=like.dtype),
                torch.tensor(self.std, device=like.device, dtype=like.dtype),
            )
        return self._tensors[key]

    def standardize(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Targets shaped like the outputs, as (target - mean) / std: what the loss compares with."""
        mean, std = self._on(outputs)
        targets = like_outputs(outputs, targets)
        return (targets - mean) / std

    def to_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """Outputs (N, columns) in the targets' own units: output * std + mean."""
        mean, std = self._on(outputs)
        return outputs * std + mean
