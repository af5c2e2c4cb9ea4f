"""Exact resume, interruption by signals and kill -9, NaN stops, checkpoint retention.

"Exact" is checked bitwise: after any interruption and resume, the final model and
optimizer state_dicts are torch.equal to those of an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import FAST, REPO, assert_same_training, load, run_cli, run_dirs, start_cli, wait_for_line

# 3200 training images in batches of 16: 200 steps per epoch, long enough to be
# interrupted in the middle. The cnn has batch norm and dropout: state and randomness.
RUN = [
    "data=synthetic", "model=cnn", "data.dataset.train_size=4000", "data.batch_size=16",
    "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "trainer.deterministic=true", *FAST,
]
EPOCHS = 3


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli("train.py", *RUN, f"trainer.epochs={EPOCHS}", "trainer.save_every_n_epochs=1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return run_dirs(cwd)[0]


def test_stop_after_an_epoch_then_extend_is_bitwise_identical(tmp_path: Path, uninterrupted: Path) -> None:
    result = run_cli("train.py", *RUN, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", f"trainer.epochs={EPOCHS}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert run_dirs(tmp_path) == [run_dir], "a resumed run continues in its own folder"
    assert_same_training(uninterrupted / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == EPOCHS
    assert "Resuming" in (run_dir / "train.log").read_text()
    assert (run_dir / ".hydra" / "config.yaml").is_file() and list((run_dir / ".hydra").glob("resume_*"))


@pytest.mark.parametrize(
    ("sig", "code", "in_memory"),
    [(signal.SIGTERM, 143, "false"), (signal.SIGINT, 130, "true")],
    ids=["SIGTERM-DataLoader-path", "SIGINT-in-memory-path"],
)
def test_signal_mid_epoch_saves_and_resumes_exactly(
    tmp_path: Path, uninterrupted: Path, sig: int, code: int, in_memory: str
) -> None:
    # The uninterrupted run used the in-memory path: both paths yield the same batches.
    process = start_cli("train.py", *RUN, f"trainer.epochs={EPOCHS}", f"data.in_memory={in_memory}", cwd=tmp_path)
    wait_for_line(process, "first optimizer step done")  # 199 steps of epoch 1 to go
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Resume with: python train.py resume=" in err
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    state = load(last)
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 200, "saved in the middle of epoch 1"

    result = run_cli("train.py", f"resume={last}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_training(uninterrupted / "checkpoints" / "last.pt", last)


def test_a_second_ctrl_c_quits_at_once_and_a_repeated_sigterm_is_ignored() -> None:
    # Schedulers and torchrun may deliver one SIGTERM twice; only Ctrl-C twice means "now".
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from src.trainer.signals import StopRequest\n"
        "with StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('alive after two SIGTERMs:', stop.name, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    print('not reached', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130
    assert "alive after two SIGTERMs: SIGTERM" in result.stdout and "not reached" not in result.stdout


def test_resume_from_an_earlier_checkpoint_purges_later_tensorboard_events(tmp_path: Path, uninterrupted: Path) -> None:
    import shutil

    run_dir = tmp_path / "saved" / "runs" / "copy" / "run"
    shutil.copytree(uninterrupted, run_dir)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'epoch_001.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_training(uninterrupted / "checkpoints" / "last.pt", run_dir / "checkpoints" / "last.pt")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == [200, 400, 600], "each epoch once: the first run's epochs 2-3 were purged"


def test_early_stopping_counter_survives_resume(tmp_path: Path) -> None:
    stop = ["trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=100"]
    result = run_cli("train.py", "data=synthetic", *FAST, *stop, "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Early stopping after epoch 3" in result.stdout  # as in the uninterrupted run


def test_non_finite_loss_stops_and_keeps_the_good_checkpoints(tmp_path: Path) -> None:
    result = run_cli("train.py", "data=synthetic", *FAST, "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    checkpoints = run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")}

    result = run_cli("train.py", f"resume={checkpoints / 'last.pt'}", "optimizer.lr=1e30", "trainer.epochs=4", cwd=tmp_path)
    assert result.returncode == 1
    assert "Non-finite training loss" in result.stderr and "at step" in result.stderr
    assert "Traceback" not in result.stderr
    after = {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")}
    assert after == before, "last.pt and best.pt still hold the last finite model"
    for tensor in load(checkpoints / "best.pt")["model"].values():
        assert torch.isfinite(tensor.float()).all()
    # The run's record says why it stopped, and keeps what it had done.
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("Non-finite training loss")
    assert [r["epoch"] for r in record["history"]] == [1, 2] and record["best_epoch"] in (1, 2)
    assert "Stopped: Non-finite training loss" in (run_dir / "train.log").read_text()


def test_kill_9_at_any_moment_never_leaves_a_broken_checkpoint(tmp_path: Path) -> None:
    # A large model makes each save take a while, so the kills land inside saves too.
    big = ["data=synthetic", "data.dataset.train_size=320", "data.batch_size=128", "model.hidden_sizes=[2048,2048]", *FAST]
    rng = random.Random(0)
    last = None
    for attempt in range(4):
        args = [f"resume={last}"] if last else [*big, "trainer.epochs=10000"]
        process = start_cli("train.py", *args, cwd=tmp_path)
        wait_for_line(process, "epoch ")
        time.sleep(rng.uniform(0.0, 1.0))
        process.kill()
        process.communicate()
        (run_dir,) = run_dirs(tmp_path)
        for path in (run_dir / "checkpoints").glob("*.pt"):
            state = load(path)  # never truncated, never a half-written file
            assert state["format_version"] == 1 and state["epoch"] >= 1, path
        last = run_dir / "checkpoints" / "last.pt"
        assert last.exists(), f"attempt {attempt}"


def test_periodic_checkpoints_keep_only_the_newest(tmp_path: Path) -> None:
    keep = ["trainer.save_every_n_epochs=1", "trainer.keep_last_k=2"]
    result = run_cli("train.py", "data=synthetic", *FAST, "trainer.epochs=4", *keep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "epoch_003.pt", "epoch_004.pt", "last.pt"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=mlp", "Cannot change the config group choice 'model=mlp' when resuming (the run used model=cnn)"),
        ("optimizer._target_=torch.optim.SGD", "only loads into the same class"),
        ("model=cnn model.hidden_size=64", "shape mismatches"),
    ],
)
def test_resume_refuses_overrides_the_saved_state_cannot_take(tmp_path: Path, uninterrupted: Path, override: str, message: str) -> None:
    import shutil

    run_dir = tmp_path / "saved" / "runs" / "copy" / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", *override.split(), cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    after = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert after == before, "the run folder is left as it was"


def test_a_resume_names_its_config_snapshot_once_per_process() -> None:
    # Hydra resolves hydra.output_subdir more than once; across a second boundary two
    # names meant a refused resume deleted one folder and left the other behind.
    from src.utils.config import output_subdir

    first = output_subdir("saved/runs/x/y/checkpoints/last.pt")
    time.sleep(1.1)
    assert output_subdir("saved/runs/x/y/checkpoints/last.pt") == first
    assert first.startswith(".hydra/resume_")
