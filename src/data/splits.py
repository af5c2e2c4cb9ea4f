"""The seeded random splits of a dataset: validation out of training (a fraction, or
one fold of K), test out of a file or folder that has no test split of its own."""

from __future__ import annotations

import torch


def seeded_split(num_samples: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices of `range(num_samples)`: a random `fraction` of them,
    rounded, is held out; the same `seed` always holds out the same samples."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    held_out = int(round(num_samples * fraction))
    return order[held_out:], order[:held_out]


def kfold_split(num_samples: int, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices of `range(num_samples)` for fold `fold` of a seeded
    `folds`-way split: the folds are disjoint, together hold every sample, and differ in
    size by at most one. The same `seed` gives the same folds for every `fold`."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, folds)
    return torch.cat([part for i, part in enumerate(parts) if i != fold]), parts[fold]
