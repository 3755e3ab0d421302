"""Processes starting together on a fresh SQLite store lose no run (issue 10).

Without the store lock, MLflow's schema creation races: of 4 processes, most died in its migrations
("table runs already exists", "duplicate column name", alembic's "expected to match one row") and none or
one run was stored. Each test starts its processes at the same instant on a store that does not exist
yet, then reads every run back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, elastic, ok

pytestmark = pytest.mark.slow

PROCESSES = 4

# One stage run per process: the slow imports first, then all wait for the go file and open the store
# at once; each logs a metric series, so that concurrent writes meet as well.
STAGE = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from elastic_cli.config import RootConfig
from elastic_cli import tracking
import mlflow

store, go, index = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
raw = OmegaConf.merge(OmegaConf.structured(RootConfig), {
    "stage": "evaluate", "outputs": str(store / "outputs"), "seed": index,
    "method": {"name": "early_exit"}, "backbone": {"name": "tiny-bert", "family": "bert", "path": "none"},
    "task": {"name": "together", "dataset": "local"},
    "tracking": {"uri": f"sqlite:///{store / 'mlflow.db'}"},
})
cfg = OmegaConf.to_object(raw)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
with tracking.stage_run(cfg, raw, checkpoint=store / "ckpt"):
    for step in range(20):
        tracking.log_metrics({"loss": 1.0 / (step + 1), "index": float(index)}, step=step)
"""


def _client(database: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{database}")


@pytest.mark.extended  # CI runs the 4 real evaluates below
def test_stage_runs_starting_together_on_a_fresh_store(tmp_path: Path):
    store, go = tmp_path / "store", tmp_path / "go"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE, str(store), str(go), str(i)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        for proc in procs:  # every one imported and waiting
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert not (store / "mlflow.db").exists()
        go.touch()
        results = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
    client = _client(store / "mlflow.db")
    experiment = client.get_experiment_by_name("together")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == PROCESSES
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.metrics["index"] for r in runs) == [float(i) for i in range(PROCESSES)]
    assert sorted(r.data.params["seed"] for r in runs) == [str(i) for i in range(PROCESSES)]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(20))
    # one experiment (the task's) besides MLflow's Default: no process created a second one
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "together"]


def test_four_evaluates_at_once_on_a_fresh_store(tmp_path: Path):
    """The user's case: a shell loop starts `elastic evaluate` with four thresholds in the background."""
    write_synthetic_task(tmp_path / "data", n_train=300, n_dev=80, seed=0)
    common = [*TINY, f"task.data_dir={tmp_path / 'data'}", f"outputs={tmp_path / 'out'}"]
    ok(elastic("train", *common, "train.epochs=1", "tracking.enabled=false", cwd=tmp_path))
    fresh = tmp_path / "fresh" / "mlflow.db"
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env = {**base, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    thresholds = ["0.6", "0.7", "0.8", "0.9"]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastic_cli",
                "evaluate",
                *common,
                f"method.exit.threshold={t}",
                "evaluate.latency=false",
                f"tracking.uri=sqlite:///{fresh}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in thresholds
    ]
    try:
        results = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
    client = _client(fresh)
    experiment = client.get_experiment_by_name("sst2")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["exit.threshold"] for r in runs) == thresholds
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(0.0 <= r.data.metrics["accuracy"] <= 1.0 for r in runs)
    print(f"4 evaluates: {time.monotonic() - started:.1f} s")
