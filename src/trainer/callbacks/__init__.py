"""Callbacks: your code, called by the loop at named points; the loop never changes.

A callback is any object built from `callbacks.<name>._target_`. It defines only the
hooks it needs; `Callback` lists them all as no-ops, to subclass or to read. The loop
calls them in this order, on every rank under torchrun (so that, say, an average of
the weights stays the same on each); a callback that writes files checks
`trainer.rank_zero`. How often, in one process:

    on_fit_start(trainer)                       once, before the first epoch (after a resume's state is loaded)
    on_train_epoch_start(trainer)               before each epoch, and before the rest of an epoch a resume continues
    on_train_batch_end(trainer, batch_index, loss)   after each training batch; `loss` is its detached
                                                     loss tensor (reading it waits for the device)
    on_train_epoch_end(trainer, metrics)        once per epoch: the epoch's train/* metrics
    on_validation_start(trainer)                once per validation: at an epoch's end, and every
                                                trainer.val_every_n_steps
    on_validation_end(trainer, metrics)         once per validation: the train/* (the epoch so far) and
                                                val/* metrics
    on_checkpoint(trainer, state)               once per save: at the end of each epoch (last.pt, and
                                                best.pt or epoch_NNN.pt when due, hold that one state),
                                                every trainer.save_every_n_steps (or at a validation
                                                inside an epoch), and when a signal stops the run
                                                mid-epoch; `state` is what is about to be written (the
                                                callback may add to it)
    on_train_continue(trainer)                  training goes on inside the epoch after a validation
                                                or a save there (every trainer.*_every_n_steps)
    on_fit_end(trainer)                         once, after the last epoch, before the test (not after a signal)

A callback ends training after the current epoch by setting `trainer.stop_requested` to
the run's status in metrics.json (the Optuna pruning callback sets "pruned") in
`on_validation_end`; that epoch's checkpoints are saved and best.pt is tested as usual.

`state_dict()` and `load_state_dict(state)`, when defined, save the callback's state in
the checkpoint under `callbacks.<name>`, so a resumed run continues it exactly. The
state is taken after `on_checkpoint`, so what that hook changes is in the checkpoint it
announces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

HOOKS = (
    "on_fit_start",
    "on_train_epoch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_start",
    "on_validation_end",
    "on_checkpoint",
    "on_train_continue",
    "on_fit_end",
)


class Callback:
    """Every hook, doing nothing: subclass it and override what you need (optional)."""

    def on_fit_start(self, trainer: Any) -> None: ...
    def on_train_epoch_start(self, trainer: Any) -> None: ...
    def on_train_batch_end(self, trainer: Any, batch_index: int, loss: Any) -> None: ...
    def on_train_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_validation_start(self, trainer: Any) -> None: ...
    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def on_train_continue(self, trainer: Any) -> None: ...
    def on_fit_end(self, trainer: Any) -> None: ...


class Callbacks:
    """The run's callbacks by name; `call(hook, ...)` calls that hook of each callback
    that defines it, in config order."""

    def __init__(self, callbacks: Mapping[str, Any] | None = None) -> None:
        self.named = dict(callbacks or {})
        self._hooks = {hook: [getattr(cb, hook) for cb in self.named.values() if callable(getattr(cb, hook, None))] for hook in HOOKS}

    def call(self, hook: str, *args: Any) -> None:
        for method in self._hooks[hook]:
            method(*args)

    def checkpoint(self, trainer: Any, state: dict[str, Any]) -> dict[str, Any]:
        """Call `on_checkpoint` with the `state` about to be saved, then put each
        callback's state into it: taken after the hook, it holds what the hook changed."""
        self.call("on_checkpoint", trainer, state)
        state["callbacks"] = self.state_dict()
        return state

    def state_dict(self) -> dict[str, Any]:
        return {name: cb.state_dict() for name, cb in self.named.items() if callable(getattr(cb, "state_dict", None))}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        for name, cb in self.named.items():
            if name in states and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(states[name])
            elif callable(getattr(cb, "state_dict", None)):
                log.info(f"callbacks.{name} has no state in the checkpoint: it starts afresh.")
        for name in states.keys() - self.named.keys():
            log.warning(f"The checkpoint holds the state of callbacks.{name}, which this run does not have: it is not used.")
