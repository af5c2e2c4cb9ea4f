"""SIGINT/SIGTERM (and SLURM's SIGUSR2 warning) during training: finish the step,
save, exit; a second signal quits at once."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """While active, the first SIGINT, SIGTERM or SIGUSR2 only sets `signum`; the
    training loop checks it after every step, saves a checkpoint and stops. A second
    Ctrl-C ends the process immediately (exit 130) without touching any file. A
    repeated SIGTERM or SIGUSR2 changes nothing: schedulers and torchrun may deliver
    the same stop twice (to the whole job and again through torchrun), and follow up
    with SIGKILL after their grace period anyway.

    SIGUSR2 is what SLURM sends ahead of a time limit or preemption (sbatch --signal),
    and what submitit listens for to requeue a job: `pass_on()` hands the signal to
    the handler that was installed before, once the checkpoint is safe on disk."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ())

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def pass_on(self) -> None:
        """Call the Python handler the received signal had before training began (e.g.
        submitit's, which requeues the job), if there was one other than Ctrl-C's
        KeyboardInterrupt."""
        previous = self._previous.get(self.signum) if self.signum else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                os._exit(128 + signum)
            return
        self.signum = signum


# How a run stopped by one of those signals exits: 128 + the signal's number, as a shell
# reports a process that a signal ended. A sweep stops on these rather than going on.
STOP_EXIT_CODES = frozenset(128 + int(s) for s in StopRequest.SIGNALS)
