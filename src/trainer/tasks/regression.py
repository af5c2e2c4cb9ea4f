"""Regression: one or more real-valued targets per sample, one output per target."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from src.trainer.tasks.base import Metrics, Task, check_not_class_index_loss, check_one_output_per_column

if TYPE_CHECKING:
    import torch
    from torch import nn


class Regression(Task):
    """Metrics: mean loss, mean squared and absolute error, and R² (each averaged over
    the outputs). Targets reach the loss shaped like the outputs and in their dtype."""

    name = "regression"

    def metric_names(self, training: bool = False) -> list[str]:
        return ["loss", "mse", "mae", "r2"]

    def check_data(self, data: DictConfig) -> None:
        check_one_output_per_column(self.name, data)

    def check_loss(self, loss_target: str | None) -> None:
        check_not_class_index_loss(
            self.name,
            loss_target,
            "For numeric targets add loss=mse (or l1, huber); if data.target holds class indices 0..N-1, add "
            "data.task=classification data.num_classes=N data.num_outputs=N.",
        )

    def metrics(self, device: torch.device, *, training: bool = False) -> Metrics:
        from src.trainer.metrics import RegressionMetrics

        return RegressionMetrics(self.num_outputs, device, self.metric_names(training))

    def loss(self, loss_fn: nn.Module) -> nn.Module:
        from src.trainer.losses import PreparedTargets, like_outputs

        return PreparedTargets(loss_fn, like_outputs)

    @classmethod
    def targets_from_table(cls, values: torch.Tensor, columns: list[str], path: str, num_classes: int | None) -> torch.Tensor:
        return values[:, 0] if len(columns) == 1 else values
