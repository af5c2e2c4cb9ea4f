"""The Optuna sweeper (`hparams_search=...`): ask the study for trials, run each as a job, tell the result.

Each trial is one job of the sweep, numbered by its trial number, so its folder is
`<sweep folder>/<trial number>_<its overrides>` whichever process runs it. The study
lives in `<sweep folder>/optuna.db` (SQLite): several sweep processes on the same sweep
folder (or with the same `storage`) work on one study, and between them run
`n_trials` trials, none twice. `sweep.resume=<sweep folder>` continues a study; a
trial whose process died is run again in its folder, from its last checkpoint.

With a pruner, every job gets the pruning callback (src/trainer/callbacks/optuna_pruning.py)
through one more override, which names the storage, the study and its trial: the job
reports its monitored metric after every epoch and stops when the pruner says so.

It lives in the `hydra_plugins` namespace because Hydra only loads sweepers from there;
Hydra imports every module of that namespace at start-up, so this one imports optuna
only when a search runs.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        direction: str,
        n_trials: int,
        n_jobs: int = 1,
        sampler: str = "tpe",
        seed: int | None = None,
        pruner: str = "median",
        startup_trials: int = 5,
        percentile: float = 25.0,
        storage: str | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        self.study_name, self.direction, self.n_trials, self.n_jobs = study_name, direction, n_trials, n_jobs
        self.sampler, self.seed, self.pruner, self.storage = sampler, seed, pruner, storage
        self.startup_trials, self.percentile = startup_trials, percentile
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        from src.utils.console import report_error
        from src.utils.errors import UserError

        try:
            return self._sweep(arguments)
        except UserError as err:  # a paragraph and exit 2, as for any bad input
            report_error(str(err))
            raise SystemExit(2) from None

    def _sweep(self, arguments: list[str]) -> list[list[JobReturn]]:
        import optuna

        from src.utils import optuna_search as search

        assert self.config is not None and self.launcher is not None
        search.check_settings(self.sampler, self.pruner, self.direction, self.n_trials, self.n_jobs, self.startup_trials, self.percentile)
        params, fixed = search.search_space([f"{key}={value}" for key, value in self.params.items()] + list(arguments))
        # The folder comes first: a sweep folder named on the command line may not exist yet.
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage or search.default_storage(sweep_dir)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the jobs and the leaderboard say it all
        with search.asking(sweep_dir):  # two processes starting at once create the study once
            study = optuna.create_study(
                study_name=self.study_name, storage=search.open_storage(url), direction=search.DIRECTIONS[self.direction], load_if_exists=True
            )
        self._leave_pruning_out_of_folder_names()
        log.info(f"Optuna study {self.study_name!r} in {url}: {self.n_trials} trials, {self.sampler} sampler, {self.pruner} pruner")

        returns = []
        if OmegaConf.select(self.config, "sweep.resume"):
            for trial in self._abandoned_trials(study, sweep_dir):
                overrides = [*fixed, *(params[name].override(value) for name, value in trial.params.items() if name in params)]
                returns.append(self._run(study, [trial.number], [overrides], url))
        while True:
            with search.asking(sweep_dir):
                count = len(study.get_trials(deepcopy=False))
                trials = []
                for number in range(count, min(count + self.n_jobs, self.n_trials)):
                    # Seeded by the trial number: the same search again asks the same
                    # trials, and processes sharing the study never draw the same ones.
                    study.sampler = search.make_sampler(self.sampler, None if self.seed is None else self.seed + number)
                    trials.append(study.ask({name: param.distribution for name, param in params.items()}))
            if not trials:
                break
            batch = [[*fixed, *(params[name].override(value) for name, value in trial.params.items())] for trial in trials]
            returns.append(self._run(study, [trial.number for trial in trials], batch, url))
        return returns

    def _run(self, study: Any, numbers: list[int], batch: list[list[str]], url: str) -> list[JobReturn]:
        """Run trials `numbers` (consecutive) as jobs of the same numbers, then tell the study how each ended."""
        import optuna

        from src.utils.optuna_search import PRUNING_CALLBACK, pruning_override

        assert self.launcher is not None
        if self.pruner != "none":
            settings = (self.pruner, self.startup_trials, self.percentile)
            batch = [[*overrides, pruning_override(PRUNING_CALLBACK, url, self.study_name, number, *settings)] for number, overrides in zip(numbers, batch)]
        self.validate_batch_is_legal(batch)
        results = self.launcher.launch(batch, initial_job_idx=numbers[0])
        for number, result in zip(numbers, results):
            value, status = result.return_value, _status(result)
            if status == "pruned":
                study.tell(number, state=optuna.trial.TrialState.PRUNED)
            elif value is None or math.isnan(value):
                study.tell(number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(number, value)
        return list(results)

    def _abandoned_trials(self, study: Any, sweep_dir: Path) -> list[Any]:
        """Trials left running by a sweep that stopped: no process holds their job folder."""
        import optuna

        from src.utils.run_folder import is_locked

        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return [t for t in running if not any(is_locked(folder) for folder in sweep_dir.glob(f"{t.number}_*"))]

    def _leave_pruning_out_of_folder_names(self) -> None:
        """The pruning callback's override names the trial, not what it trains: job
        folders are named without it. Launchers compose each job's config again from
        the hydra overrides, so the exclusion goes there too."""
        from src.utils.optuna_search import PRUNING_CALLBACK
        from src.utils.run_folder import quoted

        assert self.config is not None
        naming = self.config.hydra.job.config.override_dirname
        keys = [*naming.exclude_keys, f"callbacks.{PRUNING_CALLBACK}"]
        with read_write(naming), open_dict(naming):
            naming.exclude_keys = keys
        with read_write(self.config.hydra.overrides):
            self.config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(map(quoted, keys))}]")


def _status(result: JobReturn) -> str | None:
    """The status the job wrote to its metrics.json (`completed`, `pruned`, `failed`)."""
    path = Path(str(result.hydra_cfg.hydra.runtime.output_dir)) / "metrics.json"  # type: ignore[union-attr]
    return json.loads(path.read_text()).get("status") if path.is_file() else None
