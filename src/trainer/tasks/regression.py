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
    the outputs). Targets reach the loss shaped like the outputs and in their dtype.

    With `target_stats` (data.standardize_target) the model learns standardised targets:
    the loss compares its outputs with (target - mean) / std, so one learning rate fits
    targets of any scale, while the metrics (and predictions) map the outputs back to
    the targets' own units (the loss stays in standardised units)."""

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
        from src.trainer.losses import TargetScale
        from src.trainer.metrics import RegressionMetrics

        scale = TargetScale(self.target_stats) if self.target_stats else None
        return RegressionMetrics(self.num_outputs, device, self.metric_names(training), scale)

    def loss(self, loss_fn: nn.Module) -> nn.Module:
        from src.trainer.losses import PreparedTargets, TargetScale, like_outputs

        return PreparedTargets(loss_fn, TargetScale(self.target_stats).standardize if self.target_stats else like_outputs)

    @classmethod
    def target_statistics(cls, targets: torch.Tensor) -> dict[str, list[float]] | None:
        columns = targets.reshape(len(targets), -1).double()
        # A constant column (or a single row) has no spread to scale by: it is only shifted.
        std = columns.std(dim=0).nan_to_num(0.0)
        return {"mean": columns.mean(dim=0).tolist(), "std": std.masked_fill(std <= 0, 1.0).tolist()}

    @classmethod
    def targets_from_table(cls, values: torch.Tensor, columns: list[str], path: str, num_classes: int | None) -> torch.Tensor:
        return values[:, 0] if len(columns) == 1 else values
