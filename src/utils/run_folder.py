"""The run folder: claimed once, what this command created in it, one writer at a time.

A new run or sweep folder is claimed before Hydra uses it (`RunFolderCallback`), so
the Hydra resolvers that name it stay pure. A run may write into a folder that existed before the command: a resumed run's own
folder, or one the user named (`hydra.run.dir=.`). So the folder is looked at before
Hydra creates or writes anything (`RunFolderCallback`), and after an early error only
what this command created is removed; nothing that was there before is touched.

While a run writes, it holds an OS lock on `<run folder>/.lock` (fcntl.flock). A second
process that wants to write there (a second `resume=` of the same run) is refused,
with the first one named. The kernel drops the lock when its process ends, by
`kill -9` too, so no stale lock can outlive a run.
"""

from __future__ import annotations

import fcntl
import fnmatch
import itertools
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src.utils.config import resume_folder, shared_override_keys
from src.utils.distributed import broadcast, is_rank_zero
from src.utils.errors import UserError

LOCK_NAME = ".lock"
# Everything a run or an evaluation writes at the top of its folder. Only these names
# are ever removed, and only when this command created them.
RUN_ENTRIES = (
    ".hydra", LOCK_NAME, "train.log", "test.log", "predict.log", "export.log",
    "checkpoints", "profiler", "metrics.json", "metrics.csv", "predictions.csv", "wandb",
)
# TensorBoard's event files, named by their time, host and process.
RUN_ENTRY_PATTERNS = ("events.out.tfevents.*",)

# Folders this process claimed for a run, with the ancestors it created for them.
_claimed: dict[str, list[str]] = {}
# The folder `RunFolderCallback` looked at before Hydra wrote anything.
_recorded: RunFolder | None = None


def missing_ancestors(path: Path) -> list[str]:
    """`path` and those of its parents that do not exist yet, innermost first: what
    `path.mkdir(parents=True)` would create."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(os.path.abspath(folder))
    return missing


def claim(candidate: str) -> str:
    """Create a new folder named `candidate`, or `candidate_1`, `candidate_2`, ... when
    another process took that name first (two runs started in the same second)."""
    for n in itertools.count():
        name = candidate if n == 0 else f"{candidate}_{n}"
        created = missing_ancestors(Path(name))
        try:
            Path(name).mkdir(parents=True)
        except FileExistsError:
            continue
        _claimed[os.path.abspath(name)] = created  # an early error may remove it: this process made it
        return name
    raise AssertionError("unreachable")


@dataclass
class RunFolder:
    """A run folder as it was before this command wrote there."""

    path: Path
    # Folders this command creates for the run, innermost first ([] when it existed).
    created: list[str]
    entries_before: frozenset[str]
    hydra_entries_before: frozenset[str]
    _lock: Any = field(default=None, repr=False)

    @classmethod
    def look_at(cls, path: str | Path) -> RunFolder:
        absolute = os.path.abspath(path)
        created = _claimed[absolute] if absolute in _claimed else missing_ancestors(Path(absolute))
        folder = Path(absolute)
        return cls(folder, created, _names(folder) if not created else frozenset(), _names(folder / ".hydra"))

    @property
    def is_new(self) -> bool:
        return bool(self.created)

    def check_usable(self, resuming: bool) -> None:
        """A clear error, before Hydra writes anything, for a folder that cannot be this
        command's: a file (or a path under one), one that is not writable, or, unless this
        is a resume of the run that lives there, one that already holds a run's files,
        which this command would overwrite."""
        existing = next(folder for folder in [self.path, *self.path.parents] if folder.exists())
        if not existing.is_dir():
            raise UserError(f"hydra.run.dir={str(self.path)!r}: {str(existing)!r} is a file, not a folder. Name a folder (new or existing) for the output.")
        taken = sorted(name for name in self.entries_before if _is_run_entry(name))
        if taken and not resuming:
            raise UserError(
                f"hydra.run.dir={str(self.path)!r} already holds a run's files ({', '.join(taken)}), which this command "
                f"would overwrite. Name a new or empty folder, or leave hydra.run.dir to its default (a new folder under "
                f"saved/); to continue that run, resume it: resume=<that folder>/checkpoints/last.pt."
            )
        if not self.is_new and not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(
                f"The run folder {str(self.path)!r} is not writable: this command writes its config snapshot, log and "
                f"checkpoints there (a resumed run continues in its own folder). Make it writable, or copy the run "
                f"folder to a writable place and resume from the copy."
            )

    def lock(self) -> None:
        """Hold the run folder's lock until this process ends; refuse if another holds it."""
        path = self.path / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"Cannot write to the run folder {str(self.path)!r}: {err.strerror}. Make it writable, or choose another folder.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"The run folder {str(self.path)!r} is in use by {holder}. Two processes writing one run would "
                f"overwrite each other's checkpoints and logs: wait for that one to finish, or stop it (Ctrl-C saves "
                f"a checkpoint), then resume."
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} (started {started}: {' '.join(sys.argv)})\n".encode())
        self._lock = fd  # kept open: closing it would release the lock

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def remove_what_this_run_created(self, output_subdir: str | None) -> None:
        """After an early error: remove what this command created, unless it already
        wrote a checkpoint. Without the lock, another process may be writing here, so
        only this command's own config snapshot (`output_subdir`) is removed."""
        if any((self.path / "checkpoints").glob("*.pt")) and "checkpoints" not in self.entries_before:
            return
        holds_lock = self._lock is not None
        if self.is_new and holds_lock:
            shutil.rmtree(self.path, ignore_errors=True)
            for folder in self.created[1:]:  # the parents created for it, if nothing else arrived there
                try:
                    os.rmdir(folder)
                except OSError:
                    break
            return
        if holds_lock:
            for name in set(_names(self.path)) - self.entries_before:
                if _is_run_entry(name):
                    _remove(self.path / name)
        snapshot = Path(output_subdir) if output_subdir else None
        if snapshot is not None and snapshot.parent == Path(".hydra") and snapshot.name not in self.hydra_entries_before:
            _remove(self.path / snapshot)  # a resume's own config snapshot, .hydra/resume_<time>


def is_locked(folder: Path) -> bool:
    """Whether a process holds `folder`'s run lock now (a job still running)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def recorded(path: str | Path) -> RunFolder:
    """The folder as `RunFolderCallback` saw it before Hydra wrote there; for a folder
    it did not see (a sweep's job), the folder as it is now, so nothing in it counts
    as created by this command."""
    if _recorded is not None and _recorded.path == Path(os.path.abspath(path)):
        return _recorded
    folder = Path(os.path.abspath(path))
    return RunFolder(folder, [], _names(folder), _names(folder / ".hydra"))


class RunFolderCallback(Callback):
    """Hydra callback: claim a new run or sweep folder, and look at the run folder
    before Hydra creates or writes anything there.

    The resolvers in configs/hydra/default.yaml only name `<base>/<start time>`; here,
    before Hydra uses it, that folder is created atomically (with a suffix when another
    process took the name) and written back into the config, so every later reader
    (Hydra, launchers, their job processes) sees the one folder this process owns.
    Under torchrun, rank 0 claims it and the other ranks hear its name."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _recorded
        HydraConfig.instance().set_config(config)  # what run_job does first: ${hydra:...} resolves
        with _reported():
            check_run_name(OmegaConf.select(config, "name", default=None))
            if _is_default(config.hydra.run, "dir", "run_dir") and resume_folder(config.get("resume")) is None:
                _set(config.hydra.run, "dir", _claim_on_rank_zero(str(config.hydra.run.dir)))
            _recorded = RunFolder.look_at(str(config.hydra.run.dir))
            if is_rank_zero():
                _recorded.check_usable(resuming=resume_folder(config.get("resume")) is not None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        with _reported():
            if _is_default(config.hydra.sweep, "dir", "sweep_dir") and not OmegaConf.select(config, "sweep.resume"):
                claimed = claim(str(config.hydra.sweep.dir))
                _set(config.hydra.sweep, "dir", claimed)
                # Launchers compose each job's config again from the command line and
                # these overrides (joblib and submitit in other processes): they must name
                # the claimed folder, not resolve a new one.
                with read_write(config.hydra.overrides):
                    config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(claimed)}")
            else:  # a sweep folder given by path, new or continued: sweepers may open files there at once
                sweep = Path(str(config.hydra.sweep.dir))
                if sweep.exists() and not sweep.is_dir():
                    raise UserError(f"hydra.sweep.dir={str(sweep)!r} is a file, not a folder: name a folder for the sweep.")
                sweep.mkdir(parents=True, exist_ok=True)
            _name_jobs_by_what_differs(config)


def _name_jobs_by_what_differs(config: DictConfig) -> None:
    """Leave the overrides every job of the sweep shares (`data=mnist` in `-m
    model=mlp,cnn data=mnist`) out of the job folders' names, which then say what sets
    each job apart (`0_model=mlp`). Launchers compose each job's config again from
    these overrides, as for the sweep folder."""
    shared = shared_override_keys(list(config.hydra.overrides.task))
    if not shared:
        return
    naming = config.hydra.job.config.override_dirname
    keys = [*naming.exclude_keys, *(key for key in shared if key not in naming.exclude_keys)]
    _set(naming, "exclude_keys", keys)
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(map(quoted, keys))}]")


def _claim_on_rank_zero(candidate: str) -> str:
    return broadcast(claim(candidate) if is_rank_zero() else None)


def _is_default(node: DictConfig, key: str, resolver: str) -> bool:
    """Whether `node.key` is still the `${resolver:...}` of configs/hydra/default.yaml,
    not a folder the user named."""
    raw = OmegaConf.to_container(node, resolve=False)[key]  # type: ignore[index]
    return isinstance(raw, str) and raw.startswith("${" + resolver + ":")


def quoted(value: str) -> str:
    """`value` as one quoted string in Hydra's override grammar."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _set(node: DictConfig, key: str, value: str) -> None:
    with read_write(node), open_dict(node):
        node[key] = value


@contextmanager
def _reported() -> Iterator[None]:
    """A UserError in a Hydra callback: one paragraph and exit 2 (Hydra would print a traceback)."""
    try:
        yield
    except UserError as err:
        from src.utils.console import report_error

        report_error(str(err))
        raise SystemExit(2) from None


def check_run_name(name: Any) -> None:
    """`name` becomes one folder under saved/runs/: never a path that leaves it."""
    if name is None:
        return
    text = str(name)
    if text in ("", ".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise UserError(f"Invalid value name={text!r}: expected a folder name (no '/', not '.' or '..'); runs go to saved/runs/<name>/<time>/.")


def _is_run_entry(name: str) -> bool:
    """Whether `name`, at the top of a run folder, is something a run writes there."""
    return name in RUN_ENTRIES or any(fnmatch.fnmatch(name, pattern) for pattern in RUN_ENTRY_PATTERNS)


def _names(folder: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
