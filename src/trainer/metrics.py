"""Epoch metrics summed on the device and read back once, so the loop never syncs per step.

Each task (src/trainer/tasks/) builds one of these classes and gives it its metric
names; `compute` returns the values in that order.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from src.trainer.class_report import ClassReport, ConfusionMatrix, class_labels, class_scores, macro_averages
from src.trainer.losses import TargetScale
from src.trainer.tasks.base import Extra
from src.utils.distributed import sum_across_ranks

# Batches whose predictions are counted at once (see ClassificationMetrics.update): at
# most this many, holding at most PENDING_VALUES output values between them.
PENDING_BATCHES = 64
PENDING_VALUES = 1 << 22  # 16 MB of float32 outputs
# Batches whose losses are summed at once: the 1st to 64th of an epoch, the 65th to 128th...
LOSS_GROUP = 64


def loaded(state: dict[str, Any], key: str, like: torch.Tensor) -> torch.Tensor:
    """`state[key]` as a copy on `like`'s device, once it has `like`'s shape and dtype; a
    ValueError naming the key otherwise (a changed checkpoint)."""
    value = state.get(key)
    if not torch.is_tensor(value) or value.shape != like.shape or value.dtype != like.dtype:
        shown = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}" if torch.is_tensor(value) else repr(value)[:60]
        raise ValueError(f"{key} is {shown}, not a tensor of shape {tuple(like.shape)} and dtype {like.dtype}")
    return value.to(like.device, copy=True)


def loaded_count(state: dict[str, Any]) -> int:
    count = state.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count is {count!r}, not an integer >= 0")
    return count


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy for a state_dict: `.cpu()` of a CPU tensor is the tensor itself,
    which the next in-place sum would change."""
    return tensor.detach().to("cpu", copy=True)


class ClassificationMetrics:
    """Mean loss, accuracy, top-5 accuracy (when `names` has top5) and macro F1 (when
    `names` has macro_f1). Macro F1 comes from a confusion matrix (rows: true class,
    columns: predicted class) counted on the device, which also gives the evaluation
    extras: each class's precision, recall and F1 (src/trainer/class_report.py)."""

    def __init__(self, num_classes: int, device: torch.device, names: list[str]) -> None:
        self.num_classes = num_classes
        self.names = names
        self.count = 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.correct_top5 = torch.zeros((), dtype=torch.int64, device=device) if "top5" in self.names else None
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) if "macro_f1" in self.names else None
        # Outputs and targets of the last few batches, counted together: counting is a
        # handful of small kernels whose cost is mostly fixed, and counted once per many
        # batches it costs a training step next to nothing. Counts are integers, so
        # grouping batches never changes a result.
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_values = 0
        # The losses of the current group of LOSS_GROUP batches and their sample counts.
        # Float sums depend on their grouping, so the groups lie at fixed places in the
        # epoch, and a checkpoint keeps an unfinished group as it is: a resumed epoch adds
        # up exactly as an uninterrupted one.
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._summed: torch.Tensor | None = None  # the sums over every rank, once `compute` asked

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch: `loss` is the batch mean, as the loss module returns it.
        `outputs` and `loss` must be detached (or from inference mode)."""
        n = targets.shape[0]
        self.count += n
        self._losses.append(loss)
        self._sizes.append(n)
        if len(self._losses) == LOSS_GROUP:
            self._sum_losses()
        self._pending.append((outputs, targets))
        self._pending_values += outputs.numel()
        self._summed = None
        if len(self._pending) == PENDING_BATCHES or self._pending_values >= PENDING_VALUES:
            self._count_pending()

    def _sum_losses(self) -> None:
        """Add the full group's sum to `loss_sum` and start the next group."""
        self.loss_sum.add_(self._group_sum())
        self._losses.clear()
        self._sizes.clear()

    def _group_sum(self) -> torch.Tensor:
        """The current (non-empty) group's sum of loss times samples."""
        losses = torch.stack(self._losses).to(self.loss_sum.dtype)
        size = self._sizes[0]
        if all(n == size for n in self._sizes):  # equal batches: no per-batch weights to copy to the device
            return losses.sum() * size
        return (losses * torch.tensor(self._sizes, dtype=losses.dtype, device=losses.device)).sum()

    def _count_pending(self) -> None:
        if not self._pending:
            return
        outputs = torch.cat([o for o, _ in self._pending])
        targets = torch.cat([t for _, t in self._pending])
        self._pending.clear()
        self._pending_values = 0
        # Out-of-place sums: this may run after an evaluation's inference mode has ended.
        # max's indices are argmax's (the first of equal maxima); over a few classes its
        # CPU kernel is several times faster.
        predicted = outputs.max(dim=1).indices
        self.correct = self.correct + (predicted == targets).sum()
        if self.correct_top5 is not None:
            top5 = outputs.topk(5, dim=1).indices
            self.correct_top5 = self.correct_top5 + (top5 == targets.unsqueeze(1)).any(dim=1).sum()
        if self.confusion is not None:
            self.confusion = self.confusion + torch.bincount(targets * self.num_classes + predicted, minlength=self.num_classes**2)

    def _sums(self) -> torch.Tensor:
        """Loss sum, correct, [top-5 correct], sample count, [confusion counts], as
        float64 summed over every rank under torchrun (every rank calls this alike)."""
        if self._summed is None:
            self._count_pending()
            # The unfinished group is added to a copy: summing it into `loss_sum` here would
            # move the group boundaries of the rest of the epoch.
            loss_sum = self.loss_sum + self._group_sum() if self._losses else self.loss_sum
            counts = [loss_sum.double(), self.correct.double()]
            if self.correct_top5 is not None:
                counts.append(self.correct_top5.double())
            counts.append(torch.tensor(float(self.count), dtype=torch.float64, device=self.loss_sum.device))
            confusion = [] if self.confusion is None else [self.confusion.double()]
            self._summed = sum_across_ranks(torch.cat([torch.stack(counts), *confusion]))
        return self._summed

    def _confusion(self) -> torch.Tensor:
        """The confusion matrix summed over every rank, (C, C) on the device."""
        return self._sums()[-self.num_classes**2 :].view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        """The epoch's metrics as floats, over every rank's batches under torchrun: one
        device-to-host transfer. Without any sample they are nan, never a made-up 0."""
        sums = self._sums()
        means = sums[: 3 if self.correct_top5 is not None else 2]
        count = sums[len(means)]
        values = [means / count]  # 0/0: nan
        if self.confusion is not None:
            values.append(macro_averages(class_scores(self._confusion()))[2:])
        return dict(zip(self.names, torch.cat(values).tolist()))

    def state_dict(self) -> dict[str, Any]:
        """The running sums, so a mid-epoch checkpoint resumes the epoch's metrics exactly."""
        self._count_pending()
        return {
            "count": self.count,
            "loss_sum": host_copy(self.loss_sum),
            # The unfinished group of losses, as it is (see __init__), in loss_sum's dtype,
            # to which `_group_sum` converts them anyway.
            "group_losses": host_copy(torch.stack(self._losses).to(self.loss_sum.dtype)) if self._losses else None,
            "group_sizes": list(self._sizes),
            "correct": host_copy(self.correct),
            "correct_top5": None if self.correct_top5 is None else host_copy(self.correct_top5),
            "confusion": None if self.confusion is None else host_copy(self.confusion),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The sums `state_dict` wrote; a ValueError naming a field that is not as written."""
        self.count = loaded_count(state)
        self.loss_sum = loaded(state, "loss_sum", self.loss_sum)  # a copy: summed in place
        # The unfinished group of losses; absent from checkpoints of older versions.
        group, sizes = state.get("group_losses"), state.get("group_sizes", [])
        if not (isinstance(sizes, list) and len(sizes) < LOSS_GROUP and all(isinstance(n, int) and n > 0 for n in sizes)):
            raise ValueError(f"group_sizes is {sizes!r:.60}, not a list of fewer than {LOSS_GROUP} positive integers")
        if sizes:
            group = loaded(state, "group_losses", torch.zeros(len(sizes), device=self.loss_sum.device))
        elif group is not None:
            raise ValueError("group_losses is set, and group_sizes is empty")
        self._losses, self._sizes = ([] if not sizes else list(group.unbind())), list(sizes)
        self.correct = loaded(state, "correct", self.correct)
        if self.correct_top5 is not None:
            self.correct_top5 = loaded(state, "correct_top5", self.correct_top5)
        if self.confusion is not None:
            self.confusion = loaded(state, "confusion", self.confusion)
        self._summed = None

    def extras(self, class_names: list[str] | None = None) -> dict[str, Extra]:
        """Each class's precision, recall and F1, and the confusion matrix, labelled with
        `class_names` (the dataset's, when it has one per class; else the indices)."""
        if self.confusion is None:
            return {}
        confusion = self._confusion()
        scores = class_scores(confusion)
        scores_and_macro = torch.cat([scores.flatten(), macro_averages(scores)]).tolist()
        labels = class_labels(class_names, self.num_classes)
        per_class = [scores_and_macro[k * self.num_classes : (k + 1) * self.num_classes] for k in range(4)]
        return {
            "per_class": ClassReport(labels, per_class, scores_and_macro[4 * self.num_classes :]),
            "confusion_matrix": ConfusionMatrix(confusion.long().tolist(), labels),
        }


class SummedMetrics:
    """The bookkeeping of metrics kept as running sums: the sample count, the loss sum
    and named sum tensors (`sums`), which subclasses add to in place."""

    def __init__(self, device: torch.device, names: list[str], sums: dict[str, torch.Tensor]) -> None:
        self.names = names
        self.count = 0
        self.loss_sum = torch.zeros((), device=device)
        self.sums = sums

    def _add_loss(self, loss: torch.Tensor, n: int) -> None:
        self.count += n
        # Summed batch by batch: float sums depend on their order, and a resumed epoch
        # must add up exactly as an uninterrupted one.
        self.loss_sum.add_(loss, alpha=n)

    def state_dict(self) -> dict[str, Any]:
        """The running sums, so a mid-epoch checkpoint resumes the epoch's metrics exactly."""
        return {"count": self.count, "loss_sum": host_copy(self.loss_sum), **{k: host_copy(v) for k, v in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The sums `state_dict` wrote; a ValueError naming a field that is not as written."""
        self.count = loaded_count(state)
        self.loss_sum = loaded(state, "loss_sum", self.loss_sum)
        self.sums = {k: loaded(state, k, v) for k, v in self.sums.items()}

    def extras(self, class_names: list[str] | None = None) -> dict[str, Extra]:
        return {}


class RegressionMetrics(SummedMetrics):
    """Mean loss, mean squared and absolute error, and R² (averaged over the outputs),
    from running sums on the device; `names` gives their four names. With `scale`, the
    outputs are standardised targets, mapped back to the targets' units before comparing."""

    def __init__(self, num_outputs: int, device: torch.device, names: list[str], scale: TargetScale | None = None) -> None:
        self.scale = scale
        zeros = lambda: torch.zeros(num_outputs, dtype=torch.float64, device=device)  # noqa: E731
        # Per output: sum of squared and absolute errors, of targets and of squared targets.
        super().__init__(device, names, {"sq_err": zeros(), "abs_err": zeros(), "y": zeros(), "y_sq": zeros()})

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch (`outputs` and `loss` detached, as for ClassificationMetrics)."""
        n = targets.shape[0]
        self._add_loss(loss, n)
        y = targets.reshape(n, -1).double()
        predicted = outputs.reshape(n, -1).double()
        if self.scale is not None:
            predicted = self.scale.to_units(predicted)
        error = predicted - y
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


class MultilabelMetrics(SummedMetrics):
    """Mean loss, exact-match accuracy, micro and macro F1 of multi-hot targets, from
    per-label counts on the device. A label is predicted when its output (a logit) is
    above 0, i.e. its sigmoid above 0.5. Macro F1 averages the labels that occur or are
    predicted at all (the F1 of a label with neither is undefined); with no such label
    it and micro F1 are nan. `names` gives the four names."""

    def __init__(self, num_labels: int, device: torch.device, names: list[str]) -> None:
        counts = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=device)  # noqa: E731
        # Samples with every label right; per label: true and false positives, false negatives.
        sums = {"exact": counts(()), "true_pos": counts(num_labels), "false_pos": counts(num_labels), "false_neg": counts(num_labels)}
        super().__init__(device, names, sums)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add one batch (`outputs` and `loss` detached, as for ClassificationMetrics)."""
        self._add_loss(loss, targets.shape[0])
        predicted, truth = outputs > 0, targets > 0.5
        self.sums["exact"].add_((predicted == truth).all(dim=1).sum())
        self.sums["true_pos"].add_((predicted & truth).sum(dim=0))
        self.sums["false_pos"].add_((predicted & ~truth).sum(dim=0))
        self.sums["false_neg"].add_((~predicted & truth).sum(dim=0))

    def compute(self) -> dict[str, float]:
        """The metrics over every rank's batches under torchrun (nan without any sample)."""
        device = self.loss_sum.device
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        parts = [self.loss_sum.double().view(1), *(v.double().view(-1) for v in self.sums.values()), count]
        loss_sum, exact, true_pos, false_pos, false_neg, total_count = sum_across_ranks(torch.cat(parts)).split([len(p) for p in parts])
        # F1 = 2TP / (2TP + FP + FN), which is 2PR / (P + R); 0/0 where a label never occurs nor is predicted.
        denominators = 2 * true_pos + false_pos + false_neg
        defined = denominators > 0
        per_label = torch.where(defined, 2 * true_pos / denominators, 0.0)
        macro = per_label.sum() / defined.sum()
        micro = 2 * true_pos.sum() / denominators.sum()
        n = total_count.clamp_min(1)
        *values, samples = torch.cat([loss_sum / n, exact / n, micro.view(1), macro.view(1), total_count]).tolist()
        return dict(zip(self.names, values if samples else [math.nan] * len(values)))
