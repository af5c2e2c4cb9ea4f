"""The seeded random splits of a dataset: validation out of training, test out of a
file or folder that has no test split of its own."""

from __future__ import annotations

import torch


def seeded_split(num_samples: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices of `range(num_samples)`: a random `fraction` of them,
    rounded, is held out; the same `seed` always holds out the same samples."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    held_out = int(round(num_samples * fraction))
    return order[held_out:], order[:held_out]
