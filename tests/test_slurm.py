"""Sweeps on a real Slurm cluster through `hydra/launcher=slurm` (submitit), as a user runs them: a
2-method training sweep, then a 4-point threshold sweep, each one MLflow parent whose children all
finished, each child run inside a Slurm array task. Skipped where no Slurm controller answers; on this
machine `benchmarks/slurm/check.sh` installs and starts a one-node cluster and runs this file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, elastic, ok
from test_launchers import sweep_runs

from elastic_cli import tracking


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["sinfo", "--noheader"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _slurm_answers(), reason="no Slurm cluster answers (benchmarks/slurm/check.sh)"),
]

COMMON = [a for a in TINY if not a.startswith(("method=", "train.epochs", "device.threads"))]
COMMON += ["train.epochs=2", "evaluate.latency=false", "hydra/launcher=slurm"]
# what this one-node cluster can give each job (the launcher config reads these; no GPUs here)
SLURM_ENV = {
    "ELASTIC_SLURM_CPUS_PER_TASK": "1",
    "ELASTIC_SLURM_MEM_GB": "2",
    "ELASTIC_SLURM_TIMEOUT_MIN": "20",
    "ELASTIC_SLURM_PARTITION": os.environ.get("ELASTIC_SLURM_PARTITION", "debug"),
}


def test_training_then_threshold_sweeps_on_slurm(tmp_path: Path):
    write_synthetic_task(tmp_path / "data", n_train=300, n_dev=120, seed=0)
    data = f"task.data_dir={tmp_path / 'data'}"
    ok(elastic("train", "-m", "method=static,early_exit", *COMMON, data, cwd=tmp_path, env=SLURM_ENV))
    parent, children = sweep_runs(tmp_path, "train")
    assert parent.info.status == "FINISHED"
    assert [c.data.tags["elastic.method"] for c in children] == ["static", "early_exit"]
    assert all(c.info.status == "FINISHED" for c in children)
    # each child ran in a Slurm array task of its own, with the cpus it asked for
    jobs = [c.data.tags[tracking.SLURM_JOB_TAG] for c in children]
    assert len(set(jobs)) == 2 and all("_" in job for job in jobs)
    assert all(c.data.tags[tracking.THREADS_TAG] == "1" for c in children)
    submitit = list((tmp_path / "outputs" / "multiruns").glob("*/.submitit/*"))
    assert submitit, "submitit's job folders are in the sweep folder"

    stage = [a for a in COMMON if not a.startswith("train.")]
    ok(
        elastic(
            "calibrate", "method=early_exit", *[a for a in stage if "launcher" not in a], data, cwd=tmp_path
        )
    )
    proc = ok(
        elastic(
            "evaluate", "-m", "method=early_exit", "sweep=thresholds", "method.exit.sweep=0.5,0.7,0.9,0.99",
            *stage, data, cwd=tmp_path, env=SLURM_ENV,
        )
    )  # fmt: skip
    parent, children = sweep_runs(tmp_path, "evaluate")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert [c.data.params["exit.threshold"] for c in children] == ["0.5", "0.7", "0.9", "0.99"]
    assert all(c.info.status == "FINISHED" for c in children)
    # the parent's id reached every job in its config, as Slurm ran it
    configs = sorted((tmp_path / "outputs" / "multiruns").glob("*_evaluate_*/[0-9]/.hydra/config.yaml"))
    assert len(configs) == 4
    assert all(f"parent_run_id: {parent.info.run_id}" in c.read_text() for c in configs)
    assert len({c.data.tags[tracking.SLURM_JOB_TAG] for c in children}) == 4
    assert "sweep: 4 finished runs" in proc.stderr
    print(f"slurm jobs: {jobs} + {[c.data.tags[tracking.SLURM_JOB_TAG] for c in children]}")
