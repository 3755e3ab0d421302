"""Sweeps through Hydra's launcher plug-ins on this machine, as a user runs them: submitit's local
executor (`hydra/launcher=local_jobs`: what `hydra/launcher=slurm` does, without a cluster; the real
Slurm check is benchmarks/slurm/) and joblib's parallel processes. Each keeps elastic's MLflow layout:
one parent per multirun, a child per job, the parent closed with the right status."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic, ok

from elastic_cli import hydra_callbacks, tracking

pytestmark = pytest.mark.slow

COMMON = [a for a in TINY if not a.startswith(("method=", "train.epochs", "device.threads"))]
COMMON += ["train.epochs=2", "evaluate.latency=false"]


def sweep_runs(root: Path, stage: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sst2")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [
        r
        for r in runs
        if r.data.tags.get("elastic.sweep") == "true" and r.data.tags["elastic.stage"] == stage
    ]
    parent = max(parents, key=lambda r: r.info.start_time)  # the latest sweep of the stage
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children.sort(key=lambda r: int(r.data.tags[tracking.JOB_TAG]))
    return parent, children


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory) -> Path:
    """`elastic train -m method=static,early_exit hydra/launcher=local_jobs`: each job a process of its own."""
    root = tmp_path_factory.mktemp("launchers")
    write_synthetic_task(root / "data", n_train=300, n_dev=120, seed=0)
    data = f"task.data_dir={root / 'data'}"
    proc = ok(
        elastic(
            "train", "-m", "method=static,early_exit", "hydra/launcher=local_jobs", *COMMON, data, cwd=root
        )
    )
    (root / "train.stderr").write_text(proc.stderr)
    return root


def test_a_local_jobs_training_sweep_is_one_parent_with_a_child_per_job(two_methods: Path):
    parent, children = sweep_runs(two_methods, "train")
    assert parent.info.status == "FINISHED"
    assert [c.data.tags["elastic.method"] for c in children] == ["static", "early_exit"]  # the sweep's order
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    # the parent's id reached each job in its config; each job ran torch on its cpus_per_task (1)
    assert all(c.data.params["tracking.parent_run_id"] == parent.info.run_id for c in children)
    assert all(c.data.tags[tracking.THREADS_TAG] == "1" for c in children)
    # jobs ran in processes of their own, not in the launching one
    assert len({c.data.tags[tracking.PID_TAG] for c in children}) == 2
    for method in ("static", "early_exit"):
        assert (two_methods / "outputs" / "checkpoints" / "sst2" / method / "tiny-bert" / "seed42").is_dir()
    assert parent.data.metrics["children"] == 2 and parent.data.metrics["failed_children"] == 0


def test_a_joblib_threshold_sweep_runs_jobs_side_by_side_with_their_share_of_cores(two_methods: Path):
    data = f"task.data_dir={two_methods / 'data'}"
    stage = [a for a in COMMON if not a.startswith("train.")]
    ok(elastic("calibrate", "method=early_exit", *stage, data, cwd=two_methods))
    proc = ok(
        elastic(
            "evaluate", "-m", "method=early_exit", "hydra/launcher=joblib", "sweep=thresholds",
            "method.exit.sweep=0.6,0.9", *stage, data, cwd=two_methods,
        )
    )  # fmt: skip
    parent, children = sweep_runs(two_methods, "evaluate")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert [c.data.params["exit.threshold"] for c in children] == ["0.6", "0.9"]
    assert all(c.info.status == "FINISHED" for c in children)
    # joblib runs as many jobs as cores at once (n_jobs=-1): one torch thread each
    assert all(c.data.tags[tracking.THREADS_TAG] == "1" for c in children)
    assert "sweep: 2 finished runs" in proc.stderr
    assert parent.data.tags.get(hydra_callbacks.FAILED_CHILDREN_TAG) is None


@pytest.mark.extended  # (the naming of failed and vanished children: tests/test_run_states.py)
def test_a_failing_job_fails_the_sweep_with_one_line(two_methods: Path):
    data = f"task.data_dir={two_methods / 'data'}"
    stage = [a for a in COMMON if not a.startswith("train.")]
    # seed=7 has no checkpoint: its job fails, the other one finishes, the parent ends FAILED
    proc = elastic(
        "evaluate", "-m", "method=early_exit", "seed=42,7", "hydra/launcher=joblib", *stage, data, cwd=two_methods
    )  # fmt: skip
    _one_line_error(proc, "seed7")
    parent, children = sweep_runs(two_methods, "evaluate")
    assert parent.info.status == "FAILED"
    assert [c.data.tags["elastic.seed"] for c in children] == ["42"]  # the failed job opened no run
    assert children[0].info.status == "FINISHED"


def test_a_job_the_launcher_reports_dead_is_one_line_with_its_log():
    from submitit.core.utils import FailedJobError

    from elastic_cli import launchers

    assert FailedJobError in launchers.job_crashes()
    text = (
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback ...\n"
        "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
        "  - /shared/out/multiruns/x/.submitit/62_0/62_0_0_log.err\n  - /shared/.../62_0_0_log.out"
    )
    err = launchers.crashed_job_error(FailedJobError(text))
    assert str(err) == (
        "a sweep job could not be launched or died outside elastic (Job (task=0) failed during processing "
        "with trace); its log: /shared/out/multiruns/x/.submitit/62_0/62_0_0_log.err"
    )


def test_the_slurm_launcher_without_slurm_is_one_line(monkeypatch):
    import shutil

    from elastic_cli import launchers
    from elastic_cli.errors import UserError

    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="hydra/launcher=slurm needs Slurm's commands"):
        launchers.check_launcher(target)
    launchers.check_launcher("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    launchers.check_launcher(target)  # Slurm's commands found: go on
