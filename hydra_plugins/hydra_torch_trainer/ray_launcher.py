"""Sweep jobs as Ray tasks: `python train.py -m hydra/launcher=ray ...` (the `ray` extra).

Each job runs in a Ray worker process with the CPU and GPU share that
`hydra.launcher.remote` asks for, so jobs run side by side while the machine (or the
cluster) has room. The launcher composes every job's config here and sends it along,
so the workers never read the config files; they write the usual job folders, and the
leaderboard is made from those as for any launcher (src/utils/sweep.py). A cluster's
machines therefore need the project installed and the sweep folder on a shared
filesystem, at the same paths.

Hydra's plugin for Ray (hydra-ray-launcher) is not used: it requires cloudpickle<3,
which cannot be installed beside joblib 1.6 (cloudpickle>=3) of the `parallel` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# A job sees only the GPUs of its share: recent Ray releases leave a job without a GPU
# share every GPU of its machine, where trainer.device=auto would take one unaccounted.
HIDE_UNASSIGNED_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}


class RayLauncher(Launcher):
    """`init`: the arguments of `ray.init` (no address: a Ray instance of this sweep's
    own on this machine; `auto`: the cluster this machine joined with `ray start`).
    `remote`: each job's options for `ray.remote`, e.g. num_cpus, num_gpus."""

    def __init__(self, init: DictConfig, remote: DictConfig) -> None:
        self.init = init
        self.remote = remote
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Imported here: Hydra imports every plugin module at start-up, also for runs
        # that never use Ray (or have it not installed).
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            options = _given(self.init)
            runtime_env = dict(options.get("runtime_env") or {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **HIDE_UNASSIGNED_GPUS}
            ray.init(**{**options, "runtime_env": runtime_env})
        resources = ray.cluster_resources()
        log.info(f"Ray ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) runs {len(job_overrides)} jobs, each with {_given(self.remote)}")
        job = ray.remote(**_given(self.remote))(sweep_job)
        singleton_state = Singleton.get_state()
        pending = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.num = idx
            pending.append(job.remote(self.hydra_context, sweep_config, self.task_function, singleton_state))
        # A job's own failure is recorded in its folder and returned as NaN (run_sweep_job);
        # one whose worker process died raises here, as a crashed joblib or SLURM job does.
        return ray.get(pending)


def sweep_job(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction, singleton_state: dict[Any, Any]) -> JobReturn:
    """One job, in a Ray worker: Hydra's state as in the sweep's process, then the job."""
    import ray

    setup_globals()
    Singleton.set_state(singleton_state)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = ray.get_runtime_context().get_task_id()
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _given(options: DictConfig) -> dict[str, Any]:
    """The options that are set (null leaves Ray's default)."""
    return {key: value for key, value in OmegaConf.to_container(options, resolve=True).items() if value is not None}  # type: ignore[union-attr]
