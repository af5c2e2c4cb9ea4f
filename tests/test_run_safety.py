"""A run removes only what it created, holds its folder alone, and leaves best.pt,
last.pt, epoch files and metrics.json in agreement after a kill at any point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, cli_env, load, run_cli, run_dirs, run_with_fault, start_cli, wait_for_line

SMALL = ["data=synthetic", "data.dataset.test_size=200", *FAST]
TINY = [*SMALL, "data.dataset.train_size=400"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what "left as it was" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ only what the run created


@pytest.mark.parametrize("bad", ["trainer.epochs=-1", "optimizer.lr=abc"])
def test_a_bad_value_never_removes_a_folder_that_existed(tmp_path: Path, bad: str) -> None:
    mine = tmp_path / "my_results"
    (mine / "old_run").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "old_run" / "model.pt").write_bytes(b"weights")
    before = tree(mine)
    result = run_cli("train.py", *TINY, f"hydra.run.dir={mine}", bad, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert tree(mine) == before
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "old_run"], "what the run wrote is gone"


def test_run_dir_dot_in_a_clone_keeps_the_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / "train.log").write_text("someone else's log\n")
    before = tree(clone)
    result = run_cli("train.py", *TINY, "hydra.run.dir=.", "optimizer.lr=abc", cwd=clone)
    assert result.returncode == 2
    assert tree(clone) == before and sorted(p.name for p in clone.iterdir()) == [".git", "train.log"]


def test_test_py_with_a_missing_checkpoint_keeps_an_existing_folder(tmp_path: Path) -> None:
    mine = tmp_path / "evals"
    mine.mkdir()
    (mine / "report.md").write_text("keep me")
    result = run_cli("test.py", "checkpoint=missing.pt", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 2 and "Checkpoint not found" in result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]


def test_a_new_nested_folder_is_removed_whole(tmp_path: Path) -> None:
    result = run_cli("train.py", *TINY, f"hydra.run.dir={tmp_path / 'new' / 'a' / 'b'}", "trainer.epochs=0", cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "new").exists() and run_dirs(tmp_path) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    result = run_cli("train.py", *TINY, "trainer.epochs=2", "trainer.save_every_n_epochs=1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return run_dirs(cwd)[0]


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "saved" / "runs" / "copy" / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_a_refused_resume_of_pth_checkpoints_keeps_the_run(tmp_path: Path, finished_run: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.rename(path.with_suffix(".pth"))
    before = tree(run_dir)
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pth'}", "model=cnn", cwd=tmp_path)
    assert result.returncode == 2 and "Cannot change the config group choice 'model=cnn'" in result.stderr
    after = tree(run_dir)
    assert after.pop("train.log").startswith(before.pop("train.log")), "the log is only appended to"
    after.pop(".lock"), before.pop(".lock")  # the run's own lock file names its latest holder
    assert after == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=../../..", "Invalid value name='../../..'"),
        ("name=a/b", "Invalid value name='a/b'"),
    ],
)
def test_a_run_name_cannot_leave_saved(tmp_path: Path, override: str, message: str) -> None:
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    result = run_cli("train.py", *TINY, override, cwd=work)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "work"], "nothing was created anywhere"


@pytest.mark.parametrize("under", ["", "sub"], ids=["the-file", "a-folder-under-it"])
def test_run_dir_that_is_a_file_gets_a_clear_error(tmp_path: Path, under: str) -> None:
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    result = run_cli("train.py", *TINY, f"hydra.run.dir={file / under if under else file}", cwd=tmp_path)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr and "Traceback" not in result.stderr
    assert file.read_text() == "keep me"


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_a_folder_holding_a_runs_files_is_refused_not_overwritten(tmp_path: Path, finished_run: Path, script: str) -> None:
    # Even a run that would stop early (a NaN writes metrics.json) never gets to write there.
    mine = tmp_path / "results"
    (mine / ".hydra").mkdir(parents=True)
    (mine / ".hydra" / "config.yaml").write_text("my config\n")
    (mine / "metrics.json").write_text("{}\n")
    before = tree(mine)
    args = [*TINY, "optimizer.lr=1e30"] if script == "train.py" else [f"checkpoint={finished_run / 'checkpoints' / 'best.pt'}", "device=cpu"]
    result = run_cli(script, *args, f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run's files (.hydra, metrics.json)" in result.stderr
    assert tree(mine) == before


def test_mid_epoch_resume_refuses_another_batch_order_or_split(tmp_path: Path) -> None:
    run = [*SMALL, "data.batch_size=8", "data.dataset.train_size=4000", "trainer.epochs=3"]
    process = start_cli("train.py", *run, cwd=tmp_path)
    wait_for_line(process, "first optimizer step done")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    assert load(last)["batch_in_epoch"] > 0
    for override in ("data.batch_size=16", "data.val_split=0.3", "data.split_seed=3", "data.folds=2 data.fold=1"):
        result = run_cli("train.py", f"resume={last}", *override.split(), cwd=tmp_path)
        assert result.returncode == 2, override
        assert f"Cannot resume with {override.split('=')[0]}=" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------ one writer per run folder


def test_a_second_resume_of_a_running_run_is_refused_and_the_lock_dies_with_kill_9(tmp_path: Path, finished_run: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    first = start_cli("train.py", f"resume={last}", "trainer.epochs=100000", cwd=tmp_path)
    try:
        wait_for_line(first, "epoch 3/100000")
        second = run_cli("train.py", f"resume={last}", "trainer.epochs=100000", cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.communicate()
    snapshots = sorted(p.name for p in (run_dir / ".hydra").glob("resume_*"))
    assert len(snapshots) == 1, "the refused resume removed its own config snapshot and nothing else"
    third = run_cli("train.py", f"resume={last}", "trainer.epochs=4", cwd=tmp_path)
    assert third.returncode == 0, third.stderr


# ------------------------------------------------------------------ best.pt agrees after a kill

# Three epochs that each improve val/loss, each saving epoch_NNN.pt, best.pt and last.pt.
KILL_RUN = [*TINY, "trainer.epochs=3", "trainer.save_every_n_epochs=1", "trainer.deterministic=true"]

KILL_AT_RENAME = """
import os, signal
from pathlib import Path
real_replace, renames = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if Path(dst).parent.name == "checkpoints":
        renames[0] += 1
        if renames[0] == {n}:
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    result = run_cli("train.py", *KILL_RUN, cwd=cwd)
    assert result.returncode == 0, result.stderr
    run_dir = run_dirs(cwd)[0]
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    losses = [record["val/loss"] for record in history]
    assert losses == sorted(losses, reverse=True), "every epoch improves, so every save writes best.pt"
    return run_dir


def assert_files_agree(run_dir: Path, reference: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == ["best.pt", "epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]
    best = load(checkpoints / "best.pt")
    assert best["epoch"] == metrics["best_epoch"] == load(checkpoints / "last.pt")["best_epoch"]
    reference_best = load(reference / "checkpoints" / "best.pt")
    for key, tensor in best["model"].items():
        assert torch.equal(tensor, reference_best["model"][key]), key
    assert metrics["test"] == expected["test"], "the test metrics are those of best.pt"


@pytest.mark.parametrize(
    "rename",
    [4, 5],
    ids=["killed-after-epoch_002.pt-before-best.pt", "killed-after-best.pt-before-last.pt"],
)
def test_kill_between_the_renames_of_a_save_then_resume(tmp_path: Path, reference: Path, rename: int) -> None:
    # Each save renames epoch_NNN.pt, best.pt, last.pt in that order: renames 4 and 5
    # are the first two of epoch 2's save.
    killed = run_with_fault("train.py", KILL_AT_RENAME.format(n=rename), *KILL_RUN, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(tmp_path)
    assert load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_files_agree(run_dir, reference)


def test_a_best_pt_left_behind_is_restored_on_resume(tmp_path: Path, reference: Path) -> None:
    run_dir = copy_run(reference, tmp_path)
    checkpoints = run_dir / "checkpoints"
    shutil.copy(checkpoints / "epoch_001.pt", checkpoints / "best.pt")  # one improvement behind
    (run_dir / "metrics.json").unlink()
    result = run_cli("train.py", f"resume={checkpoints / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "restored it from last.pt" in result.stdout
    assert_files_agree(run_dir, reference)


# ------------------------------------------------------------------ a full disk, a signal in the final test

FULL_DISK_ON_SECOND_SAVE = """
import errno, os
real_fsync, fsyncs = os.fsync, [0]
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "/checkpoints/" in os.readlink(f"/proc/self/fd/{fd}"):
        fsyncs[0] += 1
        if fsyncs[0] > 2:  # epoch 1's best.pt and last.pt fit; epoch 2's do not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fsync(fd)
os.fsync = fsync
"""


def test_a_full_disk_while_saving_stops_clearly_and_keeps_the_checkpoints(tmp_path: Path) -> None:
    result = run_with_fault("train.py", FULL_DISK_ON_SECOND_SAVE, *TINY, "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Could not write a checkpoint" in result.stderr and "No space left on device" in result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert "No space left on device" in (run_dir / "train.log").read_text()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"], "no temporary file left"
    assert load(checkpoints / "last.pt")["epoch"] == 1
    result = run_cli("train.py", f"resume={checkpoints / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


SIGTERM_WHEN_THE_FINAL_TEST_STARTS = """
import os, signal
import src.train
real_evaluate = src.train.evaluate
def evaluate(*args, stop=None, **kwargs):
    if stop is not None:  # only the final test passes a StopRequest
        os.kill(os.getpid(), signal.SIGTERM)
    return real_evaluate(*args, stop=stop, **kwargs)
src.train.evaluate = evaluate
"""


def test_sigterm_during_the_final_test_says_how_to_finish(tmp_path: Path) -> None:
    result = run_with_fault("train.py", SIGTERM_WHEN_THE_FINAL_TEST_STARTS, *TINY, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 143 and "Traceback" not in result.stderr
    assert "SIGTERM received during the final test" in result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert not (run_dir / "metrics.json").exists(), "no test metrics were made up"
    assert "SIGTERM received during the final test" in (run_dir / "train.log").read_text()
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1, "the resume only ran the test"


# ------------------------------------------------------------------ files follow the umask


def test_checkpoints_and_json_follow_the_umask(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, "trainer.epochs=1"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180, umask=0o027,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    for path in [run_dir / "metrics.json", *(run_dir / "checkpoints").glob("*.pt")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


# ------------------------------------------------------------------ a read-only run folder


def read_only_for_the_child() -> list[str]:
    """A command prefix under which a folder chmod-ed 0555 is really read-only: none
    for an ordinary user; for root, a user namespace without privileges over the
    machine's files (root ignores file modes)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--user"]
    pytest.skip("running as root without user namespaces: no folder is read-only to this process")


def test_resume_in_a_read_only_run_folder_gets_a_clear_error(tmp_path: Path, finished_run: Path) -> None:
    prefix = read_only_for_the_child()
    run_dir = copy_run(finished_run, tmp_path)
    before = tree(run_dir)
    run_dir.chmod(0o555)
    try:
        result = subprocess.run(
            [*prefix, sys.executable, str(REPO / "train.py"), f"resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=3"],
            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180,
        )
    finally:
        run_dir.chmod(0o755)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not writable" in result.stderr and str(run_dir) in result.stderr
    assert tree(run_dir) == before
