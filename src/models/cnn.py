from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from src.models.layers import activation as make_activation


class CNN(nn.Module):
    """A small LeNet-style convnet for image classification.

    Each entry of `channels` adds Conv3x3 -> MaxPool(2) -> BatchNorm -> activation
    (pooling first: normalising a quarter of the activations is much cheaper); the
    flattened features go through one hidden Linear layer to the classifier.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 128,
        activation: str = "ReLU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = input_shape[0]
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(out_channels),
                make_activation(activation),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():  # the flattened size follows from one dry pass
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        head: list[nn.Module] = [
            nn.Flatten(),
            nn.Linear(flat, hidden_size),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_outputs),
        ]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
