"""Hydra's Optuna sweeper, made to continue an interrupted search.

With `sweep.resume=PATH` the study is loaded from the SQLite file in that sweep
folder; trials that already finished count towards `n_trials`, and new jobs are
numbered after the existing ones so no job folder is reused.

It lives in the `hydra_plugins` namespace because Hydra only loads sweepers from
there. Hydra imports every module of that namespace at start-up, so this one stays
importable (and cheap) when the optional optuna extra is not installed.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optuna extra is not installed
    OptunaSweeper = None  # type: ignore[assignment,misc]


class ResumableOptunaSweeper(OptunaSweeper or object):  # type: ignore[misc]
    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        impl = self.sweeper
        if impl.storage:
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except KeyError:  # no such study yet: a new search
                study = None
            if study is not None:
                finished = [t for t in study.trials if t.state.is_finished()]
                impl.n_trials = max(0, impl.n_trials - len(finished))
                impl.job_idx = len(study.trials)
        return super().sweep(arguments)
