"""How bad input and deliberate stops reach the user: a paragraph and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from src.utils.run_folder import RunFolder


class UserError(Exception):
    """Bad input from the user (a config value, a file, a checkpoint).

    The message must name the bad value and say what would be accepted; the entry
    points print it as one paragraph, without a traceback, and exit with code 2.
    """


class RunStopped(Exception):
    """Training stopped before its end on purpose (a signal, a non-finite loss).

    The run folder and its checkpoints are kept; the process exits with `exit_code`.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        # Set once the run has written metrics.json for this stop (with its history).
        self.recorded = False


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message as one line without a final period, to quote in a sentence."""
    text = " ".join(str(err).split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def exit_on_user_error(folder: RunFolder, output_subdir: str | None = None) -> Iterator[None]:
    """Turn a UserError or RunStopped into a message and an exit code.

    After a UserError, what this command created in its run `folder` is removed (see
    `RunFolder.remove_what_this_run_created`), so bad input never leaves a half-written
    run behind and never touches what was there before.
    """
    from src.utils.console import report_error
    from src.utils.distributed import is_rank_zero

    try:
        yield
    except RunStopped as stop:
        report_error(str(stop), prefix="Stopped:")
        raise SystemExit(stop.exit_code) from None
    except UserError as err:
        report_error(str(err))
        if is_rank_zero():  # under torchrun, rank 0 tidies up
            folder.remove_what_this_run_created(output_subdir)
        raise SystemExit(2) from None
