"""Report each epoch of an Optuna trial to its study, and stop the trial when the pruner says so.

The Optuna sweeper (hparams_search=...) gives every job this callback through an
override naming the study's storage, the study and the job's trial number. A resume
by hand rebuilds it from the checkpoint's stored config, so it only ever joins a study
that exists: it never creates a database file where a checkpoint says. (Sweeps never
run under torchrun: one process reports.) A pruned trial ends after the epoch it was
judged on, with that epoch's checkpoints saved: its metrics.json says `status: pruned`.
"""

from __future__ import annotations

import logging
from typing import Any

from src.trainer.callbacks import Callback

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    def __init__(self, storage: str, study: str, trial: int, pruner: str = "median", startup_trials: int = 5, percentile: float = 25.0) -> None:
        from src.utils.optuna_search import PRUNERS

        if pruner not in PRUNERS:
            from src.utils.errors import UserError

            raise UserError(f"Invalid value pruner={pruner!r} for the Optuna pruning callback: expected one of {', '.join(PRUNERS)}.")
        self.storage, self.study_name, self.number = storage, study, trial
        self.pruner, self.startup_trials, self.percentile = pruner, startup_trials, percentile
        self.trial: Any = None

    def on_fit_start(self, trainer: Any) -> None:
        import optuna

        from src.utils.optuna_search import make_pruner, open_storage, sqlite_path

        database = sqlite_path(self.storage)
        if database is not None and not database.is_file():
            log.warning(f"Optuna trial {self.number}: its study's database {str(database)!r} does not exist: its epochs are not reported.")
            return
        storage = open_storage(self.storage)
        if self.study_name not in optuna.get_all_study_names(storage):
            log.warning(f"Optuna trial {self.number}: study {self.study_name!r} is not in its storage: its epochs are not reported.")
            return
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=make_pruner(self.pruner, trainer.cfg.epochs, self.startup_trials, self.percentile))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name), self.number)
        if storage.get_trial(trial_id).state.is_finished():  # e.g. a finished trial's checkpoint resumed by hand
            log.warning(f"Optuna trial {self.number} of study {self.study_name!r} is already finished: its epochs are not reported.")
            return
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.trial is None or trainer.batch_in_epoch:  # trials report per epoch, not every val_every_n_steps
            return
        epoch = trainer.epoch + 1  # the epoch that just ended
        self.trial.report(metrics[trainer.monitor], step=epoch)
        # A trial at its last epoch completes: there is nothing left to save by stopping it.
        last = trainer.cfg.epochs is not None and epoch >= int(trainer.cfg.epochs)
        if not last and self.trial.should_prune():
            log.info(f"Optuna trial {self.number} pruned after epoch {epoch}: its {trainer.monitor} is behind the other trials'.")
            trainer.stop_requested = "pruned"
