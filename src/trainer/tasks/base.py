"""The Task interface, and the protocols of what a task builds (its metrics, their extras).

This module and the task classes import no torch (see src/trainer/tasks/__init__.py):
torch types appear in annotations only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from omegaconf import DictConfig, ListConfig

from src.utils.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from src.trainer.loggers import Loggers

# Losses that take class indices as targets: a float target (a regression value, a
# multi-hot row) fails in them or means something else.
CLASS_INDEX_LOSSES = ("torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "src.trainer.losses.NLLLoss")


class Extra(Protocol):
    """An evaluation result beyond the scalar metrics, such as a confusion matrix:
    test.py (and train.py's test of best.pt) writes it into its JSON record, prints it
    and logs it to the run's loggers."""

    def to_json(self) -> Any: ...

    def table(self) -> Any:
        """A rich renderable for the console."""

    def log(self, loggers: Loggers, name: str, step: int) -> None:
        """Log it (e.g. as an image) to the run's loggers."""


class Metrics(Protocol):
    """A split's metrics over one epoch: sums kept on the device and read back once.

    `update` must not read a tensor back to the host (no `.item()`): the loop calls it
    on every step. `state_dict` holds the sums so far (tensors and plain values), so a
    checkpoint saved in the middle of an epoch resumes it bitwise.
    """

    names: list[str]

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: detached outputs, the targets as the data yields them, and the
        batch's mean loss."""

    def compute(self) -> dict[str, float]:
        """The metrics, by name, over every rank's batches (nan without any sample)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def extras(self, class_names: list[str] | None = None) -> dict[str, Extra]:
        """Evaluation extras by name (none for the training batches), after `compute`;
        `class_names` label a classifier's classes (indices when None)."""


class Task(ABC):
    """What a run learns: one instance per run, built from the data config by
    `src.trainer.tasks.get_task`.

    Config side (torch-free, used before anything is built): `metric_names`,
    `check_data`, `check_loss`. Run side: `metrics`, `loss` (how targets reach the
    loss) and `targets_from_table` (how a CSV's target columns become targets).
    """

    name: ClassVar[str]
    # One class per sample and one output per class: a table's default data.num_outputs
    # is data.num_classes, and its target column may hold class names.
    one_output_per_class: ClassVar[bool] = False

    def __init__(self, num_outputs: int, target_stats: dict[str, list[float]] | None = None) -> None:
        self.num_outputs = num_outputs
        # The training split's per-column target mean and std, when the task trains on
        # standardised targets (see `target_statistics`); None: targets as they are.
        self.target_stats = target_stats

    @abstractmethod
    def metric_names(self, training: bool = False) -> list[str]:
        """The metrics this task reports for a split, in order; `training`: for the
        training batches, which may skip costly ones."""

    def check_data(self, data: DictConfig) -> None:
        """Raise a UserError for a `data` config this task cannot train on."""

    def check_loss(self, loss_target: str | None) -> None:
        """Raise a UserError for a loss (by `_target_`) that cannot take this task's targets."""

    @abstractmethod
    def metrics(self, device: torch.device, *, training: bool = False) -> Metrics:
        """Fresh metrics for one pass over a split (`training`: the training batches)."""

    def loss(self, loss_fn: nn.Module) -> nn.Module:
        """`loss_fn`, wrapped if targets must be prepared for it (e.g. one-hot encoded)."""
        return loss_fn

    @classmethod
    def target_statistics(cls, targets: torch.Tensor) -> dict[str, list[float]] | None:
        """The statistics to standardise the training targets with (data.standardize_target),
        or None for a task whose targets are not standardised (class indices, 0/1 labels)."""
        return None

    @classmethod
    def targets_from_table(cls, values: torch.Tensor, columns: list[str], path: str, num_classes: int | None) -> torch.Tensor:
        """The targets of a CSV's rows from its target columns (`values`: float32, one
        column per name in `columns`); a UserError names a value that does not fit."""
        raise UserError(f"data.task={cls.name} takes no targets from a CSV table; use a dataset class of its own.")


def check_not_class_index_loss(task: str, loss_target: str | None, advice: str) -> None:
    """Refuse CrossEntropyLoss and NLLLoss for a task whose targets are not class indices."""
    if loss_target in CLASS_INDEX_LOSSES:
        raise UserError(
            f"data.task={task}, but the loss {loss_target} (loss=cross_entropy, the default, or loss=nll) needs class "
            f"indices as targets. {advice}"
        )


def check_one_output_per_column(task: str, data: DictConfig) -> None:
    """A table's model has one output per target column (`data.target`, where there is one)."""
    target = data.get("target")
    if target is None:
        return
    columns = list(target) if isinstance(target, ListConfig) else [target]
    if data.num_outputs != len(columns):
        raise UserError(
            f"data.num_outputs={data.num_outputs} but data.target names {len(columns)} column(s) "
            f"({', '.join(map(str, columns))}): data.task={task} has one output per target column. Leave "
            f"data.num_outputs at its default, which counts them."
        )
