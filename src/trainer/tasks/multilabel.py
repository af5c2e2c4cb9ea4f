"""Multi-label classification: any number of labels per sample, as a multi-hot row."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from src.trainer.tasks.base import Metrics, Task, check_not_class_index_loss, check_one_output_per_column
from src.utils.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Multilabel(Task):
    """Targets are rows of 0/1 floats, one per label; the model has one output (a logit)
    per label, and a label is predicted when its sigmoid is above 0.5. Metrics: mean
    loss, exact-match accuracy (every label of the sample right), and micro and macro
    F1 (macro: the mean over the labels that occur or are predicted)."""

    name = "multilabel"

    def metric_names(self, training: bool = False) -> list[str]:
        return ["loss", "exact_match", "micro_f1", "macro_f1"]

    def check_data(self, data: DictConfig) -> None:
        check_one_output_per_column(self.name, data)

    def check_loss(self, loss_target: str | None) -> None:
        check_not_class_index_loss(self.name, loss_target, "For 0/1 label columns add loss=bce (BCEWithLogitsLoss).")

    def metrics(self, device: torch.device, *, training: bool = False) -> Metrics:
        from src.trainer.metrics import MultilabelMetrics

        return MultilabelMetrics(self.num_outputs, device, self.metric_names(training))

    def loss(self, loss_fn: nn.Module) -> nn.Module:
        from src.trainer.losses import PreparedTargets, like_outputs

        return PreparedTargets(loss_fn, like_outputs)

    @classmethod
    def targets_from_table(cls, values: torch.Tensor, columns: list[str], path: str, num_classes: int | None) -> torch.Tensor:
        binary = (values == 0) | (values == 1)
        if not binary.all():
            row, column = (~binary).nonzero()[0].tolist()
            raise UserError(
                f"{path}: the label column {columns[column]!r} holds {values[row, column].item():g}, but multilabel "
                f"targets are 0 or 1 (one column per label: 1 where the sample has it)."
            )
        return values
