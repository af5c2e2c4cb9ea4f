"""MLflow: one MLflow run per training run, in a local SQLite store by default.

Needs the `mlflow` extra (`pip install -e ".[mlflow]"`: mlflow-skinny, the tracking
client, with SQLAlchemy and alembic for the SQLite store). The web UI comes with the
full package: `pip install mlflow`, then `mlflow ui --backend-store-uri sqlite:///saved/mlflow.db`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from src.trainer.images import to_hwc_uint8
from src.trainer.loggers.base import LoggerBase, run_id_from, run_name
from src.utils.errors import UserError

log = logging.getLogger(__name__)

# A local SQLite store's URI: the prefix, then the file's path (absolute: one more /).
SQLITE = "sqlite:///"
# What MLflow's run ids look like (uuid4 hex); anything else in a checkpoint is ignored.
RUN_ID = re.compile(r"[0-9a-f]{32}")


class MLflowLogger(LoggerBase):
    """Params (the flattened config), metrics per step, images, and the best
    checkpoint as the artifact `checkpoints/best.pt`.

    A resumed run continues the same MLflow run: its id is kept in the checkpoint.
    MLflow cannot delete logged points, so after a resume from a checkpoint older than
    the last point (a kill -9, or `resume=.../epoch_001.pt`), a step can hold two
    points: the one logged before and the resumed run's, the newer by its timestamp.
    The tag `resumed_at_steps` lists the steps the run was resumed at.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tracking_uri: str = "sqlite:///saved/mlflow.db",
        experiment_name: str = "hydra-torch-trainer",
        artifact_location: str = "saved/mlartifacts",
        name: str | None = None,
    ) -> None:
        try:
            import mlflow  # noqa: F401  (imported here: a missing extra is an error before training)
        except ImportError:
            raise UserError(
                'logger=mlflow needs MLflow: install the extra with `pip install -e ".[mlflow]"` '
                "(or `make install`, which installs every extra), or choose another logger."
            ) from None
        self.run_dir = Path(run_dir)
        self.tracking_uri = _absolute_sqlite(tracking_uri)
        self.experiment_name = experiment_name
        # Relative to where the command runs, like saved/; set when the experiment is created.
        self.artifact_location = Path(artifact_location).resolve().as_uri()
        self.run_name = name or run_name(self.run_dir)
        self._client: Any = None
        self.run_id: str | None = None  # from a resumed checkpoint, else created on first use
        self._resumed_at: int | None = None
        self._open = False
        self._finished = False

    # ------------------------------------------------------------------ the run
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = run_id_from(state, RUN_ID) or self.run_id

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self._run()}

    def purge_after(self, step: int) -> None:
        self._resumed_at = step

    @property
    def client(self) -> Any:
        """The tracking client, made on first use: making one creates a new store."""
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri.startswith(SQLITE):  # SQLite creates the file, not its folder
                Path(self.tracking_uri.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> str:
        """The run's id; the run is created, or reopened on resume, on first use."""
        if self._open:
            assert self.run_id is not None
            return self.run_id
        if self.run_id is not None and not self._exists(self.run_id):
            log.warning(f"MLflow run {self.run_id} (from the checkpoint) is not in {self.tracking_uri}; logging to a new run.")
            self.run_id = None
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
            )
            tags = {"run_dir": str(self.run_dir.resolve())}
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        if self._resumed_at is not None:
            earlier = self.client.get_run(self.run_id).data.tags.get("resumed_at_steps")
            steps = f"{earlier},{self._resumed_at}" if earlier else str(self._resumed_at)
            self.client.set_tag(self.run_id, "resumed_at_steps", steps)
        self._open = True
        return self.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    # ------------------------------------------------------------------ logging
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(name, float(value), now, step) for name, value in metrics.items()]
        self.client.log_batch(self._run(), metrics=points)

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        self.client.log_image(self._run(), to_hwc_uint8(image), key=name, step=step)

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """Params once: MLflow never changes a logged one, so a resume that changes a
        value (`trainer.epochs=30`) records it as the tag `resumed.<key>` instead."""
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        run_id = self._run()
        logged = self.client.get_run(run_id).data.params
        values = {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in params.items()}
        new = [Param(key, value) for key, value in values.items() if key not in logged]
        changed = [RunTag(f"resumed.{key}", value) for key, value in values.items() if key in logged and logged[key] != value]
        self.client.log_batch(run_id, params=new, tags=changed)
        if metrics:
            self.log_metrics(metrics, step)
            self._finished = True

    def save_artifact(self, path: Path) -> None:
        self.client.log_artifact(self._run(), str(path), artifact_path="checkpoints")

    def close(self) -> None:
        """FINISHED once the final metrics are in; KILLED for a run that stopped before
        (a signal, an error), which a resume reopens."""
        if not self._open:
            return
        self.client.set_terminated(self.run_id, status="FINISHED" if self._finished else "KILLED")
        self._open = False
        log.info(f"MLflow run {self.run_id}: mlflow ui --backend-store-uri {self.tracking_uri}")


def _absolute_sqlite(uri: str) -> str:
    """A relative SQLite store (`sqlite:///saved/mlflow.db`) made absolute, so that the
    run keeps the same store whatever the working directory later is."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str(Path(uri.removeprefix(SQLITE)).resolve())
    return uri
