"""Loggers: chosen by config, several at once, and continued across a resume without a
duplicated or out-of-order point."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, REPO, run_cli, run_dirs

ALL = "logger=[tensorboard,csv]"
# 1600 training samples in batches of 64: 25 steps per epoch; train/loss every 5 steps.
RUN = ["data=synthetic", "trainer.epochs=2", "trainer.log_every_n_steps=5", "trainer.save_every_n_epochs=1", *FAST]
STEPS_PER_EPOCH = 25


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs with every logger, then a resume from the end of epoch 1 with another
    learning rate: epoch 2 is trained again, differently, after it was logged once."""
    cwd = tmp_path_factory.mktemp("loggers")
    result = run_cli("train.py", *RUN, ALL, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'epoch_001.pt'}", "optimizer.lr=0.003", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return {"cwd": cwd, "run_dir": run_dir, "history": history}


def test_the_csv_table_has_each_step_once_and_the_resumed_values(resumed: dict) -> None:
    with open(resumed["run_dir"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["step", "epoch"]
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(set(steps)), "no step twice, none out of order"
    assert steps == list(range(5, 2 * STEPS_PER_EPOCH + 1, 5))
    epochs = {int(row["step"]): row for row in rows if row["epoch"]}
    assert sorted(epochs) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH] and epochs[STEPS_PER_EPOCH]["epoch"] == "1"
    for record, step in zip(resumed["history"], sorted(epochs)):
        assert float(epochs[step]["val/loss"]) == pytest.approx(record["val/loss"])
    assert {row["train/lr"] for row in rows if int(row["step"]) > STEPS_PER_EPOCH} == {"0.003"}, "epoch 2 is the resumed run's"
    assert rows[-1]["test/accuracy"] and rows[-1]["best/val/loss"]


def test_tensorboard_purged_what_came_after_the_checkpoint(resumed: dict) -> None:
    events = EventAccumulator(str(resumed["run_dir"] / "tensorboard"))
    events.Reload()
    val = events.Scalars("val/loss")
    assert [e.step for e in val] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert val[-1].value == pytest.approx(resumed["history"][-1]["val/loss"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, 2 * STEPS_PER_EPOCH + 1, 5))
    assert "train/first_batch" in events.Tags()["images"] and events.PluginTagToContent("hparams")


def compose_loggers(*overrides: str) -> list[str]:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return list(cfg.get("logger") or {})


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ([], ["tensorboard"]),
        (["logger=csv"], ["csv"]),
        (["logger=[tensorboard,csv]"], ["tensorboard", "csv"]),
        (["logger=[]"], []),
        (["logger=none"], []),
    ],
)
def test_the_logger_group_takes_one_several_or_none(overrides: list[str], names: list[str]) -> None:
    assert compose_loggers(*overrides) == names


def test_no_logger_writes_only_the_run_itself(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=synthetic", "trainer.epochs=1", *FAST, "logger=[]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "metrics.csv").exists()
    assert (run_dir / "metrics.json").is_file()


def test_a_logger_config_without_a_class_is_refused(tmp_path: Path) -> None:
    result = run_cli("train.py", "logger=csv", "logger.csv._target_=null", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "logger.csv names no class" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []


def test_your_own_logger_plugs_in_with_one_class_and_one_yaml(tmp_path: Path) -> None:
    """examples/custom_project: a plain class (no framework import) beside the csv logger."""
    project = tmp_path / "custom_project"
    shutil.copytree(REPO / "examples" / "custom_project", project)
    args = ["--config-dir", "conf", "model=tiny", "data=bars", *FAST]
    result = run_cli("train.py", *args, "trainer.epochs=1", "logger=[csv,jsonl]", cwd=project, env={"PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(project)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=2", cwd=project, env={"PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and [r["epoch"] for r in records if "epoch" in r] == [1, 2]
    assert len([r for r in records if "final" in r]) == 2, "the first run's end, then the resumed run's"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loggers"] == {"csv": {}, "jsonl": {}}
