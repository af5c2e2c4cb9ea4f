"""A model the framework has never heard of: any nn.Module works."""

from torch import nn


class TinyNet(nn.Module):
    """A small convnet for the bars: its 3x3 filters tell a horizontal edge from a
    vertical one, a global max pool asks whether one occurs anywhere in the image, and
    a linear layer weighs the answers. (A bar at any row or column is not linearly
    separable in pixel space: a one-hidden-layer MLP stays near chance here.)"""

    def __init__(self, input_shape: list[int], num_outputs: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(input_shape[0], width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(width, num_outputs),
        )

    def forward(self, x):
        return self.net(x)
