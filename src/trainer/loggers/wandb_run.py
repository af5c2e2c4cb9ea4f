"""Weights & Biases: offline by default, into `<run folder>/wandb/`; upload later with
`wandb sync <run folder>/wandb/offline-run-*`.

Needs the `wandb` extra (`pip install -e ".[wandb]"`). `logger.wandb.mode=online`
logs straight to W&B (after `wandb login`).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from src.trainer.images import to_hwc_uint8
from src.trainer.loggers.base import LoggerBase, run_id_from, run_name
from src.utils.errors import UserError

log = logging.getLogger(__name__)

# The characters W&B accepts in a run id; anything else in a checkpoint is ignored.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class WandbLogger(LoggerBase):
    """Metrics per step, images, the flattened config, and the final metrics in the summary.

    A resumed run continues the same W&B run (`resume="allow"` with the id kept in the
    checkpoint). Offline, each process writes its own `offline-run-<time>-<id>` folder,
    and `wandb sync` uploads each to the run of that id. W&B takes a run's steps in
    increasing order only and drops a point at an older step than its last one: after a
    resume from a checkpoint older than the last logged step (a kill -9,
    `resume=.../epoch_001.pt`), those steps keep the points W&B already has.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "hydra-torch-trainer",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError(
                'logger=wandb needs Weights & Biases: install the extra with `pip install -e ".[wandb]"` '
                "(or `make install`, which installs every extra), or choose another logger."
            ) from None
        self.wandb = wandb
        self.run_dir = Path(run_dir)
        self.init_args = {
            "project": project,
            "entity": entity,
            "mode": mode,
            "group": group,
            "tags": list(tags),
            "name": name or run_name(self.run_dir),
        }
        self.run_id: str | None = None  # from a resumed checkpoint, else made on first use
        self._run: Any = None
        self._finished = False

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = run_id_from(state, RUN_ID) or self.run_id

    def state_dict(self) -> dict[str, Any]:
        if self.run_id is None:
            self.run_id = secrets.token_hex(4)  # W&B's own ids are 8 such characters too
        return {"run_id": self.run_id}

    @property
    def run(self) -> Any:
        """The W&B run, started (or resumed, with the same id) on first use."""
        if self._run is None:
            self._run = self.wandb.init(
                id=self.state_dict()["run_id"],
                resume="allow",
                dir=str(self.run_dir),
                # The run's console output is in train.log already; leaving sys.stdout
                # unwrapped also keeps the progress bar as it is.
                settings=self.wandb.Settings(console="off"),
                **self.init_args,
            )
        return self._run

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_image(self, name: str, image: torch.Tensor, step: int) -> None:
        self.run.log({name: self.wandb.Image(to_hwc_uint8(image))}, step=step)

    def log_hyperparams(self, params: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        self.run.config.update(dict(params), allow_val_change=True)  # a resume may change some (trainer.epochs)
        if metrics:
            self.run.log(dict(metrics), step=step)
            self._finished = True

    def close(self) -> None:
        """Marks the run finished once the final metrics are in, failed otherwise (a
        signal or an error; a resume continues it)."""
        if self._run is not None:
            self._run.finish(exit_code=0 if self._finished else 1)
            self._run = None
