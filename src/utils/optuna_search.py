"""An Optuna search: its search space from Hydra's sweep grammar, its study, sampler and pruner.

Used by the sweeper (hydra_plugins/hydra_torch_trainer/optuna_sweeper.py), which asks
the study for trials and runs them as jobs, and by the pruning callback
(src/trainer/callbacks/optuna_pruning.py), which reports each epoch of one trial.
Both reach the study through its storage, so jobs in other processes (a second sweep
on the same study, the joblib launcher) take part in the same search.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from src.utils.errors import UserError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "hyperband", "none")
DIRECTIONS = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}
# The study's file in the sweep folder, and the lock that makes asking for trials one at a time.
STORAGE_NAME = "optuna.db"
LOCK_NAME = ".optuna.lock"
# The name under `callbacks` of the pruning callback the sweeper gives every trial.
PRUNING_CALLBACK = "optuna_pruning"


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: the override key that sets it (`+model.width`), and
    its Optuna distribution."""

    key: str
    distribution: Any

    def override(self, value: Any) -> str:
        return f"{self.key}={value}"


def search_space(overrides: list[str]) -> tuple[dict[str, Param], list[str]]:
    """The searched parameters (by name) and the fixed overrides every trial gets, from
    overrides in Hydra's sweep grammar:

        interval(a, b)            a float in [a, b]
        tag(log, interval(a, b))  the same, sampled on a log scale
        range(a, b[, step])       an integer in a, a+step, ... below b
        choice(x, y, ...) or x,y  one of the values (lists and strings too)
    """
    import optuna

    params: dict[str, Param] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
        elif override.is_interval_sweep():
            sweep = override.value()
            params[override.key_or_group] = Param(key, optuna.distributions.FloatDistribution(sweep.start, sweep.end, log="log" in sweep.tags))
        elif override.is_range_sweep() and not override.value().shuffle and _all_ints(override):
            values = [int(v) for v in override.sweep_string_iterator()]
            step = values[1] - values[0] if len(values) > 1 else 1
            params[override.key_or_group] = Param(key, optuna.distributions.IntDistribution(min(values), max(values), step=abs(step)))
        elif override.is_discrete_sweep():  # choice(...), a,b, or a range of floats
            params[override.key_or_group] = Param(key, optuna.distributions.CategoricalDistribution(list(override.sweep_string_iterator())))
        else:
            raise UserError(f"{override.input_line!r}: an Optuna search takes interval(...), tag(log, interval(...)), range(...) or choice(...).")
    return params, fixed


def _all_ints(override: Override) -> bool:
    sweep = override.value()
    return all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))


def check_settings(sampler: str, pruner: str, direction: str, n_trials: Any, n_jobs: Any, startup_trials: Any, percentile: Any) -> None:
    """A clear error for a sweeper setting with no meaning."""
    for key, value, accepted in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS), ("direction", direction, tuple(DIRECTIONS))):
        if value not in accepted:
            raise UserError(f"Invalid value hydra.sweeper.{key}={value!r}: expected one of {', '.join(accepted)}.")
    for key, value, minimum in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1), ("startup_trials", startup_trials, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"Invalid value hydra.sweeper.{key}={value!r}: expected an integer of at least {minimum}.")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile < 100:
        raise UserError(f"Invalid value hydra.sweeper.percentile={percentile!r}: expected a number between 0 and 100 (the share of trials kept, in percent).")


def default_storage(sweep_dir: Path) -> str:
    """The study's SQLite file in the sweep folder, by absolute path: jobs may run elsewhere."""
    return f"sqlite:///{(sweep_dir / STORAGE_NAME).resolve()}"


def open_storage(url: str) -> Any:
    """The study's storage. Several processes write to one SQLite file: each waits for
    the others' short writes instead of failing at once on a locked database."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` storage URL; None for other storages."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def make_sampler(name: str, seed: int | None) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int | None, startup_trials: int, percentile: float) -> Any:
    """Median: stop a trial whose metric after an epoch is worse than the median of the
    finished trials' at that epoch, once `startup_trials` trials have finished.
    Percentile: the same, keeping only trials in the best `percentile` percent.
    Hyperband: successive halving over 1 to `epochs` epochs (learned from the first
    trials when a run is bounded by steps instead: `epochs` None). None: never stop a trial."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1) if epochs else "auto")
    return optuna.pruners.NopPruner()


def pruning_override(name: str, storage: str, study: str, trial: int, pruner: str, startup_trials: int, percentile: float) -> str:
    """The override that gives one job the pruning callback, naming its study and trial."""
    from src.utils.run_folder import quoted

    target = "src.trainer.callbacks.optuna_pruning.OptunaPruning"
    return f"++callbacks.{name}={{_target_:{target},storage:{quoted(storage)},study:{quoted(study)},trial:{trial},pruner:{pruner},startup_trials:{startup_trials},percentile:{percentile}}}"


def is_pruning_override(override: str) -> bool:
    return override.lstrip("+").startswith(f"callbacks.{PRUNING_CALLBACK}=")


@contextmanager
def asking(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep folder's lock while counting trials and asking for new ones, so
    that processes sharing a study never start more than `n_trials` between them (an
    OS lock: the kernel drops it when its process ends)."""
    fd = os.open(sweep_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
