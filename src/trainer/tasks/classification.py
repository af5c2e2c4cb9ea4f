"""Classification: one class index per sample, one output (logit) per class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from src.trainer.tasks.base import Metrics, Task
from src.utils.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


class Classification(Task):
    """Metrics: mean loss, accuracy, when there are more than 5 classes top-5 accuracy,
    and macro F1 (the mean of the classes' F1). Top-5 and macro F1 are left out for the
    training batches: they cost the most per step, and an evaluation pass gives them.
    Evaluation extras: each class's precision, recall and F1, and the confusion matrix.
    Losses that compare each output with a target of the same shape (mse, l1, huber,
    bce) get the class index one-hot encoded."""

    name = "classification"
    one_output_per_class = True

    def metric_names(self, training: bool = False) -> list[str]:
        if training:
            return ["loss", "accuracy"]
        return ["loss", "accuracy"] + (["top5"] if self.num_outputs > 5 else []) + ["macro_f1"]

    def check_data(self, data: DictConfig) -> None:
        num_classes = data.get("num_classes")
        if num_classes is None:
            if data.get("root"):  # a folder's classes are counted from its class folders
                raise UserError(
                    f"data.num_classes is not set, and data={data.get('name')} could not count the classes from "
                    f"data.root={data.root!r}, which is not a folder of class folders. Point data.root at a folder "
                    f"of <class>/<image> folders, or give the number of classes as data.num_classes=N."
                )
            raise UserError(f"data.num_classes is not set: data={data.get('name')} needs the number of classes as data.num_classes=N.")
        if type(num_classes) is not int or num_classes < 2:
            raise UserError(f"Invalid value data.num_classes={num_classes!r}: expected an integer >= 2 (the number of classes).")
        if self.num_outputs != num_classes:
            raise UserError(
                f"data.num_outputs={self.num_outputs} but data.num_classes={num_classes}: a classifier "
                f"has one output per class (set data.num_outputs=${{data.num_classes}})."
            )

    def metrics(self, device: torch.device, *, training: bool = False) -> Metrics:
        from src.trainer.metrics import ClassificationMetrics

        # Evaluation counts the confusion matrix that macro F1 and the extras come from.
        return ClassificationMetrics(self.num_outputs, device, self.metric_names(training))

    def loss(self, loss_fn: nn.Module) -> nn.Module:
        from src.trainer.losses import ELEMENTWISE_LOSSES, PreparedTargets, one_hot

        return PreparedTargets(loss_fn, one_hot) if isinstance(loss_fn, ELEMENTWISE_LOSSES) else loss_fn

    @classmethod
    def targets_from_table(cls, values: torch.Tensor, columns: list[str], path: str, num_classes: int | None) -> torch.Tensor:
        if len(columns) != 1:
            raise UserError(f"A classification target is one column of class indices; got data.target={columns}.")
        if not values.equal(values.round()) or (values < 0).any():
            raise UserError(f"{path}: the class column {columns[0]!r} must hold integer class indices 0, 1, 2, ...")
        if num_classes is not None and values.max() >= num_classes:
            raise UserError(
                f"{path}: the class column {columns[0]!r} holds the class index {int(values.max())}, but "
                f"data.num_classes={num_classes} allows 0..{num_classes - 1}. Set data.num_classes to the number of classes."
            )
        return values[:, 0].long()
