"""Callbacks plug into the loop by name: the shipped EMA and SWA, and your own class."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import FAST, assert_same_training, load, readme_python_block, run_cli, run_dirs, start_cli, wait_for_line

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


HOOK_COUNTER = '''
HOOKS = ("fit_start", "epoch_start", "batch_end", "epoch_end", "validation_start", "validation_end", "checkpoint", "fit_end")

class HookCounter:
    """A plain class (no base class) counting the calls of every hook: its state."""

    def __init__(self, out):
        self.out = out
        self.calls = dict.fromkeys(HOOKS, 0)

    def count(self, hook):
        self.calls[hook] += 1

    def on_fit_start(self, trainer): self.count("fit_start")
    def on_train_epoch_start(self, trainer): self.count("epoch_start")
    def on_train_batch_end(self, trainer, batch_index, loss): self.count("batch_end")
    def on_train_epoch_end(self, trainer, metrics): self.count("epoch_end")
    def on_validation_start(self, trainer): self.count("validation_start")
    def on_validation_end(self, trainer, metrics): self.count("validation_end")
    def on_checkpoint(self, trainer, state): self.count("checkpoint")

    def on_fit_end(self, trainer):
        self.count("fit_end")
        with open(self.out, "w") as f:
            json.dump(self.calls, f)

    def state_dict(self):
        return {"calls": dict(self.calls)}

    def load_state_dict(self, state):
        self.calls = dict(state["calls"])
'''


def test_your_callbacks_are_called_as_documented_and_their_state_survives_a_sigterm(tmp_path: Path) -> None:
    # A plain class needs your command line to name it again on resume (a checkpoint is
    # data); the README's BatchCounter, a Callback subclass, is rebuilt from the checkpoint.
    (tmp_path / "my_callbacks.py").write_text("import json\n" + readme_python_block("class BatchCounter") + HOOK_COUNTER)
    env = {"PYTHONPATH": str(tmp_path)}
    hooks = ["+callbacks.hooks._target_=my_callbacks.HookCounter"]
    batches, epochs = 50, 3  # 400 training samples in batches of 8
    run = ["data=synthetic", "data.dataset.train_size=500", "data.dataset.test_size=20", "data.batch_size=8", "model.hidden_sizes=[8]"]
    process = start_cli(
        "train.py", *run, *FAST, f"trainer.epochs={epochs}", *hooks, f"+callbacks.hooks.out={tmp_path / 'calls.json'}",
        "+callbacks.batches._target_=my_callbacks.BatchCounter", cwd=tmp_path, env=env,
    )
    wait_for_line(process, "first optimizer step done")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    state = load(last)
    done, mid = state["epoch"], int(state["batch_in_epoch"] > 0)  # where the signal stopped it
    assert state["callbacks"]["hooks"]["calls"] == {
        "fit_start": 1, "epoch_start": done + mid, "batch_end": state["step"], "epoch_end": done,
        "validation_start": done, "validation_end": done, "checkpoint": done + mid, "fit_end": 0,  # this save's call included
    }
    assert state["callbacks"]["batches"] == {"batches": state["step"]}

    refused = run_cli("train.py", f"resume={last}", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "callbacks.hooks._target_='my_callbacks.HookCounter' is not a subclass" in refused.stderr
    resumed = run_cli("train.py", f"resume={last}", *hooks, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "calls.json").read_text()) == {
        "fit_start": 2, "epoch_start": epochs + mid, "batch_end": epochs * batches, "epoch_end": epochs,
        "validation_start": epochs, "validation_end": epochs, "checkpoint": epochs + mid, "fit_end": 1,
    }
    assert load(last)["callbacks"]["batches"] == {"batches": epochs * batches}
    assert f"BatchCounter: {epochs * batches} training batches" in resumed.stdout
