"""Losses on the model's raw outputs: negative log-likelihood, and regression losses that
also accept class indices (one-hot encoded against the output)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _match_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not targets.is_floating_point() and outputs.ndim == 2 and targets.ndim == 1:
        return F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
    if targets.shape != outputs.shape and targets.numel() == outputs.numel():
        targets = targets.view_as(outputs)  # (N,) targets for (N, 1) outputs: never broadcast to (N, N)
    return targets.to(outputs.dtype)


class MSELoss(nn.MSELoss):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(outputs, _match_targets(outputs, targets))


class L1Loss(nn.L1Loss):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(outputs, _match_targets(outputs, targets))


class HuberLoss(nn.HuberLoss):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(outputs, _match_targets(outputs, targets))


class NLLLoss(nn.NLLLoss):
    """Negative log-likelihood of the model's outputs after log_softmax, so any model
    (one that outputs logits, as every model here does) works with it. log_softmax
    leaves log-probabilities as they are, so a model that ends in log_softmax itself
    gets the same loss."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(F.log_softmax(outputs, dim=1), targets)
