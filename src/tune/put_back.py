"""Trying steps that must leave no trace: the tuners train on the run's own model and
optimizer, then put them back."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from src.utils.seed import rng_state, set_rng_state


@contextmanager
def put_back(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """On leaving, the model's weights and buffers, the optimizer's state and learning
    rates, and every random number generator are as they were on entering; so a run
    after a tuner trains exactly as it would have without it."""
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer_state, rng, training = copy.deepcopy(optimizer.state_dict()), rng_state(), model.training
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.zero_grad(set_to_none=True)
        optimizer.load_state_dict(optimizer_state)
        set_rng_state(rng)
        model.train(training)
