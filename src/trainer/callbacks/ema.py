"""An exponential moving average (EMA) of the weights, used for validation, best.pt and
the test: `callbacks=[ema]`."""

from __future__ import annotations

from typing import Any

import torch

from src.trainer.callbacks import Callback


class EMA(Callback):
    """After every optimizer step, `average = decay * average + (1 - decay) * weights`.

    The average is what the run validates, keeps as best.pt and tests; training itself
    goes on with the raw weights. So a checkpoint saved at the end of an epoch holds the
    average as its `model` (what test.py and any user of the file get) and the raw
    weights in this callback's state, from which a resumed run continues bitwise.
    Buffers (batch-norm statistics) are not averaged: validation uses the model's own.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            from src.utils.errors import UserError

            raise UserError(f"Invalid value callbacks.ema.decay={decay!r}: expected a number between 0 and 1, e.g. 0.999.")
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None
        self.raw: dict[str, torch.Tensor] | None = None  # the training weights while the average is swapped in
        self.updated_at_step = -1

    def on_fit_start(self, trainer: Any) -> None:
        if self.average is None:
            self.average = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        self.updated_at_step = trainer.step

    def on_train_epoch_start(self, trainer: Any) -> None:
        if self.raw is not None:  # back to the training weights
            _copy_into(trainer.model, self.raw)
            self.raw = None

    on_train_continue = on_train_epoch_start  # after a validation inside an epoch

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Any, batch_index: int, loss: Any) -> None:
        if trainer.step == self.updated_at_step:  # inside an accumulation window: no step yet
            return
        self.updated_at_step = trainer.step
        for name, p in trainer.model.named_parameters():
            self.average[name].lerp_(p.detach(), 1.0 - self.decay)  # type: ignore[index]

    def on_validation_start(self, trainer: Any) -> None:
        self.raw = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        _copy_into(trainer.model, self.average)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "average": self.average, "raw": self.raw, "updated_at_step": self.updated_at_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average, self.raw, self.updated_at_step = state["average"], state["raw"], state["updated_at_step"]


@torch.no_grad()
def _copy_into(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        p.copy_(weights[name])
