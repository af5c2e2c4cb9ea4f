"""The training loss, read back from the device only when the loop syncs anyway."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from src.utils import distributed


class PendingLosses:
    """Each step's loss tensor, kept (not read) until the loop syncs anyway: every
    `log_every_n_steps`, before a checkpoint and at the epoch's end. Then one transfer
    gives the logged mean and the exact batch of any NaN. Under torchrun the losses are
    averaged over the ranks first, so every rank sees the same values and stops at the
    same NaN."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def mean(self, newest_batch: int, non_finite: Callable[[float, int], Exception]) -> float:
        """Read the pending losses back at once (the newest is batch `newest_batch`'s):
        raise `non_finite(value, batch)` for the first nan or inf, else their mean (nan
        when none is pending)."""
        if not self.losses:
            return math.nan
        values = self.read()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise non_finite(value, newest_batch - len(values) + 1 + i)
        return sum(values) / len(values)

    def read(self) -> list[float]:
        """The losses added since the last read, oldest first; empties the list."""
        world_size = distributed.rank_and_world_size()[1]
        losses = torch.stack(self.losses)
        values = (distributed.sum_across_ranks(losses) / world_size if world_size > 1 else losses).tolist()
        self.losses.clear()
        return values
