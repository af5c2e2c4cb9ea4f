"""Terminal output: one rich console, log lines, and a plain-text mirror in train.log.

Log lines go through `logging` (rich-formatted on a terminal, plain lines otherwise, so
logs redirected to a file stay readable). Tables and trees go through `show()`, which
prints them to the terminal and appends their plain-text rendering to the log file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.text import Text

from src.utils.distributed import is_rank_zero
from src.utils.errors import RunStopped, UserError

console = Console()
if not console.is_terminal:  # a log file or pipe: no need to wrap at 80 columns
    console.width = 160
error_console = Console(stderr=True)

_log_file: Path | None = None
_handlers: list[logging.Handler] = []

FILE_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"


def setup_logging(log_file: Path | None) -> None:
    """Send INFO and above to the terminal and, when given, to `log_file` (appended)."""
    global _log_file
    close_logging()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not is_rank_zero():  # under torchrun, rank 0 speaks for the run; the others only report errors
        root.setLevel(logging.ERROR)
        log_file = None
    if console.is_terminal:
        term: logging.Handler = RichHandler(console=console, show_path=False, log_time_format="[%X]")
    else:
        term = logging.StreamHandler(sys.stdout)
        term.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _handlers.append(term)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setFormatter(logging.Formatter(FILE_FORMAT))
        _handlers.append(file)
        _log_file = log_file
    for handler in _handlers:
        root.addHandler(handler)


@contextmanager
def logging_to(log_file: Path) -> Iterator[None]:
    """`setup_logging(log_file)` for the duration of a run, then detach the handlers."""
    setup_logging(log_file)
    try:
        yield
    except (UserError, RunStopped) as err:  # printed as a paragraph by the entry point: the log file keeps it too
        _write_to_log_file(f"{'Stopped' if isinstance(err, RunStopped) else 'Error'}: {err}", logging.ERROR)
        raise
    finally:
        close_logging()


def _write_to_log_file(message: str, level: int) -> None:
    """One line in the log file only; a log file that cannot be written (a full disk) is left as it is."""
    for handler in _handlers:
        if isinstance(handler, logging.FileHandler):
            record = logging.LogRecord("src", level, __file__, 0, message, None, None)
            try:
                with open(handler.baseFilename, "a", encoding="utf-8") as f:
                    f.write(handler.format(record) + "\n")
            except OSError:
                pass


def close_logging() -> None:
    """Detach and close the handlers `setup_logging` added (one sweep runs many jobs)."""
    global _log_file
    root = logging.getLogger()
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    _handlers.clear()
    _log_file = None


def show(renderable: RenderableType) -> None:
    """Print a rich renderable (table, tree) and mirror it as plain text in the log file."""
    if not is_rank_zero():
        return
    console.print(renderable)
    if _log_file is not None:
        with open(_log_file, "a", encoding="utf-8") as f:
            Console(file=f, width=120, color_system=None, force_terminal=False).print(renderable)


def report_error(message: str, prefix: str = "Error:") -> None:
    if not is_rank_zero():  # every rank of a torchrun group stops with the same message
        return
    # Text, not markup: messages quote values like [1, 28, 28] that must print as they are.
    error_console.print(Text.assemble((prefix, "bold red"), " ", message), soft_wrap=True)
