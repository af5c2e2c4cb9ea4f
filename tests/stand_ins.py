"""Stand-ins for what the CPU cannot do: a model that runs out of memory like one on a GPU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class OutOfMemoryAbove(nn.Module):
    """A small classifier on a device that holds at most `limit` samples per forward.

    Like a real forward that runs out midway, it draws its dropout first and only then
    raises. With `backward_fails_at=n`, the backward pass of its n-th forward runs out
    of memory instead."""

    def __init__(self, limit: int, input_shape: Sequence[int] = (1, 28, 28), num_outputs: int = 10, backward_fails_at: int | None = None) -> None:
        super().__init__()
        self.limit, self.backward_fails_at = limit, backward_fails_at
        self.dropout = nn.Dropout(0.3)
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)
        self.sizes: list[int] = []  # the batch size of every forward that ran to its end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.flatten(1))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"stand-in: {len(x)} samples do not fit, {self.limit} do")
        self.sizes.append(len(x))
        outputs = self.linear(x)
        return FailingBackward.apply(outputs) if len(self.sizes) == self.backward_fails_at else outputs


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("stand-in: out of memory in the backward pass")
