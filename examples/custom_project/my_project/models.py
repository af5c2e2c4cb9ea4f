"""A model the framework has never heard of: any nn.Module works."""

import math

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape: list[int], num_outputs: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.Tanh(),
            nn.Linear(width, num_outputs),
        )

    def forward(self, x):
        return self.net(x)
