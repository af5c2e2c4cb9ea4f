"""Epoch metrics summed on the device and read back once, so the loop never syncs per step."""

from __future__ import annotations

from typing import Any

import torch

from src.utils.config import classification_metric_names


class ClassificationMetrics:
    """Mean loss, accuracy, top-5 accuracy (when there are more than 5 classes, and
    `top5` is on) and, on request, the confusion matrix (rows: true class, columns:
    predicted class). Training leaves top-5 off: it is the costliest sum per step."""

    def __init__(self, num_classes: int, device: torch.device, confusion: bool = False, top5: bool = True) -> None:
        self.num_classes = num_classes
        self.names = classification_metric_names(num_classes, top5)
        self.count = 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.correct_top5 = torch.zeros((), dtype=torch.int64, device=device) if "top5" in self.names else None
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) if confusion else None

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: `loss` is the batch mean, as the loss module returns it."""
        n = targets.shape[0]
        self.count += n
        self.loss_sum.add_(loss.detach(), alpha=n)
        predicted = outputs.argmax(dim=1)
        self.correct.add_((predicted == targets).sum())
        if self.correct_top5 is not None:
            top5 = outputs.topk(5, dim=1).indices
            self.correct_top5 += (top5 == targets.unsqueeze(1)).any(dim=1).sum()
        if self.confusion is not None:
            self.confusion += torch.bincount(targets * self.num_classes + predicted, minlength=self.num_classes**2)

    def compute(self) -> dict[str, float]:
        """The epoch's metrics as floats: one device-to-host transfer."""
        sums = [self.loss_sum, self.correct.float()]
        if self.correct_top5 is not None:
            sums.append(self.correct_top5.float())
        values = torch.stack(sums).tolist()
        count = max(self.count, 1)
        return dict(zip(self.names, [v / count for v in values]))

    def state_dict(self) -> dict[str, Any]:
        """The running sums, so a mid-epoch checkpoint resumes the epoch's metrics exactly."""
        return {
            "count": self.count,
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "correct_top5": None if self.correct_top5 is None else self.correct_top5.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.loss_sum.device
        self.count = state["count"]
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        if self.correct_top5 is not None:
            self.correct_top5 = state["correct_top5"].to(device)

    def confusion_matrix(self) -> list[list[int]]:
        assert self.confusion is not None, "created with confusion=False"
        return self.confusion.view(self.num_classes, self.num_classes).tolist()
