"""One pass of a model over a split's batches, in eval mode, summing its metrics."""

from __future__ import annotations

import torch

from src.data.builder import Batches
from src.trainer.forward import ForwardPass
from src.trainer.progress import NoProgress
from src.trainer.signals import StopRequest
from src.trainer.tasks import Metrics
from src.utils.seed import rng_state, set_rng_state


@torch.inference_mode()
def evaluate(
    forward: ForwardPass, batches: Batches, metrics: Metrics, stop: StopRequest | None = None, progress: NoProgress | None = None
) -> Metrics:
    """Run `forward` over every batch once and add each batch to `metrics`; when `stop`
    receives a signal, return after the current batch. `progress` advances per batch.

    The model's mode (train or eval) and the global random numbers are left as they
    were: a validation inside a training epoch changes nothing the training draws (a
    DataLoader draws a seed from them per pass)."""
    training, random_state = forward.model.training, rng_state()
    forward.model.eval()
    batches.set_epoch(0)
    for inputs, targets in batches:
        if stop is not None and stop.signum:
            break
        outputs, loss = forward(inputs, targets)
        metrics.update(outputs, targets, loss)
        if progress is not None:
            progress.advance()
    forward.model.train(training)
    set_rng_state(random_state)
    return metrics
