"""Stochastic weight averaging (torch.optim.swa_utils): `callbacks=[swa]`."""

from __future__ import annotations

import logging
from typing import Any

from torch.optim.swa_utils import AveragedModel, update_bn

from src.trainer.callbacks import Callback

log = logging.getLogger(__name__)


class SWA(Callback):
    """Average the weights at the end of every epoch from `start_epoch` on (an equal
    average, as in Izmailov et al.); at the end of training, recompute the batch-norm
    statistics of the averaged model over the training data, validate it, and save it
    as `checkpoints/swa.pt` (evaluate it with `python test.py checkpoint=.../swa.pt`).
    Training, best.pt and last.pt are those of the raw weights, as without SWA."""

    def __init__(self, start_epoch: int = 1) -> None:
        if not isinstance(start_epoch, int) or start_epoch < 1:
            from src.utils.errors import UserError

            raise UserError(f"Invalid value callbacks.swa.start_epoch={start_epoch!r}: expected a positive integer (the first epoch to average).")
        self.start_epoch = start_epoch
        self.averaged: AveragedModel | None = None
        self._pending: dict[str, Any] | None = None  # a resumed state, loaded once the model is known

    def on_fit_start(self, trainer: Any) -> None:
        self.averaged = AveragedModel(trainer.model)
        if self._pending is not None:
            self.averaged.load_state_dict(self._pending)
            self._pending = None

    def on_train_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if trainer.epoch + 1 >= self.start_epoch:  # trainer.epoch counts completed epochs: this one is epoch + 1
            self.averaged.update_parameters(trainer.model)  # type: ignore[union-attr]

    def on_fit_end(self, trainer: Any) -> None:
        averaged = self.averaged
        if averaged is None or int(averaged.n_averaged) == 0:
            log.warning(f"SWA: no epoch reached callbacks.swa.start_epoch={self.start_epoch}; no swa.pt was written.")
            return
        batches = trainer.data.train
        batches.set_epoch(trainer.epoch)
        update_bn((inputs for inputs, _ in batches), averaged.module, device=trainer.device)
        metrics = trainer.validate(averaged.module)
        state = trainer.state_dict()
        state["model"] = averaged.module.state_dict()
        trainer.checkpoints.write(state, trainer.checkpoint_dir / "swa.pt")
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info(f"SWA of {int(averaged.n_averaged)} epochs saved to {trainer.checkpoint_dir / 'swa.pt'}" + (f": {shown}" if shown else ""))

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict() if self.averaged is not None else self._pending or {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state or None
