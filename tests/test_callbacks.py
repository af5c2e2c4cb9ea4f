"""Callbacks plug into the loop by name: the shipped EMA and SWA, and your own class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FAST, assert_same_training, load, run_cli, run_dirs

RUN = ["data=synthetic", "data.dataset.train_size=600", "data.dataset.test_size=100", "model=cnn", "trainer.deterministic=true", *FAST]
EMA = ["callbacks=[ema]", "callbacks.ema.decay=0.9"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ema")
    result = run_cli("train.py", *RUN, *EMA, "trainer.epochs=3", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return run_dirs(cwd)[0]


def test_ema_weights_are_what_validation_best_pt_and_the_test_use(ema_run: Path) -> None:
    best = load(ema_run / "checkpoints" / "best.pt")
    ema = best["callbacks"]["ema"]
    for name, tensor in ema["average"].items():
        assert torch.equal(best["model"][name], tensor), f"best.pt's weights are the average: {name}"
    assert any(not torch.equal(ema["raw"][name], ema["average"][name]) for name in ema["average"]), "training goes on with its own weights"


def test_ema_resumes_bitwise(tmp_path: Path, ema_run: Path) -> None:
    result = run_cli("train.py", *RUN, *EMA, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_training(ema_run / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    resumed, straight = load(run_dir / "checkpoints" / "last.pt")["callbacks"]["ema"], load(ema_run / "checkpoints" / "last.pt")["callbacks"]["ema"]
    for part in ("average", "raw"):
        for name, tensor in straight[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)


def test_swa_writes_an_averaged_model_with_fresh_batch_norm_statistics(tmp_path: Path) -> None:
    result = run_cli("train.py", *RUN, "callbacks=[swa]", "callbacks.swa.start_epoch=2", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert "SWA of 2 epochs saved to" in result.stdout
    swa, last = load(run_dir / "checkpoints" / "swa.pt"), load(run_dir / "checkpoints" / "last.pt")
    assert int(last["callbacks"]["swa"]["n_averaged"]) == 2
    running_means = [k for k in swa["model"] if k.endswith("running_mean")]
    assert running_means and all(not torch.equal(swa["model"][k], last["model"][k]) for k in running_means)
    evaluated = run_cli("test.py", f"checkpoint={run_dir / 'checkpoints' / 'swa.pt'}", "device=cpu", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr


HOOK_RECORDER = '''
import json
from pathlib import Path


class HookRecorder:
    """A plain class: only the hooks it needs, no base class."""

    def __init__(self, out):
        self.out, self.calls = Path(out), []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_epoch_end(self, trainer, metrics):
        self.calls.append(f"epoch_end {trainer.epoch + 1} {sorted(metrics)}")

    def on_validation_end(self, trainer, metrics):
        self.calls.append(f"validation_end {sorted(metrics)}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")
        self.out.write_text(json.dumps(self.calls))
'''


def test_your_own_plain_class_is_a_callback(tmp_path: Path) -> None:
    (tmp_path / "my_callbacks.py").write_text(HOOK_RECORDER)
    out = tmp_path / "calls.json"
    result = run_cli(
        "train.py", "data=synthetic", "data.dataset.train_size=200", "data.dataset.test_size=50", *FAST, "trainer.epochs=2",
        "+callbacks.recorder._target_=my_callbacks.HookRecorder", f"+callbacks.recorder.out={out}",
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    train = ["train/accuracy", "train/loss"]
    val = sorted([*train, "val/accuracy", "val/loss", "val/macro_f1", "val/top5"])
    assert json.loads(out.read_text()) == [
        "fit_start",
        f"epoch_end 1 {train}", f"validation_end {val}",
        f"epoch_end 2 {train}", f"validation_end {val}",
        "fit_end",
    ]


def test_a_resume_builds_your_plain_callback_only_when_you_name_it_again(tmp_path: Path) -> None:
    # A checkpoint is data: a callback it names that is no Callback subclass could be any
    # class at all, so your own command line must vouch for it.
    (tmp_path / "my_callbacks.py").write_text(HOOK_RECORDER)
    mine = ["+callbacks.recorder._target_=my_callbacks.HookRecorder"]
    env = {"PYTHONPATH": str(tmp_path)}
    small = ["data=synthetic", "data.dataset.train_size=200", "data.dataset.test_size=50", *FAST]
    result = run_cli("train.py", *small, "trainer.epochs=1", *mine, f"+callbacks.recorder.out={tmp_path / 'calls.json'}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    refused = run_cli("train.py", f"resume={last}", "trainer.epochs=2", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "callbacks.recorder._target_='my_callbacks.HookRecorder' is not a subclass" in refused.stderr
    resumed = run_cli("train.py", f"resume={last}", "trainer.epochs=2", *mine, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "calls.json").read_text())[0] == "fit_start"
