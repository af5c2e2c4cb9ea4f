"""A training batch's forward and backward passes, and what happens when they run out
of memory: the batch is split into micro-batches whose gradients are summed, so that
the run goes on from the same step with the same samples and the same effective batch.

The loop keeps counting the batches the data yields: its accumulation window, the
mid-epoch position a checkpoint records and the data order stay as they were. Only
the number of pieces a batch runs in doubles, which is the same as halving the
micro-batch and doubling `trainer.accumulate_grad_batches` from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from src.trainer.forward import ForwardPass
from src.utils.errors import RunStopped, one_line

log = logging.getLogger(__name__)


class MicroBatches:
    """`__call__` runs one batch's forward and backward; after a `torch.OutOfMemoryError`
    it frees the failed attempt's memory and runs the batch again in twice as many
    pieces, for the rest of the run.

    Each piece's loss is weighted by its share of the batch's samples, so the summed
    gradient is the one the whole batch gives (for losses that average over samples,
    as all of the shipped ones do). A retry puts the random number generator back first:
    dropout then draws exactly what a run with the smaller batches from the start draws.
    Batch-norm running statistics keep the update of the failed forward, which does not
    change any gradient.

    `backward(loss, batch)` is the trainer's own (gradient scaling, anomaly reports).
    `enabled=False` leaves an out-of-memory error to stop the run, as without this
    class: the trainer's choice under torchrun (where the ranks' gradient syncs must
    stay in step) and on the CPU (see `recovers_on`).
    """

    def __init__(
        self,
        forward: ForwardPass,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor, int], None],
        device: torch.device,
        enabled: bool = True,
    ) -> None:
        self.forward, self.optimizer, self.backward = forward, optimizer, backward
        self.device, self.enabled = device, enabled
        self.pieces = 1  # each batch runs in this many micro-batches
        self.summing = False  # this batch's gradient has started to reach `.grad`
        self.get_rng, self.set_rng = _rng_of(device)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, first_of_window: bool, accumulate: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, loss) of batch number `batch`, its gradient (divided by `accumulate`)
        added to the parameters' `.grad`; `first_of_window`: the gradients are cleared first."""
        rng = self.get_rng() if self.enabled else None
        while True:
            self.summing = False
            try:
                return self._run(inputs, targets, first_of_window, accumulate, batch)
            except torch.OutOfMemoryError as err:
                if rng is None:
                    raise
                reason = one_line(err, limit=160)
            # Out of the except block: the error's traceback, and the activations it
            # holds on to, are gone.
            self._recover(len(targets), first_of_window, reason, batch)
            self.set_rng(rng)

    def _run(self, inputs: torch.Tensor, targets: torch.Tensor, first_of_window: bool, accumulate: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pieces == 1:
            outputs, loss = self.forward(inputs, targets)
            if first_of_window:
                # Cleared right before the window's first backward, as in the classic
                # loop: clearing right after the step instead lets the next forward
                # reuse the gradients' memory, which costs on CPU convnets.
                self.optimizer.zero_grad(set_to_none=True)
            self.summing = True
            # Averaging over the accumulated batches makes k batches of n one batch of k*n.
            self.backward(loss if accumulate == 1 else loss / accumulate, batch)
            return outputs, loss
        size = len(targets)
        micro = -(-size // self.pieces)
        outputs, losses = [], []
        for start in range(0, size, micro):
            piece = slice(start, min(start + micro, size))
            piece_outputs, piece_loss = self.forward(inputs[piece], targets[piece])
            if first_of_window and not self.summing:
                self.optimizer.zero_grad(set_to_none=True)
            self.summing = True
            share = (piece.stop - piece.start) / size
            self.backward(piece_loss * (share / accumulate), batch)
            outputs.append(piece_outputs.detach())
            losses.append(piece_loss.detach() * share)
        return torch.cat(outputs), torch.stack(losses).sum()

    def _recover(self, size: int, first_of_window: bool, reason: str, batch: int) -> None:
        """Free the failed attempt's gradients and cached memory and double the pieces;
        a RunStopped when that cannot give the same gradients or smaller pieces."""
        if self.summing and not first_of_window:
            # Part of this batch's gradient may already be in `.grad`, summed with the
            # window's earlier batches: running it again would count that part twice.
            raise RunStopped(
                f"Out of memory in batch {batch + 1} of the epoch ({reason}), after part of its gradient was summed "
                f"with those of earlier batches of its accumulation window: running it again in smaller pieces would "
                f"count that part twice, so the run stops. Start it again with a smaller data.batch_size and a larger "
                f"trainer.accumulate_grad_batches (the same product keeps the effective batch), or "
                f"trainer.precision=bf16-mixed; see the README's section on out-of-memory errors.",
                exit_code=1,
            )
        if first_of_window:
            self.optimizer.zero_grad(set_to_none=True)  # only this batch's partial gradients
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        micro = -(-size // self.pieces)
        if micro <= 1:
            raise RunStopped(
                f"Out of memory in a training step even with one sample per micro-batch ({reason}). The model itself "
                f"(weights, gradients, optimizer state) does not fit: try trainer.precision=bf16-mixed, a smaller "
                f"model, or a device with more memory; see the README's section on out-of-memory errors.",
                exit_code=1,
            )
        self.pieces *= 2
        log.warning(
            f"Out of memory in a training step with micro-batches of {micro} samples (batch {batch + 1} of the epoch: "
            f"{reason}). Going on from the same batch with micro-batches of {-(-size // self.pieces)}: each batch of {size} now runs in "
            f"{self.pieces} pieces whose gradients are summed (accumulated), so the samples per optimizer step stay "
            f"the same. It is as if data.batch_size were halved and trainer.accumulate_grad_batches doubled."
        )


def recovers_on(device: torch.device) -> bool:
    """Whether training on `device` can run out of memory as a `torch.OutOfMemoryError`,
    the error recovery catches. The CPU's allocator raises a plain RuntimeError instead
    (and on Linux the kernel's out-of-memory killer usually strikes first), so there
    recovery would never run, while it reads the random number generator's state before
    every batch, one of the few costs a step has over a hand-written loop."""
    return device.type != "cpu"


def _rng_of(device: torch.device) -> tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]:
    """How to read and set the random number generator that dropout on `device` draws from."""
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda state: torch.cuda.set_rng_state(state, device))
    if device.type == "mps":
        return torch.mps.get_rng_state, torch.mps.set_rng_state
    return torch.get_rng_state, torch.set_rng_state
