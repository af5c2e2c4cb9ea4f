"""K-fold cross-validation: data.folds=K data.fold=i validates on fold i, and a sweep over
the folds reports each configuration's mean and standard deviation."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, run_cli
from src.data.builder import build_data
from src.data.splits import kfold_split
from src.utils.config import validate_train_config
from src.utils.errors import UserError
from src.utils.sweep import fold_rows
from test_tasks_and_data import write_image_folder, write_linear_csv


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def test_the_folds_are_disjoint_cover_the_samples_and_follow_the_seed() -> None:
    held_out = [kfold_split(103, 5, fold, seed=7)[1] for fold in range(5)]
    assert sorted(len(part) for part in held_out) == [20, 20, 21, 21, 21]
    assert sorted(torch.cat(held_out).tolist()) == list(range(103)), "disjoint, and together every sample"
    kept, val = kfold_split(103, 5, 2, seed=7)
    assert sorted(torch.cat([kept, val]).tolist()) == list(range(103))
    assert torch.equal(kfold_split(103, 5, 2, seed=7)[1], val), "the same seed, the same fold"
    assert not torch.equal(kfold_split(103, 5, 2, seed=8)[1], val)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.folds=1", "data.fold=0"], "data.folds=1: expected an integer >= 2"),
        (["data.folds=5", "data.fold=5"], "data.fold=5: expected an integer from 0 to 4"),
        (["data.folds=5", "data.fold=-1"], "data.fold=-1: expected an integer from 0 to 4"),
        (["data.fold=2"], "data.fold=2 needs data.folds"),
        (["data.folds=5"], "data.folds=5 needs data.fold"),
    ],
)
def test_fold_settings_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_train_config(compose("data=synthetic", *overrides))


def test_the_fold_replaces_val_split_and_allows_validation_without_it() -> None:
    validate_train_config(compose("data=synthetic", "data.val_split=0", "data.folds=4", "data.fold=1"))


@pytest.mark.parametrize("data", ["in_memory", "csv", "image_folder"])
def test_every_kind_of_data_validates_on_its_fold(tmp_path: Path, data: str) -> None:
    overrides = {  # 16 training samples each: a table's rows and a folder's images less their 20% test split
        "in_memory": ["data=synthetic", "data.dataset.train_size=16"],
        "csv": ["data=csv", f"data.path={write_linear_csv(tmp_path / 'table.csv', rows=20)}", "data.target=price"],
        "image_folder": ["data=image_folder", f"data.root={write_image_folder(tmp_path / 'photos', per_class=10)}", "data.num_classes=2"],
    }[data]
    cfg = compose(*overrides, "data.folds=4", "data.fold=3")
    splits = build_data(cfg.data, torch.device("cpu"), seed=0, splits=("train", "val"))
    assert (splits.train.num_samples, splits.val.num_samples) == (12, 4)
    assert splits.in_memory == (data != "image_folder"), "image folders take the DataLoader path"


def test_too_many_folds_for_the_data_are_refused() -> None:
    cfg = compose("data=synthetic", "data.dataset.train_size=3", "data.folds=4", "data.fold=0")
    with pytest.raises(UserError, match="data.folds=4 is more than the 3 training sample"):
        build_data(cfg.data, torch.device("cpu"), seed=0, splits=("train", "val"))


def test_a_five_fold_sweep_reports_the_mean_and_std_of_its_folds(tmp_path: Path) -> None:
    result = run_cli(
        "train.py", "-m", "data=synthetic", "data.dataset.train_size=200", "data.dataset.test_size=100", "trainer.epochs=1",
        "logger=[]", *FAST, "data.folds=5", "data.fold=range(5)", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "saved" / "multirun").iterdir()
    runs = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert len(runs) == 5
    with open(sweep / "summary_folds.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["folds"] == "5/5" and "data.fold=" not in row["configuration"]
    for column, values in [
        ("best", [run["best_metric"] for run in runs]),
        ("test/accuracy", [run["test"]["test/accuracy"] for run in runs]),
    ]:
        assert float(row[f"{column} mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row[f"{column} std"]) == pytest.approx(statistics.stdev(values))
    assert "Cross-validation: mean ± standard deviation" in (sweep / "summary.md").read_text()


def test_a_grid_over_folds_gets_one_row_per_configuration() -> None:
    def job(overrides: str, best: float, status: str = "completed") -> dict:
        return {"status": status, "overrides": overrides, "monitor": "val/accuracy", "best": best, "test/accuracy": best - 0.1}

    rows = [
        job("model=mlp data.folds=3 data.fold=0", 0.80),
        job("model=mlp data.folds=3 data.fold=1", 0.90),
        job("model=mlp data.folds=3 data.fold=2", 0.70, status="failed"),
        job("model=cnn data.folds=3 data.fold=0", 0.95),
        job("model=cnn data.folds=3 data.fold=1", 0.97),
        job("model=cnn data.folds=3 data.fold=2", 0.99),
    ]
    cnn, mlp = fold_rows(rows, mode="max")  # the best mean first
    assert (cnn["configuration"], cnn["folds"], cnn["best mean"]) == ("model=cnn data.folds=3", "3/3", pytest.approx(0.97))
    assert cnn["best std"] == pytest.approx(0.02) and cnn["test/accuracy mean"] == pytest.approx(0.87)
    assert (mlp["configuration"], mlp["folds"], mlp["best mean"]) == ("model=mlp data.folds=3", "2/3", pytest.approx(0.85))
    assert fold_rows([job("model=mlp", 0.8)], mode="max") == [], "no folds, no cross-validation rows"
