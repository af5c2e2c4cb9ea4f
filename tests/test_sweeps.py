"""--multirun: job folders, the leaderboard, failures, Optuna, joblib, Ray, resumed sweeps."""

from __future__ import annotations

import csv
import io
import json
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from conftest import FAST, cli_env, load, run_cli, run_dirs, start_cli, wait_for_line, with_fault
from src.utils import config as config_module
from src.utils import run_folder

QUICK = ["data=synthetic", "data.dataset.train_size=500", "trainer.epochs=1", *FAST]


def sweep_dir(cwd: Path) -> Path:
    (path,) = (cwd / "saved" / "multirun").iterdir()
    return path


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_grid_sweep_writes_one_folder_per_job_and_a_leaderboard(tmp_path: Path) -> None:
    result = run_cli("train.py", "-m", *QUICK, "model=mlp,cnn", "optimizer.lr=1e-3,1e-2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = sweep_dir(tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [  # named by what differs between the jobs, not by what they all share (QUICK)
        "0_model=mlp,optimizer.lr=0.001",
        "1_model=mlp,optimizer.lr=0.01",
        "2_model=cnn,optimizer.lr=0.001",
        "3_model=cnn,optimizer.lr=0.01",
    ]
    for job in jobs:  # the usual run folder inside each job folder
        assert (sweep / job / "checkpoints" / "best.pt").is_file() and (sweep / job / "metrics.json").is_file()
    rows = summary(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    best = [float(r["best"]) for r in rows]
    assert best == sorted(best), "best (lowest val/loss) first"
    assert "test/accuracy" in rows[0] and rows[0]["run_dir"]
    assert (sweep / "summary.md").read_text().count("| completed |") == 4
    for plot in ("plot_trials.png", "plot_optimizer.lr.png"):  # a grid's plots too; `model` is no number
        assert (sweep / plot).is_file() and f"]({plot})" in (sweep / "summary.md").read_text()
    assert not (sweep / "plot_model.png").exists()
    assert "(best first)" in result.stdout
    assert run_dirs(tmp_path) == [], "no stray single-run folder"


def test_a_failing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    result = run_cli("train.py", "-m", *QUICK, "optimizer.lr=1e-3,-1,1e-2", cwd=tmp_path)
    assert result.returncode == 1
    rows = summary(sweep_dir(tmp_path))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert "optimizer.lr=-1" in rows[2]["error"] and "optimizer.lr=-1" in rows[2]["overrides"]
    assert "job 1" in result.stderr and "failed" in result.stderr


# A search small enough for a test: two epochs per trial, and the median pruner judging
# from the second trial on (after one whole trial).
SEARCH = ["hparams_search=mnist_optuna", "data=synthetic", "data.dataset.train_size=300", "data.dataset.test_size=100", "logger=[]", *FAST]


def study_of(sweep: Path) -> Any:
    """The Optuna study of an `hparams_search=mnist_optuna` sweep folder."""
    import optuna

    return optuna.load_study(study_name="mnist_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_an_optuna_search_prunes_hopeless_trials_plots_them_and_continues_its_study(tmp_path: Path) -> None:
    search = [*SEARCH, "trainer.epochs=2", "hydra.sweeper.startup_trials=1"]
    result = run_cli("train.py", "-m", *search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # a pruned trial is no failure
    sweep = sweep_dir(tmp_path)
    rows = summary(sweep)
    assert rows[0]["status"] == "completed" and rows[0]["monitor"] == "val/accuracy"
    (pruned, *_) = [r for r in rows if r["status"] == "pruned"]
    assert pruned["epochs"] == "1", "stopped after the epoch it was judged on"
    assert load(tmp_path / pruned["run_dir"] / "checkpoints" / "last.pt")["epoch"] == 1, "with that epoch saved"
    assert "callbacks.optuna_pruning" not in pruned["overrides"] + pruned["run_dir"], "the trial's bookkeeping stays out of sight"
    states = {t.number: t.state.name for t in study_of(sweep).trials}
    assert states[int(pruned["job"])] == "PRUNED" and len(states) == 3

    markdown = (sweep / "summary.md").read_text()
    for plot in ("plot_trials.png", "plot_optimizer.lr.png", "plot_model.dropout.png", "plot_importances.png"):
        assert (sweep / plot).stat().st_size > 0 and f"]({plot})" in markdown

    # Asking for 4 trials in all runs one more, numbered after the first three.
    result = run_cli("train.py", "-m", *search, "hydra.sweeper.n_trials=4", f"sweep.resume={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(r["job"] for r in summary(sweep)) == ["0", "1", "2", "3"]


def test_two_processes_share_one_study_in_a_new_folder_without_running_a_trial_twice(tmp_path: Path) -> None:
    sweep = tmp_path / "not" / "yet"  # a sweep folder that does not exist: the first to start creates it
    search = ["-m", *SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    processes = [start_cli("train.py", *search, cwd=tmp_path) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
    trials = study_of(sweep).trials
    assert sorted(t.number for t in trials) == [0, 1, 2] and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sorted(r["job"] for r in summary(sweep)) == ["0", "1", "2"], "one folder per trial"


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path: Path) -> None:
    result = run_cli(
        "train.py", "-m", *QUICK, "optimizer.lr=1e-3,1e-2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    rows = summary(sweep_dir(tmp_path))
    assert [r["status"] for r in rows] == ["completed", "completed"]


def test_the_printed_leaderboard_shows_list_overrides_whole() -> None:
    from rich.console import Console

    from src.utils.sweep import summary_table

    rows = [{"job": 0, "status": "completed", "overrides": "logger=[tensorboard,csv] model.hidden_sizes=[512,256]"}]
    printed = io.StringIO()
    Console(width=200, file=printed).print(summary_table(Path("saved/multirun/x"), rows))
    assert "logger=[tensorboard,csv] model.hidden_sizes=[512,256]" in printed.getvalue()


def test_an_interrupted_sweep_continues_without_retraining_finished_jobs(tmp_path: Path) -> None:
    grid = ["-m", *QUICK, "optimizer.lr=1e-3,2e-3,3e-3"]
    process = start_cli("train.py", *grid, cwd=tmp_path)
    wait_for_line(process, "Run folder:")  # job 0 has finished
    process.kill()
    process.communicate()
    sweep = sweep_dir(tmp_path)
    first = next(sweep.glob("0_*")) / "metrics.json"
    finished_at = first.stat().st_mtime_ns

    result = run_cli("train.py", *grid, f"sweep.resume={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stdout
    assert first.stat().st_mtime_ns == finished_at, "job 0 was not trained again"
    rows = summary(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"] and {r["status"] for r in rows} == {"completed"}


def test_sigusr2_mid_job_stops_the_whole_sweep(tmp_path: Path) -> None:
    # SLURM's warning before the time limit: save the job and stop, as for SIGTERM.
    # 200 steps per epoch, so the signal lands in the middle of job 0's epoch.
    long_epoch = ["data.dataset.train_size=4000", "data.batch_size=16"]
    process = start_cli("train.py", "-m", *QUICK, *long_epoch, "optimizer.lr=1e-3,1e-2", cwd=tmp_path)
    wait_for_line(process, "first optimizer step done")
    process.send_signal(signal.SIGUSR2)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGUSR2, err
    assert "Stopped: SIGUSR2 received" in err and "failed" not in err
    (job,) = [p for p in sweep_dir(tmp_path).iterdir() if p.is_dir()]
    assert job.name.startswith("0_"), "job 1 never started"
    assert load(job / "checkpoints" / "last.pt")["batch_in_epoch"] > 0, "saved mid-epoch, to resume with sweep.resume"
    assert not (job / "metrics.json").exists(), "not marked failed"


def test_a_stopped_sweep_prints_the_command_that_continues_it(tmp_path: Path) -> None:
    long_epoch = ["data.dataset.train_size=4000", "data.batch_size=16"]
    grid = ["-m", *QUICK, *long_epoch, "optimizer.lr=1e-3,1e-2", "logger=[csv]"]
    process = start_cli("train.py", *grid, cwd=tmp_path)
    started = wait_for_line(process, "first optimizer step done")
    assert "job 0: data=synthetic" in started and "optimizer.lr=0.001" in started, "each job starts with a header"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    hint = err.split("Resume with: ", 1)[1].splitlines()[0]
    command = shlex.split(hint)  # a shell command, quoted where needed: logger=[csv]
    sweep = sweep_dir(tmp_path).relative_to(tmp_path)
    assert command[0] == "python" and command[2:] == [*grid, f"sweep.resume={sweep}"]

    result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "job 1: " in result.stdout
    assert [r["status"] for r in summary(sweep_dir(tmp_path))] == ["completed", "completed"]


def test_a_job_stopped_by_a_nan_keeps_its_own_record(tmp_path: Path) -> None:
    result = run_cli("train.py", "-m", *QUICK, "optimizer.lr=1e-3,1e30", cwd=tmp_path)
    assert result.returncode == 1
    (row,) = [r for r in summary(sweep_dir(tmp_path)) if r["status"] == "failed"]
    assert row["job"] == "1" and "Non-finite training loss" in row["error"]
    record = json.loads((tmp_path / row["run_dir"] / "metrics.json").read_text())
    assert record["status"] == "failed" and record["monitor"] == "val/loss" and record["history"] == []


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path: Path) -> None:
    # Both processes get the same start time: they really start in the same second, and
    # run side by side.
    same_second = """
        import src.utils.config
        src.utils.config.START_STAMP = "2026-01-02_03-04-05"
    """
    command = with_fault("train.py", same_second, *QUICK)
    processes = [subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    assert [p.name for p in run_dirs(tmp_path)] == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_1"]


def test_a_folder_claimed_in_the_same_second_gets_a_suffix(tmp_path: Path) -> None:
    # What three processes started in the same second do: each claims <base>/<that second>.
    candidate = str(tmp_path / "runs" / "2026-01-02_03-04-05")
    names = [Path(run_folder.claim(candidate)).name for _ in range(3)]
    assert names == ["2026-01-02_03-04-05", "2026-01-02_03-04-05_1", "2026-01-02_03-04-05_2"]


def test_job_folder_names_stay_one_level_and_short() -> None:
    assert config_module.job_dirname(3, "data.root=/data/sets,model=cnn") == "3_data.root=_data_sets,model=cnn"
    assert config_module.job_dirname(0, "") == "0"
    long = config_module.job_dirname(7, ",".join(f"model.p{i}=0.123456789012345" for i in range(20)))
    assert len(long) <= 120 and long.startswith("7_model.p0=")


def test_ray_launcher_runs_the_jobs_as_tasks_of_a_local_ray_instance(tmp_path: Path) -> None:
    ray_files = tmp_path / "ray"  # Ray's session files, logs and spilled objects
    ray_files.mkdir()
    # Ray's socket paths under the temp dir must fit in 107 bytes, too few for pytest's
    # tmp_path: a short link to it in /tmp keeps the files in the test's folder.
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    short.rmdir()
    short.symlink_to(ray_files)
    try:
        result = run_cli(
            "train.py", "-m", *QUICK, "logger=[]", "optimizer.lr=1e-3,1e-2,-1", "hydra/launcher=ray", "hydra.launcher.init.num_cpus=2",
            f"hydra.launcher.init._temp_dir={short}", "hydra.launcher.init.include_dashboard=false", cwd=tmp_path, timeout=300,
        )
    finally:
        short.unlink()
    assert result.returncode == 1, result.stderr  # the third job's bad value
    assert "Started a local Ray instance" in result.stderr + result.stdout
    assert "(sweep_job pid=" in result.stdout, "the jobs ran in Ray's worker processes"
    assert list(ray_files.glob("session_*"))
    sweep = sweep_dir(tmp_path)
    rows = summary(sweep)
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert "optimizer.lr=-1" in rows[2]["error"]
    assert sorted(p.name for p in sweep.iterdir() if (p / "checkpoints" / "best.pt").is_file()) == [
        "0_optimizer.lr=0.001",
        "1_optimizer.lr=0.01",
    ]


def test_the_search_space_is_read_from_hydras_sweep_grammar() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from src.utils.optuna_search import search_space

    params, fixed = search_space(
        ["optimizer.lr=tag(log, interval(1e-4, 1e-2))", "model.dropout=interval(0, 0.5)", "+model.depth=range(1, 7, 2)",
         "model.hidden_sizes=choice([256], [256,128])", "data=mnist"]
    )
    assert params["optimizer.lr"].distribution == FloatDistribution(1e-4, 1e-2, log=True)
    assert params["model.dropout"].distribution == FloatDistribution(0.0, 0.5)
    assert params["model.depth"].distribution == IntDistribution(1, 5, step=2)
    assert params["model.depth"].override(3) == "+model.depth=3", "the override keeps its prefix"
    assert params["model.hidden_sizes"].distribution == CategoricalDistribution(["[256]", "[256,128]"])
    assert fixed == ["data=mnist"]


def test_a_sweep_without_matplotlib_says_so_in_one_line(tmp_path: Path, monkeypatch, caplog) -> None:
    from src.utils.sweep_plots import write_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    rows = [{"job": "0", "status": "completed", "overrides": "optimizer.lr=0.1", "best": 0.5, "epochs": 1}]
    with caplog.at_level("INFO"):
        assert write_plots(tmp_path, rows, "val/loss", "min") == []
    assert "matplotlib is not installed" in caplog.text and list(tmp_path.iterdir()) == []


def test_a_trials_pruning_callback_rebuilt_from_a_checkpoint_never_creates_a_database(tmp_path: Path, caplog) -> None:
    """A resume by hand rebuilds a trial's callback from the checkpoint's stored config:
    a storage it names that does not exist is reported, never created."""
    from types import SimpleNamespace

    from src.trainer.callbacks.optuna_pruning import OptunaPruning

    planted = tmp_path / "elsewhere" / "planted.db"
    planted.parent.mkdir()
    callback = OptunaPruning(storage=f"sqlite:///{planted}", study="mnist_optuna", trial=0)
    with caplog.at_level("WARNING"):
        callback.on_fit_start(SimpleNamespace(cfg=SimpleNamespace(epochs=3)))
    assert callback.trial is None and "does not exist" in caplog.text
    assert not planted.exists()
