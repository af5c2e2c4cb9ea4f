"""Tasks: their metrics on hand-computed cases, exact mid-epoch resume of their sums,
and how targets reach the loss."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import REPO
from src.trainer.tasks import TASKS, Task, task_class
from src.trainer.tasks.classification import Classification
from src.trainer.tasks.regression import Regression
from src.utils.errors import UserError

CPU = torch.device("cpu")


def run_batches(metrics, batches) -> dict[str, float]:
    """Add (outputs, targets, batch loss) batches; the metrics so far."""
    for outputs, targets, loss in batches:
        metrics.update(outputs, targets, torch.tensor(loss))
    return metrics.compute()


def test_classification_metrics_and_confusion_matrix() -> None:
    scores = torch.tensor([6.0, 5, 4, 3, 2, 1])
    outputs = torch.stack([scores, scores, scores, scores.flip(0)])  # predicts class 0, 0, 0, 5
    targets = torch.tensor([0, 4, 5, 5])  # right, in the top 5, not in the top 5, right
    task = Classification(num_outputs=6)
    metrics = task.metrics(CPU, extras=True)
    values = run_batches(metrics, [(outputs[:2], targets[:2], 1.0), (outputs[2:], targets[2:], 3.0)])
    assert values == {"loss": 2.0, "accuracy": 0.5, "top5": 0.75}
    matrix = metrics.extras()["confusion_matrix"].to_json()
    assert matrix[0][0] == 1 and matrix[4][0] == 1 and matrix[5][0] == 1 and matrix[5][5] == 1
    assert sum(map(sum, matrix)) == 4
    assert task.metric_names(training=True) == ["loss", "accuracy"], "top-5 is left out of training"
    assert Classification(num_outputs=5).metric_names() == ["loss", "accuracy"], "top-5 needs more than 5 classes"


def test_regression_metrics() -> None:
    outputs = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])  # errors 0, 0, 0, 2 around a mean of 2.5
    values = run_batches(Regression(num_outputs=1).metrics(CPU), [(outputs, targets, 0.5)])
    assert values == {"loss": 0.5, "mse": 1.0, "mae": 0.5, "r2": pytest.approx(1 - 4 / 5)}


@pytest.mark.parametrize("task", [Classification(3), Regression(3)], ids=lambda t: t.name)
def test_metrics_of_no_samples_are_nan(task: Task) -> None:
    values = task.metrics(CPU).compute()
    assert list(values) == task.metric_names() and all(math.isnan(v) for v in values.values())


def random_batches(task: Task, count: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        outputs = torch.randn(size, task.num_outputs, generator=g)
        targets = {
            "classification": torch.randint(task.num_outputs, (size,), generator=g),
            "regression": torch.randn(size, task.num_outputs, generator=g),
        }[task.name]
        batches.append((outputs, targets, torch.rand((), generator=g).item()))
    return batches


@pytest.mark.parametrize("name", list(TASKS))
def test_a_mid_epoch_state_dict_resumes_the_sums_exactly(name: str) -> None:
    task = task_class(name)(7)
    batches = random_batches(task, 40)  # more than ClassificationMetrics counts at once
    straight = run_batches(task.metrics(CPU, training=True), batches)

    interrupted = task.metrics(CPU, training=True)
    run_batches(interrupted, batches[:23])
    state = interrupted.state_dict()
    assert run_batches(interrupted, batches[23:]) == straight, "taking the state changes nothing"
    buffer = io.BytesIO()
    torch.save(state, buffer)  # written after the sums went on: the state must not have moved with them
    buffer.seek(0)
    resumed = task.metrics(CPU, training=True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert run_batches(resumed, batches[23:]) == straight


def test_targets_reach_the_loss_in_the_form_it_takes() -> None:
    outputs = torch.randn(4, 3)
    classes = torch.tensor([0, 2, 1, 2])
    cross_entropy = nn.CrossEntropyLoss()
    assert Classification(3).loss(cross_entropy) is cross_entropy, "class indices as they are"
    mse = Classification(3).loss(nn.MSELoss())
    assert torch.equal(mse(outputs, classes), F.mse_loss(outputs, F.one_hot(classes, 3).float()))
    column = torch.randn(4, 1)
    values = torch.randn(4)
    assert torch.equal(Regression(1).loss(nn.L1Loss())(column, values), F.l1_loss(column, values.view(4, 1)))


def test_an_unknown_task_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match="data.task='ranking': expected one of classification, regression"):
        task_class("ranking")


def test_the_config_checks_import_no_torch() -> None:
    code = "import sys; import src.utils.config, src.trainer.tasks; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
