"""Loggers: chosen by config, several at once, and continued across a resume without a
duplicated or out-of-order point. MLflow and W&B are the real packages (W&B offline)."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, REPO, run_cli, run_dirs

ALL = "logger=[tensorboard,csv,mlflow,wandb]"
# 1600 training samples in batches of 64: 25 steps per epoch; train/loss every 5 steps.
RUN = ["data=synthetic", "trainer.epochs=2", "trainer.log_every_n_steps=5", "trainer.save_every_n_epochs=1", *FAST]
STEPS_PER_EPOCH = 25


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs with every logger, then a resume from the end of epoch 1 with another
    learning rate: epoch 2 is trained again, differently, after it was logged once."""
    cwd = tmp_path_factory.mktemp("loggers")
    # W&B keeps its settings and caches under the home folder unless told otherwise.
    env = {f"WANDB_{name}_DIR": str(cwd / "wandb-home") for name in ("CONFIG", "CACHE", "DATA")}
    result = run_cli("train.py", *RUN, ALL, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    first = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loggers"]
    resumed_at_ms = time.time() * 1000
    # A resume logs to the loggers its own command line names (a checkpoint is data).
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'epoch_001.pt'}", "optimizer.lr=0.003", ALL, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return {"cwd": cwd, "run_dir": run_dir, "first": first, "last": last["loggers"], "history": history, "resumed_at_ms": resumed_at_ms}


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
    events = EventAccumulator(str(resumed["run_dir"]))
    events.Reload()
    val = events.Scalars("val/loss")
    assert [e.step for e in val] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert val[-1].value == pytest.approx(resumed["history"][-1]["val/loss"])
    assert [e.step for e in events.Scalars("train/loss")] == list(range(5, 2 * STEPS_PER_EPOCH + 1, 5))
    assert "train/first_batch" in events.Tags()["images"] and events.PluginTagToContent("hparams")


def test_mlflow_continues_the_same_run_and_each_step_ends_with_the_resumed_value(resumed: dict) -> None:
    from mlflow import MlflowClient

    run_id = resumed["first"]["mlflow"]["run_id"]
    assert resumed["last"]["mlflow"]["run_id"] == run_id, "the checkpoint carries the run id over the resume"
    client = MlflowClient(f"sqlite:///{resumed['cwd'] / 'saved' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hydra-torch-trainer")
    assert [run.info.run_id for run in client.search_runs([experiment.experiment_id])] == [run_id], "one run, not two"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.001" and run.data.params["trainer.epochs"] == "2"
    assert run.data.tags["resumed.optimizer.lr"] == "0.003", "MLflow keeps a param's first value; the resume's is a tag"
    assert run.data.tags["resumed_at_steps"] == str(STEPS_PER_EPOCH)
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]

    # MLflow cannot delete points: step 50 was logged before the resume too. The newest
    # point of every step is the resumed run's, and what the resume logged goes forward.
    points = sorted(client.get_metric_history(run_id, "val/loss"), key=lambda m: m.timestamp)
    newest = {m.step: m.value for m in points}
    assert newest == pytest.approx({r["epoch"] * STEPS_PER_EPOCH: r["val/loss"] for r in resumed["history"]})
    losses = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.timestamp)
    assert [m.step for m in losses if m.timestamp >= resumed["resumed_at_ms"]] == list(range(STEPS_PER_EPOCH + 5, 2 * STEPS_PER_EPOCH + 1, 5))
    assert run.data.metrics["val/loss"] == pytest.approx(resumed["history"][-1]["val/loss"])


def test_wandb_continues_the_same_offline_run(resumed: dict) -> None:
    run_id = resumed["first"]["wandb"]["run_id"]
    assert resumed["last"]["wandb"]["run_id"] == run_id
    offline = sorted((resumed["run_dir"] / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in offline] == [run_id, run_id], "one folder per process, one run id"
    first, second = (history(path / f"run-{run_id}.wandb") for path in offline)
    assert [step for step, _ in first] == sorted({step for step, _ in first})
    steps = [step for step, _ in second]
    assert steps == sorted(set(steps)) and steps[0] > STEPS_PER_EPOCH, "the resumed process starts after its checkpoint"
    assert dict(second)[2 * STEPS_PER_EPOCH]["val/loss"] == pytest.approx(resumed["history"][-1]["val/loss"])
    assert dict(second)[2 * STEPS_PER_EPOCH]["test/accuracy"] > 0


def history(path: Path) -> list[tuple[int, dict]]:
    """(step, values) of each history record in an offline W&B run file, in order."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for data in _leveldb_log_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            values = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append((record.history.step.num, values))
    return rows


def _leveldb_log_records(data: bytes, block: int = 32768) -> Iterator[bytes]:
    """W&B's transaction log: a 7-byte `:W&B` header, then LevelDB's log format (32 KiB
    blocks of chunks, each `crc32, length, type`: 1 whole, 2 first, 3 middle, 4 last)."""
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""


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
        ([ALL], ["tensorboard", "csv", "mlflow", "wandb"]),
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
    assert not list(run_dir.glob("events.out.tfevents.*")) and not (run_dir / "metrics.csv").exists()
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
    resume = [f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=2"]
    # A checkpoint is data: a resume logs to the loggers its own command line names.
    result = run_cli("train.py", "--config-dir", "conf", *resume, "logger=[csv,jsonl]", cwd=project, env={"PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and [r["epoch"] for r in records if "epoch" in r] == [1, 2]
    assert len([r for r in records if "final" in r]) == 2, "the first run's end, then the resumed run's"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["loggers"] == {"csv": {}, "jsonl": {}}
