"""Per-epoch progress bars: rich (default), tqdm or none.

No bar is drawn when stdout is not a terminal; the trainer's per-epoch log lines are
then the whole record.
"""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from src.utils.console import console


class NoProgress:
    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, description: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self) -> None:
        pass

    def show_loss(self, loss: float) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress(NoProgress):
    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
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

    def start(self, description: str, total: int, completed: int = 0) -> None:
        self.task = self.progress.add_task(description, total=total, completed=completed, loss="")

    def advance(self) -> None:
        self.progress.advance(self.task)

    def show_loss(self, loss: float) -> None:
        self.progress.update(self.task, loss=f"loss {loss:.4f}")

    def stop(self) -> None:
        self.progress.remove_task(self.task)


class TqdmProgress(NoProgress):
    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=completed, desc=description, leave=False, dynamic_ncols=True)

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
