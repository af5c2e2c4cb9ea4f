"""Tasks: their metrics on hand-computed cases, exact mid-epoch resume of their sums,
how targets reach the loss, and a multi-label table trained through the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from conftest import FAST, REPO, readme_python_block, run_cli, run_dirs
from src.data.tabular import CSVTable
from src.trainer.checkpoint import load_checkpoint
from src.trainer.class_report import MAX_ROWS
from src.trainer.tasks import TASKS, Task, task_class
from src.trainer.tasks.classification import Classification
from src.trainer.tasks.multilabel import Multilabel
from src.trainer.tasks.regression import Regression
from src.utils.errors import UserError

CPU = torch.device("cpu")


def run_batches(metrics, batches) -> dict[str, float]:
    """Add (outputs, targets, batch loss) batches; the metrics so far."""
    for outputs, targets, loss in batches:
        metrics.update(outputs, targets, torch.as_tensor(loss))
    return metrics.compute()


def test_classification_metrics_and_confusion_matrix() -> None:
    scores = torch.tensor([6.0, 5, 4, 3, 2, 1])
    outputs = torch.stack([scores, scores, scores, scores.flip(0)])  # predicts class 0, 0, 0, 5
    targets = torch.tensor([0, 4, 5, 5])  # right, in the top 5, not in the top 5, right
    task = Classification(num_outputs=6)
    metrics = task.metrics(CPU)
    values = run_batches(metrics, [(outputs[:2], targets[:2], 1.0), (outputs[2:], targets[2:], 3.0)])
    # Macro F1 over the classes that occur or are predicted (0, 4, 5): F1 1/2, 0, 2/3.
    assert values == {"loss": 2.0, "accuracy": 0.5, "top5": 0.75, "macro_f1": pytest.approx(7 / 18)}
    matrix = metrics.extras()["confusion_matrix"].to_json()
    assert matrix[0][0] == 1 and matrix[4][0] == 1 and matrix[5][0] == 1 and matrix[5][5] == 1
    assert sum(map(sum, matrix)) == 4
    assert task.metric_names(training=True) == ["loss", "accuracy"], "top-5 and macro F1 are left out of training"
    assert Classification(num_outputs=5).metric_names() == ["loss", "accuracy", "macro_f1"], "top-5 needs more than 5 classes"


def test_per_class_precision_recall_f1_from_a_hand_computed_confusion_matrix() -> None:
    names = ["cat", "dog", "bird", "fish"]
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 0, 1, 1])  # rows (true): cat [2 1 0 0], dog [1 1 0 0], bird [0 1 0 0], fish [0 0 0 0]
    metrics = Classification(num_outputs=4).metrics(CPU)
    values = run_batches(metrics, [(F.one_hot(predicted, 4).float(), targets, 1.0)])
    extras = metrics.extras(names)
    assert extras["confusion_matrix"].to_json() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    report = extras["per_class"].to_json()
    approx = lambda scores: pytest.approx(scores)  # noqa: E731
    assert report["classes"] == {
        "cat": approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}),
        "dog": approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5, "support": 2}),
        "bird": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},  # never predicted: 0, not undefined
        "fish": {"precision": None, "recall": None, "f1": None, "support": 0},  # neither occurs nor is predicted
    }
    # Macro averages leave out the class that has no score (fish).
    assert report["macro"] == approx({"precision": 1 / 3, "recall": 7 / 18, "f1": 16 / 45})
    assert values["macro_f1"] == pytest.approx(16 / 45) and values["accuracy"] == 0.5
    assert list(metrics.extras()["per_class"].to_json()["classes"]) == ["0", "1", "2", "3"], "no names: indices"


def test_the_per_class_table_of_many_classes_shows_the_worst() -> None:
    num_classes = 50
    targets = torch.arange(num_classes).repeat(2)
    predicted = torch.cat([targets[:num_classes], targets[num_classes:].roll(1)])  # each class right once of twice
    predicted[:5] = 0  # classes 1-4 never right
    metrics = Classification(num_outputs=num_classes).metrics(CPU)
    run_batches(metrics, [(F.one_hot(predicted, num_classes).float(), targets, 1.0)])
    report = metrics.extras([f"class {i}" for i in range(num_classes)])["per_class"]
    rows = report.rows()
    assert len(rows) == 1 + MAX_ROWS + 1, "header, the shown classes, macro average"
    assert {row[0] for row in rows[1:5]} == {"class 1", "class 2", "class 3", "class 4"}, "the worst first"
    assert len(report.to_json()["classes"]) == num_classes, "the JSON record keeps every class"


def test_regression_metrics() -> None:
    outputs = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])  # errors 0, 0, 0, 2 around a mean of 2.5
    values = run_batches(Regression(num_outputs=1).metrics(CPU), [(outputs, targets, 0.5)])
    assert values == {"loss": 0.5, "mse": 1.0, "mae": 0.5, "r2": pytest.approx(1 - 4 / 5)}


def test_standardised_regression_trains_on_z_scores_and_reports_in_the_targets_units() -> None:
    """A price column of mean 1e5 and std 2e4: the model outputs (price - 1e5) / 2e4."""
    task = Regression(num_outputs=1, target_stats={"mean": [1e5], "std": [2e4]})
    prices = torch.tensor([80e3, 100e3, 140e3])
    outputs = torch.tensor([[-1.0], [0.0], [2.5]])  # 80e3, 100e3, 150e3 in prices
    assert task.loss(nn.MSELoss())(outputs, prices).item() == pytest.approx(0.25 / 3)  # only the last is off, by 0.5
    values = run_batches(task.metrics(CPU), [(outputs, prices, 0.25 / 3)])
    assert values["mse"] == pytest.approx(10e3**2 / 3) and values["mae"] == pytest.approx(10e3 / 3)
    stats = Regression.target_statistics(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert stats == {"mean": [2.0, 5.0], "std": [pytest.approx(2**0.5), 1.0]}, "a constant column is only shifted"


def test_multilabel_metrics() -> None:
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    outputs = torch.tensor(  # a logit above 0 predicts the label; the last label never occurs
        [[2.0, -1, 3, -1], [-2, 1, 0.5, -1], [4, -3, -1, -1], [0.0, -1, -2, -3]]
    )
    values = run_batches(Multilabel(num_outputs=4).metrics(CPU), [(outputs[:3], targets[:3], 0.25), (outputs[3:], targets[3:], 0.5)])
    # Samples 1 and 4 are exactly right (a logit of 0 is a sigmoid of 0.5: not predicted).
    # Per label (TP, FP, FN): (2, 0, 0), (1, 0, 1), (1, 1, 0), and the last never occurs nor is predicted.
    assert values == {
        "loss": pytest.approx((0.25 * 3 + 0.5) / 4),
        "exact_match": 0.5,
        "micro_f1": pytest.approx(2 * 4 / (2 * 4 + 1 + 1)),
        "macro_f1": pytest.approx((1 + 2 / 3 + 2 / 3) / 3),
    }


@pytest.mark.parametrize("task", [Classification(3), Regression(3), Multilabel(3)], ids=lambda t: t.name)
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
            "multilabel": torch.randint(2, (size, task.num_outputs), generator=g).float(),
        }[task.name]
        # Losses of many magnitudes: sums of them round differently when grouped differently.
        loss = torch.rand((), generator=g).item() * 10 ** torch.randint(-4, 4, (), generator=g).item()
        batches.append((outputs, targets, loss))
    return batches


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("split", [23, 67, 93])
def test_a_mid_epoch_state_dict_resumes_the_sums_exactly(name: str, split: int) -> None:
    task = task_class(name)(7)
    # More batches than ClassificationMetrics sums or counts at once, the last one smaller;
    # the state is taken inside the first, second and third group of losses.
    batches = random_batches(task, 150) + random_batches(task, 1, size=3)
    straight = run_batches(task.metrics(CPU, training=True), batches)

    interrupted = task.metrics(CPU, training=True)
    run_batches(interrupted, batches[:split])  # and computed there, as a validation inside an epoch does
    state = interrupted.state_dict()
    assert run_batches(interrupted, batches[split:]) == straight, "taking the state changes nothing"
    buffer = io.BytesIO()
    torch.save(state, buffer)  # written after the sums went on: the state must not have moved with them
    buffer.seek(0)
    resumed = task.metrics(CPU, training=True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert run_batches(resumed, batches[split:]) == straight


def test_bfloat16_losses_of_an_unfinished_group_resume_exactly() -> None:
    # A loss module under bf16 autocast may return bfloat16: the stored group must load back.
    task = Classification(7)
    batches = [(o, t, torch.tensor(loss, dtype=torch.bfloat16)) for o, t, loss in random_batches(task, 100)]
    straight = run_batches(task.metrics(CPU, training=True), batches)
    interrupted = task.metrics(CPU, training=True)
    run_batches(interrupted, batches[:70])
    resumed = task.metrics(CPU, training=True)
    resumed.load_state_dict(interrupted.state_dict())
    assert run_batches(resumed, batches[70:]) == straight


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
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])  # integer multi-hot rows work too
    bce = Multilabel(3).loss(nn.BCEWithLogitsLoss())
    assert torch.equal(bce(outputs, labels), F.binary_cross_entropy_with_logits(outputs, labels.float()))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("ranking", "it is not a dotted path"),
        ("my_missing_tasks.Ranking", "it cannot be imported (No module named 'my_missing_tasks')"),
        ("os.makedirs", "it is a function, not a Task subclass"),
        ("src.trainer.callbacks.Callback", "it is the class src.trainer.callbacks.Callback, not a Task subclass"),
    ],
)
def test_an_unknown_task_is_refused_with_the_known_ones(value: str, why: str) -> None:
    with pytest.raises(UserError) as refused:
        task_class(value)
    message = str(refused.value)
    assert message.startswith(f"Invalid value data.task={value!r}: {why}. Expected one of classification, regression, multilabel, ")
    assert "dotted path of a subclass of src.trainer.tasks.Task" in message and "\n" not in message


def test_your_own_task_class_trains_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tasks.py").write_text(readme_python_block("class TrainF1"))
    mine = ["data.task=my_tasks.TrainF1", "trainer.monitor=train/macro_f1", "trainer.mode=max"]
    small = ["data=synthetic", "data.dataset.train_size=200", "data.dataset.test_size=50", "model.hidden_sizes=[8]", "trainer.epochs=1"]
    result = run_cli("train.py", *small, *mine, *FAST, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert {"train/macro_f1", "train/top5"} <= history[0].keys(), "the training batches report what TrainF1 names"
    # The checkpoint names your task by its path; loading it (as test.py and resume= do) accepts a Task subclass.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt", resuming=True)
    assert OmegaConf.create(state["config"]).data.task == "my_tasks.TrainF1"


def test_the_config_checks_import_no_torch() -> None:
    code = "import sys; import src.utils.config, src.trainer.tasks; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def write_multilabel_csv(path: Path, rows: int = 300) -> Path:
    """Labels a, b, c of four features: f1 > 0, f2 + f3 > 0, f4 > 0.5 (linearly separable)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4))
    labels = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 0.5], axis=1).astype(int)
    lines = ["f1,f2,f3,f4,a,b,c"] + [",".join([*(f"{v:.4f}" for v in row), *map(str, y)]) for row, y in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_multilabel_table_takes_0_or_1_per_label(tmp_path: Path) -> None:
    table = write_multilabel_csv(tmp_path / "labels.csv", rows=20)
    data = CSVTable(str(table), target=["a", "b", "c"], task="multilabel", test_split=0.0)
    assert data.targets.shape == (20, 3) and data.targets.dtype == torch.float32
    assert set(data.targets.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(UserError, match="the label column 'f4' holds .*, but multilabel targets are 0 or 1"):
        CSVTable(str(table), target=["a", "f4"], task="multilabel")


def test_a_linear_model_learns_a_multilabel_table(tmp_path: Path) -> None:
    table = write_multilabel_csv(tmp_path / "labels.csv")
    result = run_cli(
        "train.py", "data=csv", f"data.path={table}", "data.target=[a,b,c]", "data.task=multilabel", "loss=bce",
        "model=linear", "optimizer.lr=0.1", "trainer.epochs=10", "trainer.monitor=val/exact_match", "trainer.mode=max",
        *FAST, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert set(test) == {"test/loss", "test/exact_match", "test/micro_f1", "test/macro_f1"}
    assert test["test/exact_match"] >= 0.85 and test["test/macro_f1"] >= 0.9

    result = run_cli("test.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "checkpoints" / "best.test.json").read_text())
    assert record["metrics"] == test and "confusion_matrix" not in record

    # predict.py: per label, 1 when its probability is above 0.5, and the probability.
    output = tmp_path / "labels_predicted.csv"
    result = run_cli("predict.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"inputs={table}", f"output={output}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == ["input", "a", "a_probability", "b", "b_probability", "c", "c_probability"]
    for row in rows:
        assert all(row[label] == str(int(float(row[f"{label}_probability"]) > 0.5)) for label in "abc")
    truth = list(csv.DictReader(table.open()))
    right = sum(all(row[label] == true[label] for label in "abc") for row, true in zip(rows, truth))
    assert right / len(rows) >= 0.85


def test_a_multilabel_table_with_a_class_index_loss_says_which_loss_to_use(tmp_path: Path) -> None:
    table = write_multilabel_csv(tmp_path / "labels.csv", rows=20)
    result = run_cli("train.py", "data=csv", f"data.path={table}", "data.target=[a,b,c]", "data.task=multilabel", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "data.task=multilabel, but the loss torch.nn.CrossEntropyLoss" in result.stderr and "add loss=bce" in result.stderr
    assert run_dirs(tmp_path) == []
