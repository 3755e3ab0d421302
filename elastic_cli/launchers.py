"""What elastic adds to Hydra's launchers (conf/hydra/launcher/: slurm, local_jobs; and the joblib
plug-in's own `joblib`): the GPUs a Slurm job asks for, and the torch threads of a job that shares the
machine with the sweep's other jobs. The jobs themselves are Hydra's and submitit's business."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from elastic_cli.errors import UserError


def gpus_for(device: str) -> int | None:
    """conf/hydra/launcher/slurm.yaml's default gpus_per_node: one GPU for a device=cuda job, none else."""
    return 1 if device == "cuda" else None


def env_count(name: str, default: Any) -> Any:
    """A whole-number launcher setting from the environment variable `name` (ELASTIC_SLURM_MEM_GB, ...),
    else `default`: a value that is not one is refused in one line naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdecimal():  # (a sign, a point or a letter)
        example = f" (e.g. {name}={default})" if default is not None else ""
        raise UserError(f"{name}={raw!r} is not a whole number: set it to one{example} or unset it")
    return int(raw)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("elastic_gpus", gpus_for, replace=True)
    OmegaConf.register_new_resolver("elastic_env_count", env_count, replace=True)


def multirun_job() -> Any | None:
    """Hydra's own config (`hydra.*`) when this process runs a job of a multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def _launcher(job: Any) -> str:
    return str(job.launcher.get("_target_", ""))


def job_threads() -> int | None:
    """torch threads for this job when its launcher says how many it may use: cpus_per_task under
    submitit (Slurm's allocation, or local_jobs' share); under joblib, the cores divided among the jobs
    that run at once, so that jobs x threads fits the machine. None: leave torch's default."""
    job = multirun_job()
    if job is None:
        return None
    if "submitit" in _launcher(job):
        cpus = job.launcher.get("cpus_per_task")
        return int(cpus) if cpus else None
    if "joblib" in _launcher(job):
        cores = os.cpu_count() or 1
        n_jobs = int(job.launcher.get("n_jobs") or -1)
        at_once = n_jobs if n_jobs > 0 else cores + 1 + n_jobs  # joblib's -1: all cores, -2: all but one
        return max(1, cores // max(1, min(at_once, cores)))
    return None


def job_in_own_process() -> bool:
    """Whether this multirun job runs in a process of its own (joblib, submitit), where exiting on an
    error would only kill the worker: Hydra's basic launcher runs the jobs in the launching process."""
    job = multirun_job()
    return job is not None and not _launcher(job).endswith("BasicLauncher")


def check_launcher(launcher_target: str) -> None:
    """Refuse, before any job or MLflow run starts, a launcher this machine cannot use: the Slurm one
    where Slurm's commands are not on the PATH (submitit would raise its own traceback)."""
    import shutil

    if "SlurmLauncher" in launcher_target and shutil.which("srun") is None:
        raise UserError(
            "hydra/launcher=slurm needs Slurm's commands (srun, sbatch), which this machine does not have: "
            "run it on the cluster's login node, or use hydra/launcher=local_jobs or joblib here"
        )


def job_crashes() -> tuple[type[BaseException], ...]:
    """The errors a launcher raises for a job that died without a word (killed by the system, by Slurm
    for its time or memory, a lost node): submitit's and joblib's, when installed."""
    found: list[type[BaseException]] = []
    try:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        found += [FailedJobError, UncompletedJobError]
    except ImportError:
        pass
    try:
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        found.append(TerminatedWorkerError)
    except ImportError:
        pass
    return tuple(found)


def crashed_job_error(err: BaseException) -> UserError:
    """One line for a crashed job: what the launcher says first, and where the job's own log is."""
    import re

    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    log = re.search(r"(/\S+_log\.err)", text)
    where = f"; its log: {log.group(1)}" if log else ""
    return UserError(
        f"a sweep job could not be launched or died outside elastic ({first.rstrip(':. ')}){where}"
    )
