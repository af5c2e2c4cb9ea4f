"""The one exception type for bad user input, and how the entry points report it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (a config value, a file, a checkpoint).

    The message must name the bad value and say what would be accepted; the entry
    points print it as one paragraph, without a traceback, and exit with code 2.
    """


@contextmanager
def exit_on_user_error(run_dir: Path) -> Iterator[None]:
    """Turn a UserError into a one-paragraph message and exit code 2.

    A run folder that holds no checkpoint yet is deleted, so bad input never leaves a
    half-written run behind.
    """
    try:
        yield
    except UserError as err:
        from src.utils.console import report_error

        report_error(str(err))
        if run_dir.is_dir() and not any((run_dir / "checkpoints").glob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                run_dir.parent.rmdir()  # the run name's folder, when this was its only run
            except OSError:
                pass
        raise SystemExit(2) from None
