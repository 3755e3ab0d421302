"""elastic against a team MLflow tracking server, as a user runs it: a real `mlflow server` on 127.0.0.1
(SQLite backend, artifacts served over HTTP), MLFLOW_TRACKING_URI pointing at it, and every stage, a
sweep and a report logging through it; then what is read back through the server. A server that cannot
be reached, or refuses elastic's calls, is one line and exit 2 before anything is trained."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic, ok

from elastic_cli import tracking
from elastic_cli.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def answering(request) -> Iterator[str]:
    """A web server that answers every request with one HTTP status (request.param)."""
    status = request.param

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    "answering,needle",
    [
        (401, "refuses elastic's calls (HTTP 401)"),
        (403, "HTTP 403"),
        (404, "not as an MLflow tracking server"),
    ],
    indirect=["answering"],
)
def test_a_server_that_refuses_or_is_not_mlflow_is_one_line(answering: str, needle: str):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        tracking.ensure_reachable(answering)


def test_the_server_check_sends_mlflows_credentials(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert tracking._auth_headers() == {"Authorization": "Basic YWRhOnMzY3JldA=="}
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    assert tracking._auth_headers() == {"Authorization": "Bearer tok"}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` with a SQLite backend and --serve-artifacts: clients upload artifacts over HTTP."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts",
        "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(1)
    yield uri, root
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_every_stage_a_sweep_and_a_report_log_through_a_tracking_server(
    server: tuple[str, Path], tmp_path: Path
):
    from mlflow import MlflowClient

    uri, server_root = server
    write_synthetic_task(tmp_path / "data", n_train=300, n_dev=120, seed=0)
    args = [a for a in TINY if not a.startswith("train.epochs")] + ["train.epochs=2"]
    args += [f"task.data_dir={tmp_path / 'data'}", "evaluate.latency=false"]
    stage_args = [a for a in args if not a.startswith("train.")]
    env = {"MLFLOW_TRACKING_URI": uri}
    ok(elastic("train", *args, cwd=tmp_path, env=env))
    ok(elastic("calibrate", *stage_args, cwd=tmp_path, env=env))
    ok(elastic("evaluate", *stage_args, cwd=tmp_path, env=env))
    ok(
        elastic(
            "evaluate", *stage_args, "sweep=thresholds", "method.exit.sweep=0.6,0.9", cwd=tmp_path, env=env
        )
    )
    report = ok(elastic("report", "task=sst2", cwd=tmp_path, env=env))

    # nothing went to a local store: the runs are on the server
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sst2")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert all(r.info.status == "FINISHED" for r in runs)
    stages = sorted(
        r.data.tags.get("elastic.stage", "") for r in runs if "mlflow.parentRunId" not in r.data.tags
    )
    assert stages == ["calibrate", "evaluate", "evaluate", "report", "train"]  # the sweep's parent is one
    [single] = [
        r
        for r in runs
        if r.data.tags.get("elastic.stage") == "evaluate"
        and "mlflow.parentRunId" not in r.data.tags
        and r.data.tags.get("elastic.sweep") != "true"
    ]
    assert 0.0 <= single.data.metrics["accuracy"] <= 1.0 and single.data.metrics["flops_speedup"] >= 1.0
    [parent] = [r for r in runs if r.data.tags.get("elastic.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["exit.threshold"] for c in children) == ["0.6", "0.9"]
    # artifacts go up through the server and come back through it
    config = client.download_artifacts(single.info.run_id, "config.yaml", str(tmp_path / "back"))
    assert "stage: evaluate" in Path(config).read_text()
    assert list((server_root / "artifacts").rglob("config.yaml")), "the server holds the artifacts"
    [report_run] = [r for r in runs if r.data.tags.get("elastic.stage") == "report"]
    names = {a.path for a in client.list_artifacts(report_run.info.run_id)}
    assert {"report.csv", "report.md", "report.html"} <= {Path(n).name for n in names} | names, names
    assert report.returncode == 0


@pytest.mark.slow
def test_an_unreachable_server_stops_before_training(tmp_path: Path):
    write_synthetic_task(tmp_path / "data", n_train=100, n_dev=40, seed=0)
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = elastic(
        "train",
        *TINY,
        f"task.data_dir={tmp_path / 'data'}",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": closed},
    )
    _one_line_error(proc, "unreachable", closed)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "outputs" / "checkpoints").exists()
