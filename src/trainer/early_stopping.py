from __future__ import annotations

import math
from typing import Any


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode` (min/max)."""
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping:
    """Stop after `patience` validations (epoch ends, and every `val_every_n_steps`
    steps) without an improvement of more than `min_delta`.

    `patience=0` disables it. The state is saved in checkpoints so that a resumed run
    stops at the same epoch as an uninterrupted one.
    """

    def __init__(self, mode: str, patience: int, min_delta: float) -> None:
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def update(self, value: float) -> bool:
        """Record one validation's monitored value; True when training should stop."""
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.wait >= self.patience

    def why(self, monitor: str) -> str:
        """Why training stopped, in words (`monitor`: the metric's name)."""
        return f"{monitor} has not improved by more than {self.min_delta} for {self.patience} validations"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]
