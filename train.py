"""Train a model: `python train.py model=mlp data=fashion_mnist` (see configs/train.yaml)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from src.trainer.signals import STOP_EXIT_CODES
from src.utils.config import app_help, register_resolvers, validate_train_config, wants_app_help
from src.utils.distributed import barrier, destroy_process_group, init_process_group, is_rank_zero, launched_by_torchrun
from src.utils.console import report_error
from src.utils.errors import exit_on_user_error
from src.utils.run_folder import RunFolder, recorded

register_resolvers()  # used by configs/hydra/default.yaml to name and place run folders


def run(cfg: DictConfig) -> float:
    validate_train_config(cfg)
    # Imported only now: `--help` and config errors never pay for importing torch.
    from src.train import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    folder = recorded(run_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        from src.utils.sweep import finished_job_metric, job_overrides, run_sweep_job

        overrides = job_overrides(list(hydra_cfg.overrides.task))
        # Numbered as its folder and the leaderboard number it. Without the total: a job's
        # config holds its own overrides only, and the sweeper expands the grid elsewhere.
        print(f"job {hydra_cfg.job.num}: {' '.join(overrides)}", flush=True)
        done = finished_job_metric(run_dir) if cfg.sweep.resume else None
        if done is not None:  # re-running a sweep: finished jobs are skipped
            print(f"job {hydra_cfg.job.num} already finished (best {done:.4f}); skipping")
            return done
        # A job started again in its own folder (sweep.resume, or SLURM requeueing a
        # preempted job) continues from its last checkpoint.
        if (run_dir / "checkpoints" / "last.pt").is_file():
            with open_dict(cfg):
                cfg.resume = str(run_dir / "checkpoints" / "last.pt")
        try:
            return run_sweep_job(lambda: locked_run(folder, cfg), run_dir, overrides)
        finally:
            folder.release()  # one sweep process runs many jobs
    with exit_on_user_error(folder, hydra_cfg.output_subdir):
        return locked_run(folder, cfg)


def locked_run(folder: RunFolder, cfg: DictConfig) -> float:
    """`run(cfg)` while holding the run folder's lock (rank 0 writes, so rank 0 locks)."""
    if is_rank_zero():
        folder.lock()
    return run(cfg)


if __name__ == "__main__":
    if wants_app_help(sys.argv[1:]):  # fast: Hydra's own --help formats all of its plugins' groups
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        print(app_help("train.py", "train", overrides, "model=cnn data=mnist optimizer.lr=3e-4 trainer.epochs=5"))
        sys.exit(0)
    if launched_by_torchrun():
        # Before Hydra: rank 0 names the run folder and the other ranks must hear it.
        init_process_group()
        if {"-m", "--multirun"} & set(sys.argv[1:]):
            report_error(
                "--multirun under torchrun would run the whole sweep in every process. Run the sweep with "
                "plain python (hydra/launcher=slurm puts each job on its own GPU), or torchrun one run at a time."
            )
            barrier()  # rank 0 has printed before any rank exits and torchrun stops the others
            destroy_process_group()
            sys.exit(2)
    # Under torchrun, ranks that finish or stop together also leave together: one that
    # tears down its connections while another still talks to it can abort. (After a
    # failure of one rank torchrun stops the others, so no rank waits for them.)
    try:
        main()
    except SystemExit as stop:
        if stop.code in STOP_EXIT_CODES:  # every rank stopped after the same step
            barrier()
        raise
    else:
        barrier()
    finally:
        destroy_process_group()
