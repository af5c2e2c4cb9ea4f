"""End to end: the real train.py and test.py on tiny FashionMNIST files made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, make_mnist_like, run_cli, run_dirs


def train_fashion(cwd: Path, root: Path, *overrides: str):
    return run_cli("train.py", "data=fashion_mnist", f"data.root={root}", *FAST, *overrides, cwd=cwd)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, fashion_root: Path) -> Path:
    """One 3-epoch mlp run shared by the tests that only read its outputs."""
    cwd = tmp_path_factory.mktemp("mlp_run")
    result = train_fashion(cwd, fashion_root, "model=mlp", "trainer.epochs=3", "trainer.log_every_n_steps=2")
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir


def test_run_folder_has_the_documented_layout(mlp_run: Path) -> None:
    assert mlp_run.parent.name == "fashion_mnist-mlp"
    for name in (".hydra/config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "train.log", "metrics.json"):
        assert (mlp_run / name).is_file(), name
    assert list(mlp_run.glob("events.out.tfevents.*"))
    assert not list(mlp_run.rglob("*.tmp")), "no temporary checkpoint files are left behind"


def test_metrics_json_and_log_tell_the_whole_story(mlp_run: Path) -> None:
    metrics = json.loads((mlp_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/loss" and metrics["epochs_run"] == 3
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert metrics["best_metric"] == min(r["val/loss"] for r in metrics["history"])
    assert set(metrics["test"]) == {"test/loss", "test/accuracy", "test/top5", "test/macro_f1"}
    assert metrics["test"]["test/accuracy"] > 0.5  # the tiny squares are easy to learn
    # best.pt's precision, recall and F1 on the test split, per class by its name, and their macro averages.
    per_class = metrics["test_per_class"]
    assert list(per_class["classes"])[:2] == ["T-shirt/top", "Trouser"]
    assert per_class["macro"]["f1"] == pytest.approx(metrics["test"]["test/macro_f1"])
    assert sum(c["support"] for c in per_class["classes"].values()) == sum(map(sum, metrics["test_confusion_matrix"])) == 200
    log = (mlp_run / "train.log").read_text()
    assert "epoch 3/3" in log and "Results" in log and "Best checkpoint" in log
    # Every metric of each split, top-5 too (training does not compute it).
    top5 = next(line for line in log.splitlines() if line.startswith("│ top5"))
    cells = [cell.strip() for cell in top5.strip("│").split("│")]
    assert cells[:2] == ["top5", "-"] and cells[3] == f"{metrics['test']['test/top5']:.4f}"
    assert "Per class" in log and "│ Ankle boot" in log


def test_the_config_is_printed_short_unless_asked_for_in_full(tmp_path: Path, mlp_run: Path) -> None:
    log = (mlp_run / "train.log").read_text()
    assert "groups: " in log and "data=fashion_mnist" in log and "model=mlp" in log
    assert "overrides: data=fashion_mnist" in log and "trainer.epochs=3" in log
    assert "hidden_sizes" not in log, "the full config is not printed by default"
    small = ["data=synthetic", "data.dataset.train_size=200", "data.dataset.test_size=50", "trainer.epochs=1"]
    result = run_cli("train.py", *small, *FAST, "print_config=full", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hidden_sizes" in result.stdout and "groups: " not in result.stdout


def test_checkpoint_holds_only_plain_state(mlp_run: Path) -> None:
    state = torch.load(mlp_run / "checkpoints" / "last.pt", weights_only=True)
    for key in ("format_version", "model", "optimizer", "scheduler", "grad_scaler", "epoch", "step",
                "batch_in_epoch", "best_metric", "early_stopping", "rng", "config", "history"):
        assert key in state, key
    assert state["epoch"] == 3 and state["step"] == 3 * 5  # 540 training images / batch 128 -> 5 steps
    assert "model:" in state["config"] and "${" not in state["config"]  # resolved YAML


def test_tensorboard_has_step_epoch_and_final_scalars(mlp_run: Path) -> None:
    events = EventAccumulator(str(mlp_run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr"} <= scalars
    assert {"train/epoch_loss", "train/accuracy", "val/loss", "val/accuracy", "val/top5", "val/macro_f1"} <= scalars
    assert [e.step for e in events.Scalars("val/loss")] == [5, 10, 15]  # global step at each epoch's end
    assert len(events.Scalars("train/loss")) == 15 // 2  # every 2nd of 15 steps
    # The final metrics, which the HParams tab shows beside the run's hyperparameters.
    assert {"zz_hparams/test/loss", "zz_hparams/test/accuracy", "zz_hparams/test/top5"} <= scalars
    best = json.loads((mlp_run / "metrics.json").read_text())["best_metric"]
    assert events.Scalars("zz_hparams/best/val/loss")[-1].value == pytest.approx(best)
    # best.pt's confusion matrix and per-class scores on the test split, once, at the last step.
    assert [e.step for e in events.Images("test/confusion_matrix")] == [15]
    assert [e.step for e in events.Images("test/per_class")] == [15]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_train_then_evaluate_best_checkpoint(tmp_path: Path, fashion_root: Path, mlp_run: Path, model: str) -> None:
    if model == "mlp":
        run_dir = mlp_run
    else:
        result = train_fashion(tmp_path, fashion_root, f"model={model}", "trainer.epochs=2")
        assert result.returncode == 0, result.stderr
        (run_dir,) = run_dirs(tmp_path)
    best = run_dir / "checkpoints" / "best.pt"

    # No model flags: test.py rebuilds the model from the config in the checkpoint.
    result = run_cli("test.py", f"checkpoint={best}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Confusion matrix" in result.stdout and "Per class" in result.stdout and "1 Trouser" in result.stdout
    record = json.loads((run_dir / "checkpoints" / "best.test.json").read_text())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"]["test/accuracy"] == pytest.approx(train_metrics["test"]["test/accuracy"])
    assert sum(map(sum, record["confusion_matrix"])) == record["samples"] == 200
    assert record["per_class"]["macro"] == pytest.approx(train_metrics["test_per_class"]["macro"]), "as train.py tested best.pt"

    # Its own folder says what it evaluated: the run, the checkpoint, the data, the split.
    (eval_dir,) = (tmp_path / "saved" / "evals").glob("*/*")
    assert eval_dir.parent.name == f"fashion_mnist-{model}_{run_dir.name}-best-fashion_mnist-test"
    events = EventAccumulator(str(eval_dir))
    events.Reload()
    assert {"test/confusion_matrix", "test/per_class"} <= set(events.Tags()["images"])


def test_evaluate_on_val_split(tmp_path: Path, mlp_run: Path) -> None:
    result = run_cli("test.py", f"checkpoint={mlp_run / 'checkpoints' / 'best.pt'}", "split=val", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((mlp_run / "checkpoints" / "best.val.json").read_text())
    best = json.loads((mlp_run / "metrics.json").read_text())["best"]
    assert record["samples"] == 60  # 10% of the 600 training images
    assert record["metrics"]["val/loss"] == pytest.approx(best["val/loss"], rel=1e-5)


def test_evaluate_with_data_overrides_on_the_stored_data_config(tmp_path: Path, mlp_run: Path) -> None:
    # Another copy of the dataset, with 50 test images: data.root points test.py at it,
    # as it points train.py at a dataset.
    other = make_mnist_like(tmp_path / "other", test=50, seed=1)
    best = mlp_run / "checkpoints" / "best.pt"
    result = run_cli("test.py", f"checkpoint={best}", f"data.root={other}", "data.eval_batch_size=16", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((mlp_run / "checkpoints" / "best.test.json").read_text())
    assert record["data"] == "fashion_mnist" and record["samples"] == 50


def test_evaluate_on_another_dataset_with_its_root(tmp_path: Path, mlp_run: Path) -> None:
    mnist = make_mnist_like(tmp_path / "mnist", folder="MNIST", test=30, seed=2)
    best = mlp_run / "checkpoints" / "best.pt"
    result = run_cli("test.py", f"checkpoint={best}", "data=mnist", f"data.root={mnist}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((mlp_run / "checkpoints" / "best.mnist-test.json").read_text())
    assert record["data"] == "mnist" and record["samples"] == 30


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "Invalid value data.batch_size=0: expected a positive integer"),
        ("data.rooot=elsewhere", "data.rooot is not a key of the data config stored in"),
    ],
)
def test_bad_data_overrides_of_the_stored_config_are_explained(tmp_path: Path, mlp_run: Path, override: str, message: str) -> None:
    result = run_cli("test.py", f"checkpoint={mlp_run / 'checkpoints' / 'best.pt'}", override, "device=cpu", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_early_stopping_ends_training_and_says_so(tmp_path: Path, fashion_root: Path) -> None:
    # Nothing can improve by more than 100, so the counter runs out after 2 more epochs.
    result = train_fashion(
        tmp_path, fashion_root, "trainer.epochs=10", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=100"
    )
    assert result.returncode == 0, result.stderr
    assert "Early stopping after epoch 3" in result.stdout
    (run_dir,) = run_dirs(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["stopped_early"] is True


def test_both_data_paths_give_the_same_run(tmp_path: Path, fashion_root: Path) -> None:
    histories = []
    for in_memory in ("true", "false"):
        cwd = tmp_path / in_memory
        cwd.mkdir()
        result = train_fashion(cwd, fashion_root, "trainer.epochs=2", f"data.in_memory={in_memory}")
        assert result.returncode == 0, result.stderr
        assert ("in-memory" if in_memory == "true" else "DataLoader") in result.stdout
        (run_dir,) = run_dirs(cwd)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in metrics["history"]] + [metrics["test"]])
    assert histories[0] == histories[1]


def test_offline_without_files_fails_fast_and_names_the_folder(tmp_path: Path) -> None:
    # A proxy on a closed local port makes every download fail at once, as offline.
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = run_cli("train.py", "data=fashion_mnist", "data.root=empty", *FAST, cwd=tmp_path, env=offline)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "empty/FashionMNIST/raw/" in result.stderr and "train-images-idx3-ubyte" in result.stderr
    assert run_dirs(tmp_path) == []
