from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from src.models.layers import activation as make_activation


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> Dropout] per hidden size -> Linear.

    `num_outputs` is the number of classes, or of regression targets."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden_sizes: Sequence[int] = (256, 128),
        activation: str = "ReLU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), make_activation(activation), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
