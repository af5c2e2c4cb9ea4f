"""Epoch metrics summed on the device and read back once, so the loop never syncs per step."""

from __future__ import annotations

import math
from typing import Any, Union

import torch

from src.utils.config import metric_names
from src.utils.distributed import sum_across_ranks

# Batches whose predictions are counted at once (see ClassificationMetrics.update).
PENDING_BATCHES = 16


def make_metrics(task: str, num_outputs: int, device: torch.device, *, training: bool = False, confusion: bool = False) -> Metrics:
    """The metrics of a task: classification (loss, accuracy, top-5) or regression
    (loss, MSE, MAE, R²). Training batches skip top-5 and the confusion matrix."""
    if task == "regression":
        return RegressionMetrics(num_outputs, device)
    return ClassificationMetrics(num_outputs, device, confusion=confusion and not training, top5=not training)


class ClassificationMetrics:
    """Mean loss, accuracy, top-5 accuracy (when there are more than 5 classes, and
    `top5` is on) and, on request, the confusion matrix (rows: true class, columns:
    predicted class). Training leaves top-5 off: it is the costliest sum per step."""

    def __init__(self, num_classes: int, device: torch.device, confusion: bool = False, top5: bool = True) -> None:
        self.num_classes = num_classes
        self.names = metric_names("classification", num_classes, top5)
        self.count = 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.correct_top5 = torch.zeros((), dtype=torch.int64, device=device) if "top5" in self.names else None
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) if confusion else None
        # Outputs and targets of the last few batches, counted together: one argmax over
        # 16 batches costs far less than 16 small ones (about 1.5% of a CPU MLP's step).
        # Counts are integers, so grouping batches never changes a result.
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: `loss` is the batch mean, as the loss module returns it.
        `outputs` and `loss` must be detached (or from inference mode)."""
        n = targets.shape[0]
        self.count += n
        # The loss is summed batch by batch: float sums depend on their order, and a
        # resumed epoch must add up exactly as an uninterrupted one.
        self.loss_sum.add_(loss, alpha=n)
        self._pending.append((outputs, targets))
        if len(self._pending) == PENDING_BATCHES:
            self._count_pending()

    def _count_pending(self) -> None:
        if not self._pending:
            return
        outputs = torch.cat([o for o, _ in self._pending])
        targets = torch.cat([t for _, t in self._pending])
        self._pending.clear()
        # Out-of-place sums: this may run after an evaluation's inference mode has ended.
        predicted = outputs.argmax(dim=1)
        self.correct = self.correct + (predicted == targets).sum()
        if self.correct_top5 is not None:
            top5 = outputs.topk(5, dim=1).indices
            self.correct_top5 = self.correct_top5 + (top5 == targets.unsqueeze(1)).any(dim=1).sum()
        if self.confusion is not None:
            self.confusion = self.confusion + torch.bincount(targets * self.num_classes + predicted, minlength=self.num_classes**2)

    def compute(self) -> dict[str, float]:
        """The epoch's metrics as floats, over every rank's batches under torchrun: one
        device-to-host transfer. Without any sample they are nan, never a made-up 0."""
        self._count_pending()
        sums = [self.loss_sum.double(), self.correct.double()]
        if self.correct_top5 is not None:
            sums.append(self.correct_top5.double())
        sums.append(torch.tensor(float(self.count), dtype=torch.float64, device=self.loss_sum.device))
        *values, count = sum_across_ranks(torch.stack(sums)).tolist()
        return dict(zip(self.names, [v / count if count else math.nan for v in values]))

    def state_dict(self) -> dict[str, Any]:
        """The running sums, so a mid-epoch checkpoint resumes the epoch's metrics exactly."""
        self._count_pending()
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
        self._count_pending()
        return self.confusion.view(self.num_classes, self.num_classes).tolist()


class RegressionMetrics:
    """Mean loss, mean squared and absolute error, and R² (averaged over the outputs),
    from running sums on the device."""

    names = metric_names("regression", 1)

    def __init__(self, num_outputs: int, device: torch.device) -> None:
        self.count = 0
        zeros = lambda: torch.zeros(num_outputs, dtype=torch.float64, device=device)  # noqa: E731
        self.loss_sum = torch.zeros((), device=device)
        # Per output: sum of squared and absolute errors, of targets and of squared targets.
        self.sums = {"sq_err": zeros(), "abs_err": zeros(), "y": zeros(), "y_sq": zeros()}

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch (`outputs` and `loss` detached, as for ClassificationMetrics)."""
        n = targets.shape[0]
        self.count += n
        self.loss_sum.add_(loss, alpha=n)
        y = targets.reshape(n, -1).double()
        error = outputs.reshape(n, -1).double() - y
        self.sums["sq_err"].add_(error.square().sum(dim=0))
        self.sums["abs_err"].add_(error.abs().sum(dim=0))
        self.sums["y"].add_(y.sum(dim=0))
        self.sums["y_sq"].add_(y.square().sum(dim=0))

    def compute(self) -> dict[str, float]:
        """The metrics over every rank's batches under torchrun (nan without any sample)."""
        device = self.loss_sum.device
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        flat = sum_across_ranks(torch.cat([self.loss_sum.double().view(1), *self.sums.values(), count]))
        loss_sum, *sums, total_count = flat.split([1, *(len(v) for v in self.sums.values()), 1])
        s = dict(zip(self.sums, sums))
        n = total_count.clamp_min(1)
        total = s["y_sq"] - s["y"].square() / n  # sum of squares around the mean, per output
        r2 = 1 - s["sq_err"] / total.clamp_min(1e-12)
        means = [loss_sum / n, s["sq_err"].mean().view(1) / n, s["abs_err"].mean().view(1) / n, r2.mean().view(1)]
        *values, samples = torch.cat([*means, total_count]).tolist()
        return dict(zip(self.names, values if samples else [math.nan] * len(values)))

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "loss_sum": self.loss_sum.cpu(), **{k: v.cpu() for k, v in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.loss_sum.device
        self.count = state["count"]
        self.loss_sum = state["loss_sum"].to(device)
        self.sums = {k: state[k].to(device) for k in self.sums}


Metrics = Union[ClassificationMetrics, RegressionMetrics]
