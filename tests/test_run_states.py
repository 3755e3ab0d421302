"""A run never stays RUNNING by accident (issue 10): it ends KILLED on Ctrl-C or SIGTERM; the RUNNING run
of a process killed by SIGKILL is marked KILLED by the next stage on its checkpoint; a resumed run comes
back to RUNNING and ends like any other; a bad store or outputs folder is one line, exit code 2.

The in-process tests share one SQLite store (a store costs about 1.5 s of migrations) and each writes to
its own experiment; the CLI ones (`slow`) start `python -m elastic_cli` as a user does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic
from test_tracking import client_for, runs_of
from test_tracking import make_config as tracking_config

from elastic_cli import cli, hydra_callbacks, tracking
from elastic_cli.config import RootConfig
from elastic_cli.errors import UserError


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tracking_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """caplog for elastic_cli.tracking, even after a Hydra app's logging config disabled existing loggers."""
    logger = logging.getLogger("elastic_cli.tracking")
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "propagate", True)
    return caplog


def make_config(store: Path, task: str, **overrides) -> tuple[RootConfig, DictConfig]:
    """test_tracking's config, as a train stage."""
    return tracking_config(store, task, **{"stage": "train", **overrides})


def dead_pid() -> int:
    """The pid of a process that has come and gone (reaped: not even a zombie)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def forge_running_run(store: Path, task: str, checkpoint: Path, pid: int, host: str | None = None) -> str:
    """A RUNNING run as a stage of process `pid` on `host` leaves it when it dies by SIGKILL."""
    client = client_for(store)
    experiment_id = client.get_experiment_by_name(task).experiment_id
    tags = {
        tracking.CHECKPOINT_TAG: str(checkpoint.resolve()),
        tracking.PID_TAG: str(pid),
        tracking.HOST_TAG: host or socket.gethostname(),
    }
    run = client.create_run(experiment_id, tags=tags)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    return run.info.run_id


# --- every run carries its checkpoint, pid and host ---------------------------------------------------


def test_stage_run_tags_checkpoint_pid_and_host(store: Path, tmp_path: Path):
    cfg, raw = make_config(store, "tags_task")
    with tracking.stage_run(cfg, raw, checkpoint=tmp_path / "ckpt") as run:
        assert tracking.active_run_id() == run.info.run_id
    assert tracking.active_run_id() is None
    [logged] = runs_of(store, "tags_task")
    tags = logged.data.tags
    assert tags[tracking.CHECKPOINT_TAG] == str((tmp_path / "ckpt").resolve())
    assert tags[tracking.PID_TAG] == str(os.getpid())
    assert tags[tracking.HOST_TAG] == socket.gethostname()
    assert logged.info.status == "FINISHED"


# --- SIGKILL: the next stage on the checkpoint marks the orphan KILLED ----------------------------------


def test_stale_run_of_a_dead_process_is_marked_killed_by_the_next_stage(
    store: Path, tmp_path: Path, tracking_log: pytest.LogCaptureFixture
):
    task, ckpt, other = "stale_task", tmp_path / "ckpt", tmp_path / "other_ckpt"
    cfg, raw = make_config(store, task)
    with tracking.stage_run(cfg, raw, checkpoint=ckpt):  # creates the experiment
        pass
    gone = dead_pid()
    orphan = forge_running_run(store, task, ckpt, gone)
    alive = forge_running_run(store, task, ckpt, os.getppid())  # pytest's parent: a live process
    elsewhere = forge_running_run(store, task, other, gone)  # another checkpoint
    remote = forge_running_run(store, task, ckpt, gone, host="another-host.example")

    with tracking_log.at_level(logging.INFO, logger="elastic_cli.tracking"):
        with tracking.stage_run(cfg, raw, checkpoint=ckpt) as run:
            status = client_for(store).get_run(orphan).info.status
    assert status == "KILLED"  # before this stage's run started
    client = client_for(store)
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).info.end_time is not None
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(remote).info.status == "RUNNING"  # its process cannot be seen from here
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    [line] = [r.getMessage() for r in tracking_log.records if "KILLED" in r.getMessage()]
    assert orphan in line and f"pid {gone}" in line and str(ckpt.resolve()) in line


def test_pid_alive():
    assert tracking.pid_alive(os.getpid()) and tracking.pid_alive(os.getppid())
    assert not tracking.pid_alive(dead_pid())


# --- resume: the same run, back to RUNNING, then ended like any other -----------------------------------


def test_resume_continues_the_same_run(store: Path, tmp_path: Path):
    task, ckpt = "resume_task", tmp_path / "ckpt"
    cfg, raw = make_config(store, task)
    with pytest.raises(KeyboardInterrupt), tracking.stage_run(cfg, raw, checkpoint=ckpt) as first:
        tracking.log_metrics({"train/loss": 0.9}, step=1)
        raise KeyboardInterrupt
    run_id = first.info.run_id
    assert client_for(store).get_run(run_id).info.status == "KILLED"

    cfg2, raw2 = make_config(store, task, train={"epochs": 7})  # a changed setting
    with tracking.stage_run(cfg2, raw2, checkpoint=ckpt, resume_run_id=run_id) as second:
        assert second.info.run_id == run_id and tracking.active_run_id() == run_id
        assert client_for(store).get_run(run_id).info.status == "RUNNING"
        tracking.log_metrics({"train/loss": 0.4}, step=2)
    [logged] = runs_of(store, task)  # no second run
    assert logged.info.run_id == run_id and logged.info.status == "FINISHED"
    history = client_for(store).get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.4)]
    assert logged.data.params["train.epochs"] == str(cfg.train.epochs)  # MLflow keeps the first value
    assert logged.data.tags[tracking.PID_TAG] == str(os.getpid())
    artifacts = {a.path for a in client_for(store).list_artifacts(run_id)}
    assert {"config.yaml", "config_resume.yaml"} <= artifacts


def test_resume_of_a_run_left_running_by_a_killed_process(store: Path, tmp_path: Path):
    """The stale sweep comes first and may mark the very run being resumed: it comes back to RUNNING."""
    task, ckpt = "resume_stale_task", tmp_path / "ckpt"
    cfg, raw = make_config(store, task)
    with tracking.stage_run(cfg, raw, checkpoint=tmp_path / "unrelated"):
        pass
    orphan = forge_running_run(store, task, ckpt, dead_pid())
    with tracking.stage_run(cfg, raw, checkpoint=ckpt, resume_run_id=orphan) as run:
        assert run.info.run_id == orphan
        assert client_for(store).get_run(orphan).info.status == "RUNNING"
        assert client_for(store).get_run(orphan).data.tags[tracking.PID_TAG] == str(os.getpid())
    assert client_for(store).get_run(orphan).info.status == "FINISHED"
    assert len(runs_of(store, task)) == 2


def test_resume_of_an_unknown_run_starts_a_new_one(
    store: Path, tmp_path: Path, tracking_log: pytest.LogCaptureFixture
):
    cfg, raw = make_config(store, "resume_unknown_task")
    missing = "0" * 32
    with tracking_log.at_level(logging.WARNING, logger="elastic_cli.tracking"):
        with tracking.stage_run(cfg, raw, checkpoint=tmp_path, resume_run_id=missing) as run:
            assert run.info.run_id != missing
    [logged] = runs_of(store, "resume_unknown_task")
    assert logged.info.run_id == run.info.run_id and logged.info.status == "FINISHED"
    assert any(missing in r.getMessage() and "new run" in r.getMessage() for r in tracking_log.records)


# --- SIGTERM: an interrupt, so the run ends KILLED ---------------------------------------------------


def test_sigterm_inside_a_stage_ends_its_run_killed(store: Path, tmp_path: Path):
    cfg, raw = make_config(store, "sigterm_task")
    previous = signal.signal(signal.SIGTERM, cli._on_sigterm)
    try:
        with pytest.raises(cli.Terminated), tracking.stage_run(cfg, raw, checkpoint=tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises in here
        # a second SIGTERM must not cut the unwinding short
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    [logged] = runs_of(store, "sigterm_task")
    assert logged.info.status == "KILLED" and not tracking.active()


def started_sweep(
    store: Path, task: str, sweep_dir: Path, sweep: str
) -> tuple[hydra_callbacks.MlflowSweepCallback, DictConfig, dict]:
    """A multirun's callback after on_multirun_start, its master config, and the config overrides its jobs
    get (the parent's id)."""
    _, raw = make_config(store, task)
    config = OmegaConf.merge(
        OmegaConf.to_container(raw),
        {"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": [sweep]}}},
    )
    callback = hydra_callbacks.MlflowSweepCallback()
    callback.on_multirun_start(config)
    [parent] = [o for o in config.hydra.overrides.task if o.startswith("tracking.parent_run_id=")]
    assert isinstance(config, DictConfig)
    return callback, config, {"tracking": {"parent_run_id": parent.split("=", 1)[1]}}


def test_interrupted_sweep_parent_ends_killed(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What the atexit hook does after the CLI caught Ctrl-C or SIGTERM in the middle of a multirun."""
    task, sweep_dir = "sweep_sigterm_task", tmp_path / "multirun"
    callback, _, job = started_sweep(store, task, sweep_dir, "seed=1,2")
    cfg, raw = make_config(store, task, **job)
    with pytest.raises(cli.Terminated), tracking.stage_run(cfg, raw, checkpoint=tmp_path):
        raise cli.Terminated
    monkeypatch.setattr(hydra_callbacks, "_interrupted", False)
    hydra_callbacks.mark_interrupted()
    callback._end_at_exit()
    parent_id = tracking.parent_run_id(sweep_dir)
    [parent, child] = runs_of(store, task)
    assert parent.info.run_id == parent_id and child.data.tags["mlflow.parentRunId"] == parent_id
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"
    parent = client_for(store).get_run(parent_id)
    assert parent.data.metrics["children"] == 1 and parent.data.metrics["failed_children"] == 1


def test_sweep_end_fails_children_whose_job_vanished(store: Path, tmp_path: Path):
    """A job killed by SIGKILL (or by Slurm for its memory) cannot end its run: the parent's end marks it
    FAILED when its process is known gone, leaves a live or unknown one RUNNING, and names the failed."""
    task, sweep_dir = "sweep_vanished_task", tmp_path / "multirun"
    callback, config, job = started_sweep(store, task, sweep_dir, "seed=1,2,3")
    parent_id = job["tracking"]["parent_run_id"]
    assert parent_id == tracking.parent_run_id(sweep_dir)
    cfg, raw = make_config(store, task, **job)
    with tracking.stage_run(cfg, raw, run_name="job 0"):
        pass
    client = client_for(store)
    experiment_id = client.get_experiment_by_name(task).experiment_id

    def forged_child(name: str, pid: int, host: str) -> str:
        tags = {"mlflow.parentRunId": parent_id, tracking.PID_TAG: str(pid), tracking.HOST_TAG: host}
        return client.create_run(experiment_id, tags=tags, run_name=name).info.run_id

    vanished = forged_child("job 1", dead_pid(), socket.gethostname())
    elsewhere = forged_child("job 2", dead_pid(), "another-node")  # cannot be seen from here
    callback.on_multirun_end(config)
    assert client.get_run(vanished).info.status == "FAILED"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED" and parent.data.metrics["failed_children"] == 2
    named = parent.data.tags[hydra_callbacks.FAILED_CHILDREN_TAG]
    assert f"job 1 (FAILED, {vanished})" in named and f"job 2 (RUNNING, {elsewhere})" in named
    assert "job 0" not in named


@pytest.mark.parametrize(
    "queue,gone",
    [
        ("printf 'RUNNING\\n'", False),  # still in the queue
        ("exit 0", True),  # no longer listed
        ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", True),  # forgotten
        ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1", False),
    ],
)
def test_a_slurm_job_is_gone_when_the_queue_no_longer_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue: str, gone: bool
):
    squeue = tmp_path / "squeue"
    squeue.write_text(f'#!/bin/sh\n[ "$3" = 77_3 ] || exit 9\n{queue}\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    tags = {tracking.HOST_TAG: "another-node", tracking.PID_TAG: "12", tracking.SLURM_JOB_TAG: "77_3"}
    assert tracking.process_gone(tags) is gone
    # a run of this host is judged by its pid, a run with neither by nothing
    assert tracking.process_gone({tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(dead_pid())})
    assert not tracking.process_gone({tracking.HOST_TAG: "another-node", tracking.PID_TAG: "12"})


def test_a_slurm_array_task_tags_its_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_JOB_ID", "81")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert tracking.process_tags(None)[tracking.SLURM_JOB_TAG] == "77_3"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert tracking.process_tags(None)[tracking.SLURM_JOB_TAG] == "81"


# --- a damaged store, a bad outputs folder: one line ----------------------------------------------------


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"just some text, not a database\n", "is not an SQLite database"),
        (b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 5000, r"is truncated \(5018 bytes\)"),
    ],
    ids=["text", "cut-mid-page"],
)
def test_store_that_is_no_database_is_a_user_error(tmp_path: Path, content: bytes, needle: str):
    database = tmp_path / "mlflow.db"
    database.write_bytes(content)
    cfg, raw = make_config(tmp_path, "broken_task")
    with pytest.raises(UserError, match=needle) as caught, tracking.stage_run(cfg, raw):
        pass
    assert str(database) in str(caught.value) and "move it away" in str(caught.value)
    assert database.read_bytes() == content  # left as it was


def test_store_cut_at_a_page_boundary_is_a_user_error(store: Path, tmp_path: Path):
    """A copy cut short on a page boundary passes the size check: SQLite's "malformed" is caught."""
    cfg, raw = make_config(store, "whole_task")
    with tracking.stage_run(cfg, raw):
        pass
    data = (store / "mlflow.db").read_bytes()
    page = int.from_bytes(data[16:18], "big")
    cut = tmp_path / "mlflow.db"
    cut.write_bytes(data[: page * 2])
    cfg, raw = make_config(tmp_path, "cut_task")
    with pytest.raises(UserError, match=r"mlflow.db is damaged \(database disk image is malformed\)"):
        with tracking.stage_run(cfg, raw):
            pass
    assert not tracking.active()


def test_outputs_that_is_a_file_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "outputs"
    blocker.write_text("")
    with pytest.raises(UserError, match=f"{blocker} .*is a file, not a folder"):
        tracking.make_outputs_folder(blocker)


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder this process cannot write into: chmod for a user; a read-only tmpfs for root (who writes
    through permissions), skipped where mounting is not allowed."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("root, and no read-only mount allowed here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_read_only_outputs_is_a_user_error(read_only_folder: Path):
    with pytest.raises(UserError, match=f"the folder {read_only_folder} of the outputs is not writable"):
        tracking.make_outputs_folder(read_only_folder)


# --- with retries while the database is locked ---------------------------------------------------------


def _locked_error():
    """What MLflow raises when SQLite stays locked: an MlflowException over SQLAlchemy's OperationalError."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    cause = sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))
    try:
        raise MlflowException(message=cause) from cause
    except MlflowException as err:
        return err


def test_with_retry_retries_locked_store_calls_only(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    calls = []

    def flaky(value: int) -> int:
        calls.append(value)
        if len(calls) < 3:
            raise _locked_error()
        return value * 2

    assert tracking.with_retry(flaky, 21) == 42 and calls == [21, 21, 21]

    def broken() -> None:
        calls.append(0)
        raise ValueError("not a lock")

    calls.clear()
    with pytest.raises(ValueError):
        tracking.with_retry(broken)
    assert calls == [0]  # no retry

    def always_locked() -> None:
        calls.append(1)
        raise _locked_error()

    calls.clear()
    with pytest.raises(UserError, match="stayed locked through 4 tries"):
        tracking.with_retry(always_locked)
    assert calls == [1, 1, 1, 1]


# --- through the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("states")
    write_synthetic_task(root / "data", n_train=900, n_dev=240, seed=0)
    return root


def _statuses(database: Path) -> list[tuple[str, str | None]]:
    """(status, parent run id) of every run, read with sqlite3 (an MLflow client would race the stage's
    own store creation); empty until the tables exist."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(
                "SELECT r.status, t.value FROM runs r LEFT JOIN tags t "
                "ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' ORDER BY r.start_time"
            ).fetchall()
    except sqlite3.Error:
        return []


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,code,line,multirun",
    [
        (signal.SIGTERM, 143, "terminated by SIGTERM", False),
        pytest.param(signal.SIGINT, 130, "interrupted", False, marks=pytest.mark.extended),
        (signal.SIGTERM, 143, "terminated by SIGTERM", True),
    ],
    ids=["sigterm", "ctrl-c", "sigterm-multirun"],
)
def test_signal_ends_the_cli_and_its_runs_killed(workdir: Path, tmp_path: Path, sig, code, line, multirun):
    out = tmp_path / "out"
    args = [*TINY, f"task.data_dir={workdir / 'data'}", f"outputs={out}", "train.epochs=500"]
    args = ["-m", *args, "seed=1,2"] if multirun else args
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastic_cli", "train", *args],
        cwd=workdir,
        env={**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wanted = 2 if multirun else 1  # the sweep parent and its first child
        deadline = time.monotonic() + 180
        while [s for s, _ in _statuses(out / "mlflow.db")].count("RUNNING") < wanted:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the stage never started its run"
            time.sleep(0.5)
        time.sleep(1.0)  # well inside the stage
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr[-3000:]
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    assert lines[-1] == line and lines.count(line) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    runs = _statuses(out / "mlflow.db")
    assert [s for s, _ in runs] == ["KILLED"] * wanted, runs
    if multirun:  # one child, of the parent; the second job never started
        assert runs[1][1] is not None and runs[0][1] is None
    ckpt = out / "checkpoints"
    assert not [p for p in ckpt.rglob("*") if ".tmp-" in p.name]  # no partial file left behind


@pytest.mark.slow
def test_sigkilled_stage_run_is_marked_killed_by_the_next_stage(store: Path, tmp_path: Path):
    """A real process dies by SIGKILL inside its stage run; the next stage_run on its checkpoint ends it."""
    task, ckpt = "sigkill_task", tmp_path / "ckpt"
    script = f"""
import sys, time
from omegaconf import OmegaConf
from elastic_cli import tracking
from elastic_cli.config import RootConfig
raw = OmegaConf.create({OmegaConf.to_container(make_config(store, task)[1], enum_to_str=True)!r})
raw = OmegaConf.merge(OmegaConf.structured(RootConfig), raw)
with tracking.stage_run(OmegaConf.to_object(raw), raw, checkpoint={str(ckpt)!r}) as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        assert client_for(store).get_run(run_id).info.status == "RUNNING"
    finally:
        proc.kill()
        proc.wait()
    assert client_for(store).get_run(run_id).info.status == "RUNNING"  # nobody could end it
    cfg, raw = make_config(store, task, stage="calibrate")
    with tracking.stage_run(cfg, raw, checkpoint=ckpt):
        pass
    assert client_for(store).get_run(run_id).info.status == "KILLED"


@pytest.mark.slow
def test_cli_outputs_that_is_a_file_is_one_line(workdir: Path, tmp_path: Path):
    blocker = tmp_path / "outputs"
    blocker.write_text("not a folder")
    proc = elastic("evaluate", *TINY, f"outputs={blocker}", cwd=workdir)
    _one_line_error(proc, str(blocker), "is a file, not a folder", "outputs=")
    multirun = elastic("evaluate", "-m", *TINY, f"outputs={blocker}", "seed=1,2", cwd=workdir)
    _one_line_error(multirun, str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_cli_store_that_is_no_database_is_one_line(workdir: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow.db").write_text("hello, I am a text file\n")
    data = f"task.data_dir={workdir / 'data'}"
    proc = elastic("train", *TINY, data, f"outputs={out}", "train.epochs=1", cwd=workdir)
    _one_line_error(proc, str(out / "mlflow.db"), "is not an SQLite database", "move it away")
    sweep = elastic("train", "-m", *TINY, data, f"outputs={out}", "seed=1,2", cwd=workdir)
    _one_line_error(sweep, str(out / "mlflow.db"), "is not an SQLite database")
    assert not list(out.rglob("*.safetensors"))  # nothing trained
    assert (out / "mlflow.db").read_text() == "hello, I am a text file\n"  # left as it was


@pytest.mark.slow
def test_cli_read_only_outputs_is_one_line(workdir: Path, read_only_folder: Path):
    proc = elastic("evaluate", *TINY, f"outputs={read_only_folder}", cwd=workdir)
    _one_line_error(proc, str(read_only_folder), "is not writable")
