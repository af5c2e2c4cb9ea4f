"""Beyond one process: DDP under torchrun (CPU, gloo), and SLURM through submitit.

Every torchrun test starts two real processes on synthetic data; rank 0 alone writes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, REPO, assert_same_training, cli_env, load, run_cli, run_dirs, wait_for_line

def torchrun_command(cwd: Path) -> list[str]:
    # --standalone: torchrun picks a free port, so parallel tests never collide; its
    # own logs go to the test's folder rather than a new folder in /tmp each time.
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--log-dir={cwd / 'torchrun'}"]
    return [sys.executable, *launcher, str(REPO / "train.py")]


# Odd sizes on purpose: 2403 training images (padded to 1202 per rank: 76 steps per
# epoch on each), 601 validation and 501 test images (shared out unevenly, unpadded).
# The cnn has batch norm (buffers DDP keeps in sync) and dropout (per-rank randomness).
SIZES = ["data.dataset.train_size=3004", "data.dataset.test_size=501"]
RUN = ["data=synthetic", "model=cnn", *SIZES, "data.batch_size=16", "trainer.deterministic=true", *FAST]
EPOCHS = 3


def torchrun(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*torchrun_command(cwd), *overrides], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ddp")
    result = torchrun(*RUN, f"trainer.epochs={EPOCHS}", cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    return run_dir


def test_two_processes_train_one_run_that_rank_zero_writes_once(ddp_run: Path) -> None:
    log = (ddp_run / "train.log").read_text()
    for epoch in range(1, EPOCHS + 1):
        assert log.count(f"epoch {epoch}/{EPOCHS} ") == 1, "one log line per epoch: only rank 0 logs"
    assert "DDP over 2 processes" in log
    assert "Final weights identical on all 2 ranks" in log
    assert len(list(ddp_run.glob("events.out.tfevents.*"))) == 1, "one TensorBoard writer"
    assert not list((ddp_run / "checkpoints").glob(".*.tmp"))
    state = load(ddp_run / "checkpoints" / "last.pt")
    assert state["epoch"] == EPOCHS and state["world_size"] == 2
    assert len(state["rank_states"]) == 2, "every rank's RNG state, for an exact resume"
    assert not any(key.startswith("module.") for key in state["model"]), "no DDP prefix in the weights"


def test_ddp_metrics_count_every_sample_once_and_a_single_process_agrees(tmp_path: Path, ddp_run: Path) -> None:
    # The 601 validation images are split over the ranks and their sums added: a
    # single-process evaluation of the same weights must find the same numbers.
    checkpoints = ddp_run / "checkpoints"
    result = run_cli("test.py", f"checkpoint={checkpoints / 'last.pt'}", "split=val", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    single = json.loads((checkpoints / "last.val.json").read_text())
    assert single["samples"] == 601
    last_epoch = load(checkpoints / "last.pt")["history"][-1]
    assert single["metrics"]["val/accuracy"] == last_epoch["val/accuracy"]
    assert single["metrics"]["val/macro_f1"] == last_epoch["val/macro_f1"], "the confusion matrix is summed over the ranks"
    assert single["metrics"]["val/loss"] == pytest.approx(last_epoch["val/loss"], rel=1e-5)

    result = run_cli("test.py", f"checkpoint={checkpoints / 'best.pt'}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    single = json.loads((checkpoints / "best.test.json").read_text())
    assert single["samples"] == 501
    trained = json.loads((ddp_run / "metrics.json").read_text())
    assert single["metrics"]["test/accuracy"] == trained["test"]["test/accuracy"]
    assert single["confusion_matrix"] == trained["test_confusion_matrix"] and single["per_class"] == trained["test_per_class"]
    assert single["metrics"]["test/loss"] == pytest.approx(trained["test"]["test/loss"], rel=1e-5)


def test_sigterm_to_the_torchrun_group_then_resume_is_bitwise_exact(tmp_path: Path, ddp_run: Path) -> None:
    # The DataLoader path this time: its sampler shares the data out exactly as the
    # in-memory path of the uninterrupted run does.
    process = subprocess.Popen(
        [*torchrun_command(tmp_path), *RUN, f"trainer.epochs={EPOCHS}", "data.in_memory=false"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a scheduler's job has
    )
    wait_for_line(process, "first optimizer step done")  # 75 steps of epoch 1 to go
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Resume with: torchrun --nproc_per_node=2 train.py resume=" in out + err, out + err
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    state = load(last)
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 76, "saved in the middle of epoch 1"

    result = torchrun(f"resume={last}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_training(ddp_run / "checkpoints" / "last.pt", last)


def test_a_mid_epoch_ddp_checkpoint_refuses_another_process_count(tmp_path: Path, ddp_run: Path) -> None:
    import torch

    state = load(ddp_run / "checkpoints" / "last.pt")
    state["epoch"], state["batch_in_epoch"] = EPOCHS - 1, 10  # as if saved mid-epoch
    run_dir = tmp_path / "saved" / "runs" / "copy" / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    result = run_cli("train.py", f"resume={run_dir / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "torchrun --nproc_per_node=2" in result.stderr


def test_single_process_checkpoints_continue_under_torchrun_and_a_nan_stops_every_rank(tmp_path: Path) -> None:
    quick = ["data=synthetic", "data.dataset.train_size=1000", *FAST]
    result = run_cli("train.py", *quick, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.pt"

    result = torchrun(f"resume={last}", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "comes from 1 process(es) and this run has 2" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")}

    # Every rank stops at the same step with one clear message (no hang, no traceback wall).
    result = torchrun(f"resume={last}", "optimizer.lr=1e30", "trainer.epochs=4", cwd=tmp_path)
    assert result.returncode != 0
    assert "Non-finite training loss" in result.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")} == before


def test_early_stopping_stops_every_rank_at_the_same_epoch(tmp_path: Path) -> None:
    # A rank that went on alone would hang in its next collective and time the test out.
    stop = ["trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=100", "trainer.epochs=5"]
    result = torchrun("data=synthetic", "data.dataset.train_size=1000", *FAST, *stop, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Early stopping after epoch 2" in result.stdout
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2


def test_slurm_warning_signal_saves_then_hands_over_to_the_requeue_handler(tmp_path: Path) -> None:
    # submitit installs a SIGUSR2 handler that requeues the job; stand in for it with
    # one that leaves a file, and check that it runs after the checkpoint is saved.
    marker = tmp_path / "requeued"
    wrapper = tmp_path / "job.py"
    wrapper.write_text(
        "import runpy, signal, sys\n"
        f"def requeue(signum, frame):\n    open({str(marker)!r}, 'w').write('requeued')\n"
        "signal.signal(signal.SIGUSR2, requeue)\n"
        f"sys.argv = [{str(REPO / 'train.py')!r}, *sys.argv[1:]]\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    )
    # The cnn at batch 16: 200 steps per epoch, so a signal after the first lands mid-epoch.
    overrides = ["data=synthetic", "model=cnn", "data.dataset.train_size=4000", "data.batch_size=16", "trainer.epochs=3", *FAST]
    process = subprocess.Popen(
        [sys.executable, str(wrapper), *overrides], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_for_line(process, "first optimizer step done")
    process.send_signal(signal.SIGUSR2)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGUSR2, err
    (run_dir,) = run_dirs(tmp_path)
    assert load(run_dir / "checkpoints" / "last.pt")["batch_in_epoch"] > 0
    assert marker.read_text() == "requeued"


def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    quick = ["data=synthetic", "data.dataset.train_size=500", "trainer.epochs=1", *FAST]
    result = run_cli("train.py", "-m", "hydra/launcher=submitit_local", *quick, "optimizer.lr=1e-3,1e-2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "saved" / "multirun").iterdir()
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["job"] for row in rows) == ["0", "1"]
    assert all(row["status"] == "completed" for row in rows)


def test_slurm_preset_composes_with_the_cluster_settings(tmp_path: Path) -> None:
    result = run_cli("train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout
    for line in ("partition: gpu", "nodes: 2", "gpus_per_node: 1", "timeout_min: 240", "signal_delay_s: 120", "max_num_timeout: 3"):
        assert line in result.stdout


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("num_samples", [10, 11, 13])
def test_each_rank_gets_its_share_on_both_data_paths(world_size: int, num_samples: int) -> None:
    import torch

    from src.data.batches import EpochSampler, InMemoryBatches, LoaderBatches, Normalize

    inputs = torch.arange(num_samples, dtype=torch.uint8).view(-1, 1, 1, 1)
    targets = torch.arange(num_samples)
    dataset = list(zip(inputs, targets.tolist()))
    cpu, identity = torch.device("cpu"), Normalize(None, None, torch.device("cpu"))
    for pad in (True, False):
        shares = []
        for rank in range(world_size):
            memory = InMemoryBatches(inputs, targets, 3, pad, 7, identity, rank=rank, world_size=world_size, pad=pad)
            loader = LoaderBatches(dataset, 3, pad, 7, 0, cpu, identity, rank=rank, world_size=world_size, pad=pad)
            for start in range(len(memory)):  # from any batch on, as a resumed epoch does
                memory.set_epoch(1, start_batch=start)
                loader.set_epoch(1, start_batch=start)
                from_memory = [y.tolist() for _, y in memory]
                assert from_memory == [y.tolist() for _, y in loader]
                assert len(from_memory) == len(memory) - start
            memory.set_epoch(1)
            shares.append([i for _, y in memory for i in y.tolist()])
        if pad:  # training: equal shares, every sample at least once
            assert len({len(share) for share in shares}) == 1
            assert set().union(*shares) == set(range(num_samples))
        else:  # evaluation: every sample exactly once
            assert sorted(i for share in shares for i in share) == list(range(num_samples))
    sampler = EpochSampler(num_samples, shuffle=True, seed=7, rank=1, world_size=world_size, pad=True)
    assert len(sampler) == len(list(sampler))


def test_sweeps_are_refused_under_torchrun_and_a_stray_rank_variable_is_ignored(tmp_path: Path) -> None:
    result = torchrun("-m", "data=synthetic", "optimizer.lr=1e-3,1e-2", *FAST, cwd=tmp_path)
    assert result.returncode != 0
    assert "--multirun under torchrun" in result.stderr
    assert not (tmp_path / "saved").exists()
    # RANK alone (set by other launchers) is not torchrun: a plain run, which writes as usual.
    result = run_cli("train.py", "data=synthetic", "data.dataset.train_size=500", "trainer.epochs=1", *FAST, cwd=tmp_path, env={"RANK": "1"})
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert (run_dir / "metrics.json").is_file()
