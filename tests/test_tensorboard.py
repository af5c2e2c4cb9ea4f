"""TensorBoard compares runs: a sweep's runs are named by their folders, train and val
curves share a chart per metric, and the HParams tab gets what tells the runs apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import FAST, run_cli

# Two jobs that differ in their model only; the other overrides are shared.
SHARED = ["data=synthetic", "data.dataset.train_size=300", "trainer.epochs=2", "optimizer.lr=0.01", *FAST]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("tensorboard")
    result = run_cli("train.py", "-m", "model=mlp,linear", *SHARED, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = (cwd / "saved" / "multirun").iterdir()
    return path


def events_of(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def test_each_run_is_named_by_its_folder_and_the_jobs_by_what_differs(sweep: Path) -> None:
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_model=mlp", "1_model=linear"]
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep.parents[1])).Runs()  # tensorboard --logdir saved/
    assert sorted(runs) == [f"multirun/{sweep.name}/0_model=mlp", f"multirun/{sweep.name}/1_model=linear"]


def test_train_and_val_curves_share_a_chart_per_metric(sweep: Path) -> None:
    events = events_of(sweep / "0_model=mlp")
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts["loss"] == ["^train/epoch_loss$", "^val/loss$"], "the epoch means, not the per-step loss"
    assert charts["accuracy"] == ["^train/accuracy$", "^val/accuracy$"]
    assert list(charts)[:2] == ["loss", "accuracy"]
    # Each chart's tags are scalars of the run, at the same steps.
    assert [e.step for e in events.Scalars("train/epoch_loss")] == [e.step for e in events.Scalars("val/loss")]


def test_the_scalars_page_opens_on_the_curves(sweep: Path) -> None:
    # TensorBoard sorts tag groups (what precedes the first '/') by name and opens the first two.
    scalars = events_of(sweep / "0_model=mlp").Tags()["scalars"]
    groups = sorted({tag.split("/", 1)[0] for tag in scalars})
    assert groups[:2] == ["train", "val"]
    assert {"zz_hparams/epoch", "zz_hparams/best/val/loss", "zz_hparams/test/accuracy"} <= set(scalars)
    assert "epoch" not in scalars and "test/accuracy" not in scalars


def test_hparams_are_the_group_choices_and_the_command_line_values(sweep: Path) -> None:
    plugin = events_of(sweep / "1_model=linear").PluginTagToContent("hparams")
    assert "_hparams_/experiment" not in plugin, "TensorBoard gathers the columns from all runs, the differing first"
    hparams = HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info.hparams
    choices = {name: hparams[name].string_value for name in ("model", "data", "loss", "optimizer", "scheduler")}
    assert choices == {"model": "linear", "data": "synthetic", "loss": "cross_entropy", "optimizer": "adam", "scheduler": "none"}
    assert hparams["optimizer.lr"].number_value == 0.01 and hparams["trainer.epochs"].number_value == 2
    assert hparams["data.dataset.train_size"].number_value == 300
    for bookkeeping in ("trainer.device", "trainer.progress", "logger", "resume", "sweep.resume", "data.root", "hparams_search"):
        assert bookkeeping not in hparams
    assert "data.batch_size" not in hparams and "model._target_" not in hparams, "defaults the command line left alone"
    assert "_hparams_/session_end_info" in plugin


def test_an_evaluation_is_named_by_the_run_checkpoint_data_and_split(sweep: Path, tmp_path: Path) -> None:
    best = sweep / "0_model=mlp" / "checkpoints" / "best.pt"
    result = run_cli("test.py", f"checkpoint='{best}'", "split=val", "device=cpu", cwd=tmp_path)  # quoted: the path holds '='
    assert result.returncode == 0, result.stderr
    (eval_dir,) = (tmp_path / "saved" / "evals").glob("*/*")
    assert eval_dir.parent.name == f"{sweep.name}_0_model=mlp-best-synthetic-val"
    assert "val/accuracy" in events_of(eval_dir).Tags()["scalars"]
