"""Per-epoch progress bars: rich (default), tqdm or none.

No bar is drawn when stdout is not a terminal; the trainer's per-epoch log lines are
then the whole record.
"""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from src.utils.console import console


class NoProgress:
    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, description: str, total: int, completed: int = 0, batch_size: int = 1) -> None:
        """A bar of `total` batches of `batch_size` samples each, `completed` of them done."""

    def advance(self) -> None:
        pass

    def show_loss(self, loss: float) -> None:
        pass

    def stop(self) -> None:
        pass


class SamplesPerSecond(ProgressColumn):
    """The bar's recent speed in samples per second (batches times their size)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed * task.fields['batch_size']:,.0f} samples/s" if speed else "", style="progress.data.speed")


class RichProgress(NoProgress):
    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            SamplesPerSecond(),
            TextColumn("{task.fields[loss]}"),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def start(self, description: str, total: int, completed: int = 0, batch_size: int = 1) -> None:
        self.task = self.progress.add_task(description, total=total, completed=completed, loss="", batch_size=batch_size)

    def advance(self) -> None:
        self.progress.advance(self.task)

    def show_loss(self, loss: float) -> None:
        self.progress.update(self.task, loss=f"loss {loss:.4f}")

    def stop(self) -> None:
        self.progress.remove_task(self.task)


class TqdmProgress(NoProgress):
    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, description: str, total: int, completed: int = 0, batch_size: int = 1) -> None:
        from tqdm import tqdm

        # Counted in batches, so tqdm's own rate reads batch/s.
        self.bar = tqdm(total=total, initial=completed, desc=description, leave=False, dynamic_ncols=True, unit="batch")

    def advance(self) -> None:
        self.bar.update(1)

    def show_loss(self, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def stop(self) -> None:
        self.bar.close()


def make_progress(kind: str) -> NoProgress:
    if kind == "none" or not console.is_terminal:
        return NoProgress()
    return RichProgress() if kind == "rich" else TqdmProgress()
