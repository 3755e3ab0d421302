"""MLflow runs of the stages: where runs go, what every run records, and the helpers the stages log with.

One experiment per task (`tracking.experiment` overrides the name); method, backbone and stage are
params and tags. Inside a Hydra multirun the run is a child of the sweep's parent run, whose id the
sweep callback (elastic_cli.hydra_callbacks) puts in every job's config (`tracking.parent_run_id`).
`import mlflow` costs about a second, so it happens inside the functions, never when this module is
imported.

A run never stays RUNNING by accident: it ends FINISHED, FAILED (an error) or KILLED (Ctrl-C, or SIGTERM,
which the CLI raises as an interrupt). A process that dies by SIGKILL cannot end its run: every run is
tagged with its checkpoint folder, host and pid, and the next stage on that checkpoint marks the RUNNING
runs of vanished processes of this host KILLED. Processes starting together share a fresh SQLite store
safely: it is created (MLflow's migrations) under a file lock next to the database, and a store call
that meets "database is locked" is retried with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from elastic_cli import launchers, run_record
from elastic_cli.config import ReportRootConfig
from elastic_cli.errors import UserError
from elastic_cli.files import pid_alive
from elastic_cli.progress import console

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from elastic_cli.config import RootConfig

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"  # written into the sweep folder by the sweep callback
JOB_TAG = "elastic.sweep_job"  # a sweep child's job number
SLURM_JOB_TAG = "elastic.slurm_job"  # the Slurm job a run ran in
THREADS_TAG = "elastic.torch_threads"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
REACHABLE_TIMEOUT_S = 3.0
CHECKPOINT_TAG, PID_TAG, HOST_TAG = "elastic.checkpoint", "elastic.pid", "elastic.host"
STORE_LOCK_TIMEOUT_S = 300.0  # creating a store takes seconds; a lock held longer is a hung process
# Waits before each retry of a store call that found the database locked (each try already waits up to
# MLflow's 20 s SQLite busy timeout); then the error propagates. Jittered so that retries spread out.
RETRY_DELAYS_S = (0.1, 0.3, 0.6, 1.0, 2.0, 4.0, 8.0)
SQLITE_MAGIC = b"SQLite format 3\x00"
_T = TypeVar("_T")


# --- where runs go -------------------------------------------------------------------------------------


def resolve_uri(cfg: RootConfig | ReportRootConfig | DictConfig) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<absolute outputs>/mlflow.db.

    Accepts the typed config or the raw DictConfig (the sweep callback only has the latter).
    """
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    outputs = make_outputs_folder(cfg.outputs)
    return f"sqlite:///{(outputs / 'mlflow.db').as_posix()}"


def make_outputs_folder(outputs: str | Path) -> Path:
    """The absolute outputs folder, created; one line (UserError) when it is a file or read-only."""
    return _make_folder(Path(outputs).resolve(), "outputs")


def artifact_location(cfg: RootConfig | ReportRootConfig | DictConfig, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: <abs outputs>/mlartifacts for a local store.

    A tracking server decides for itself (it may proxy artifacts to object storage): None.
    """
    if _is_remote(uri):
        return None
    return (Path(cfg.outputs).resolve() / "mlartifacts").as_uri()


def experiment_name(cfg: RootConfig | ReportRootConfig | DictConfig) -> str:
    return str(cfg.tracking.experiment or cfg.task.name)


def ensure_reachable(uri: str) -> None:
    """Fail fast, with one line, instead of MLflow's minutes of HTTP retries or a deep SQLAlchemy error."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in (
        "1",
        "true",
    ):
        raise UserError(
            f"MLflow tracking uri {uri} is a file store, which MLflow 3 refuses: "
            "set tracking.uri=sqlite:///outputs/mlflow.db (or unset MLFLOW_TRACKING_URI)"
        )


def _check_server(uri: str) -> None:
    unreachable = UserError(
        f"MLflow tracking server {uri} is unreachable: start it, or unset MLFLOW_TRACKING_URI / "
        "set tracking.uri=sqlite:///outputs/mlflow.db"
    )
    # one real API call, with the credentials MLflow would send: it answers whether the server is up, is
    # MLflow, and takes our calls; a refusal would otherwise stop the stage later, after its model and
    # data were loaded, with MLflow's traceback
    query = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", headers=_auth_headers()
    )
    try:
        with urllib.request.urlopen(query, timeout=REACHABLE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise UserError(
                f"MLflow tracking server {uri} refuses elastic's calls (HTTP {err.code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
            ) from None
        if err.code == 404:
            raise UserError(
                f"{uri} answers, but not as an MLflow tracking server (HTTP 404 on its REST API): check "
                "MLFLOW_TRACKING_URI / tracking.uri"
            ) from None
        raise UserError(
            f"MLflow tracking server {uri} answers HTTP {err.code} ({err.reason}): check the server's log"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        raise unreachable from err


def _auth_headers() -> dict[str, str]:
    """The Authorization header MLflow's client sends, from its environment variables."""
    import base64

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}


def _check_sqlite(uri: str) -> None:
    database = sqlite_file(uri)
    if database is None:
        return
    _make_folder(database.parent, f"MLflow database {uri}")
    with store_lock(uri):
        pass  # it checks the file while no other process can be half-way through creating it


def sqlite_file(uri: str) -> Path | None:
    """The absolute path of a local SQLite tracking store's file; None for any other store (or in memory)."""
    if urlparse(uri).scheme != "sqlite":
        return None
    path = uri[len("sqlite://") :].split("?", 1)[0]
    if path in ("", "/", "/:memory:"):
        return None
    # sqlite:///relative/path.db and sqlite:////absolute/path.db (SQLAlchemy's convention)
    return Path(path[1:]).resolve()


def check_database_file(database: Path) -> None:
    """Refuse, in one line, a store file that is no SQLite database or is cut short (a copy or a disk that
    ran out): SQLite would only say "file is not a database" or "malformed", deep in a traceback."""
    if not database.exists():
        return
    fix = "move it away (a new store is created there) or set tracking.uri=sqlite:///<other path>.db"
    if not database.is_file():
        raise UserError(f"the MLflow database {database} is not a file: {fix}")
    size = database.stat().st_size
    if size == 0:
        return  # SQLite takes an empty file for an empty database
    try:
        with database.open("rb") as f:
            header = f.read(100)
    except OSError as err:
        raise UserError(f"cannot read the MLflow database {database} ({err.strerror}): {fix}") from None
    if not header.startswith(SQLITE_MAGIC):
        raise UserError(f"the MLflow database {database} is not an SQLite database: {fix}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    # SQLite writes whole pages: a partial last page (or a partial header) is a truncated copy
    if len(header) < 100 or page_size < 512 or size % page_size:
        raise UserError(f"the MLflow database {database} is truncated ({size} bytes): {fix}")


def _make_folder(folder: Path, what: str) -> Path:
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{folder} (the folder of the {what}) is a file, not a folder: "
            "choose a folder with outputs=... or tracking.uri=sqlite:///<path>/mlflow.db"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the folder {folder} of the {what} ({err.strerror}): "
            "choose a writable outputs=... or tracking.uri=sqlite:///<path>/mlflow.db"
        ) from None
    if not os.access(folder, os.W_OK):
        raise UserError(
            f"the folder {folder} of the {what} is not writable: "
            "choose a writable outputs=... or tracking.uri=sqlite:///<path>/mlflow.db"
        )
    return folder


def _is_remote(uri: str) -> bool:
    return urlparse(uri).scheme not in ("", "file", "sqlite")


class _DropLockedReports(logging.Filter):
    """MLflow logs every SQLite "database is locked" with a traceback; `with_retry` retries those calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _locked_message(record.getMessage())


def quiet_mlflow_store_logs() -> None:
    # Creating a new sqlite store prints alembic migration lines: noise for a CLI user.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.db.db_types"):
        logging.getLogger(name).setLevel(logging.WARNING)
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropLockedReports) for f in store_log.filters):
        store_log.addFilter(_DropLockedReports())


# --- opening the store: created once under a file lock, then calls retried while it is locked ----------


def open_experiment(cfg: RootConfig | ReportRootConfig | DictConfig) -> tuple[str, MlflowClient, str]:
    """The tracking uri, a client, and the id of the task's experiment (created or restored if needed).

    The store is checked first (one-line errors). A local SQLite store is created or migrated under a
    file lock (<database>.lock): MLflow's migrations race when processes start together on a fresh store.
    """
    uri = resolve_uri(cfg)
    ensure_reachable(uri)
    quiet_mlflow_store_logs()
    from mlflow import MlflowClient

    with store_lock(uri):
        # MlflowClient builds this process's store object (MLflow caches it): tables, migrations
        client = with_retry(MlflowClient, uri)
        experiment_id = with_retry(
            get_or_create_experiment, client, experiment_name(cfg), artifact_location(cfg, uri)
        )
    return uri, client, experiment_id


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold <database>.lock for a local SQLite store (nothing for a server), and turn a damaged database
    met inside into one line."""
    database = sqlite_file(uri)
    if database is None:
        yield  # a server, or another database: it serialises its own schema changes
        return
    from filelock import FileLock, Timeout

    lock = FileLock(f"{database}.lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"waited {STORE_LOCK_TIMEOUT_S:.0f} s for {database}.lock: another process is creating the "
            "MLflow store and seems hung; stop it, or set tracking.uri=sqlite:///<other path>.db"
        ) from None
    except OSError as err:
        raise UserError(
            f"cannot create the lock file {database}.lock ({err.strerror}): "
            "choose a writable outputs=... or tracking.uri=sqlite:///<path>/mlflow.db"
        ) from None
    try:
        check_database_file(database)
        try:
            yield
        except Exception as err:
            damage = _damaged(err)
            if damage is None:
                raise
            raise UserError(
                f"the MLflow database {database} is damaged ({damage}): move it away (a new store is "
                "created there) or set tracking.uri=sqlite:///<other path>.db"
            ) from None
    finally:
        lock.release()


def with_retry(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """fn(*args, **kwargs), tried again after a jittered pause (RETRY_DELAYS_S) while the store answers
    that the database is locked: concurrent writers to one SQLite file. Other errors propagate at once."""
    for delay in RETRY_DELAYS_S:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not _locked(err):
                raise
            log.debug("MLflow store locked (%s): retrying in about %.1f s", _first_line(err), delay)
        time.sleep(delay * random.uniform(0.5, 1.5))
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if not _locked(err):
            raise
        raise UserError(
            f"the MLflow store stayed locked through {len(RETRY_DELAYS_S) + 1} tries "
            f"({_first_line(err)}): another process holds it for long (a big query?); try again"
        ) from None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _locked_message(message: str) -> bool:
    message = message.lower()
    return any(
        phrase in message
        for phrase in ("database is locked", "database table is locked", "database schema is locked")
    )


def _locked(err: BaseException) -> bool:
    return any(_locked_message(str(e)) for e in _chain(err))


def _damaged(err: BaseException) -> str | None:
    for e in _chain(err):
        message = str(e).lower()
        for phrase in ("file is not a database", "database disk image is malformed"):
            if phrase in message:
                return phrase
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def get_or_create_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    """The id of experiment `name`, created (with its artifact location) or restored when needed, tagged
    so that MLflow 3's UI opens it on its runs (not on GenAI traces) and described."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(
                name, artifact_location=location, tags=experiment_tags(name)
            )
            return experiment_id
        except MlflowException:
            # another job of a parallel sweep created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    # an experiment made before elastic tagged them, or by hand: tag it, keep a description it has
    for key, value in experiment_tags(name).items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def experiment_tags(name: str) -> dict[str, str]:
    return {
        "mlflow.experimentKind": run_record.EXPERIMENT_KIND,
        run_record.NOTE_TAG: run_record.experiment_description(name),
    }


# --- what every run records ----------------------------------------------------------------------------


def plain_config(raw: DictConfig) -> dict[str, Any]:
    """The config as plain Python, resolved where it can be, without Hydra's own node."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        container = OmegaConf.to_container(raw, resolve=True, enum_to_str=True)
    except OmegaConfBaseException:
        # e.g. a ${hydra:...} interpolation read outside a Hydra app: keep it as written
        container = OmegaConf.to_container(raw, resolve=False, enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items() if k != "hydra"}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to MLflow param strings: lists become their string, values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value)[:MAX_PARAM_CHARS]
    return flat


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or os.getcwd(),
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def stage_tags(cfg: RootConfig | ReportRootConfig) -> dict[str, str]:
    tags = {"elastic.stage": cfg.stage, "elastic.task": cfg.task.name}
    if not isinstance(cfg, ReportRootConfig):  # a report is of many models
        tags.update(
            {
                "elastic.method": cfg.method.name,
                "elastic.backbone": cfg.backbone.name,
                "elastic.seed": str(cfg.seed),
            }
        )
    commit = git_commit()
    if commit:
        tags["elastic.git_commit"] = commit
    job = sweep_job_number()
    if job is not None:  # the sweep's summary lists its children in job order, however they ran
        tags[JOB_TAG] = str(job)
    return tags


def sweep_job_number() -> int | None:
    """This job's number in its Hydra multirun (0, 1, ... in the sweep's order), else None."""
    job = launchers.multirun_job()
    return None if job is None else int(job.job.num)


# --- the sweep parent ----------------------------------------------------------------------------------


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The sweep's parent run id that the sweep callback wrote into `sweep_dir`, if it did."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def current_sweep_dir() -> Path | None:
    """The sweep folder when this process runs a job of a Hydra multirun, else None."""
    hydra_cfg = launchers.multirun_job()
    if hydra_cfg is None:
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    # hydra.job.chdir=true moves the job into its own folder: the sweep folder is relative to the launch cwd
    return sweep_dir if sweep_dir.is_absolute() else Path(hydra_cfg.runtime.cwd) / sweep_dir


# --- the stage run -------------------------------------------------------------------------------------


@dataclass
class _ActiveRun:
    client: MlflowClient
    run_id: str
    experiment_id: str
    uri: str


_active: _ActiveRun | None = None


def active() -> bool:
    """True inside a `stage_run` with tracking enabled."""
    return _active is not None


def active_run_id() -> str | None:
    """The id of the run this process has open (inside an enabled `stage_run`), else None."""
    return _active.run_id if _active is not None else None


def end_status(err: BaseException) -> str:
    """The status of a run its stage left by `err`: KILLED for Ctrl-C or SIGTERM (the CLI raises it as a
    KeyboardInterrupt), FINISHED for a zero exit, FAILED for anything else."""
    if isinstance(err, KeyboardInterrupt):
        return "KILLED"
    if isinstance(err, SystemExit) and err.code in (0, None):
        return "FINISHED"
    return "FAILED"


@contextmanager
def stage_run(
    cfg: RootConfig | ReportRootConfig,
    raw: DictConfig,
    run_name: str | None = None,
    *,
    checkpoint: Path | None = None,
    resume_run_id: str | None = None,
    record: run_record.CheckpointRecord | None = None,
) -> Iterator[Any]:
    """The MLflow run of one stage (a child of the sweep's parent inside a multirun): yields the mlflow
    ActiveRun, or None when `tracking.enabled` is false. Ends FINISHED; FAILED on an exception (a non-zero
    SystemExit included) and KILLED on an interrupt (Ctrl-C, SIGTERM), which propagate.

    `checkpoint`, the stage's checkpoint folder, is tagged on the run (with this host and pid); first, the
    RUNNING runs of that checkpoint whose process on this host is gone (SIGKILL) are marked KILLED.
    `resume_run_id` continues that run (back to RUNNING, with this process's tags) instead of starting
    one; a run id the store does not hold starts a new run, with a warning.

    `record`, the checkpoint a calibrate or evaluate run reads: its training config becomes the run's
    params beside the stage's own settings (elastic_cli.run_record), and the run is linked to the train
    run that wrote it. The run's id and UI link are printed when it ends."""
    global _active
    if not cfg.tracking.enabled:
        yield None
        return
    if _active is not None:
        raise RuntimeError("stage_run is already active: stages do not nest")
    uri, client, experiment_id = open_experiment(cfg)
    import mlflow

    mlflow.set_tracking_uri(uri)
    folder = str(Path(checkpoint).resolve()) if checkpoint is not None else None
    if folder is not None:
        end_stale_runs(client, experiment_id, folder)
    if resume_run_id is not None and not with_retry(_run_exists, client, resume_run_id):
        log.warning("run %s to resume is not in %s: starting a new run", resume_run_id, uri)
        resume_run_id = None
    tags = {**stage_tags(cfg), **process_tags(folder)}
    run = None
    before = _fluent_run_id()
    try:
        if resume_run_id is not None:
            run = with_retry(mlflow.start_run, run_id=resume_run_id, tags=tags)
        else:
            run = with_retry(
                mlflow.start_run,
                experiment_id=experiment_id,
                run_name=run_name or _default_run_name(cfg),
                parent_run_id=_parent_id(client, uri, cfg.tracking.parent_run_id),
                tags=tags,
            )
        _active = _ActiveRun(client, run.info.run_id, run.info.experiment_id, uri)
        _log_config(client, run.info.run_id, raw, resumed=resume_run_id is not None, record=record)
        if record is not None:
            _link_train_run(client, run.info.run_id, experiment_id, record)
        yield run
    except BaseException as err:
        # a signal can land between MLflow creating the run and `run` being set: end the fluent one
        run_id = run.info.run_id if run is not None else _fluent_run_id()
        if run_id is not None and run_id != before:
            try:
                _end_run(client, run_id, end_status(err))
            except Exception as end_err:  # keep the stage's own error
                log.warning("could not end MLflow run %s (%s)", run_id, _first_line(end_err))
        raise
    else:
        _end_run(client, run.info.run_id, "FINISHED")
        say_run(uri, run.info.experiment_id, run.info.run_id, cfg.stage, cfg.tracking.ui_url)
    finally:
        _active = None


def say_run(uri: str, experiment_id: str, run_id: str, what: str, ui_url: str | None = None) -> None:
    """The last lines of a stage: its run id and where the UI shows it."""
    link = run_record.run_link(uri, experiment_id, run_id, ui_url)
    console.print(f"{what} run {run_id}: {link}", highlight=False)
    opens = run_record.ui_command(uri)
    if opens and not ui_url:
        console.print(f"  (open the UI first: {opens})", highlight=False)


def rename_run(name: str) -> None:
    """Rename the open run, once what tells it apart is known (evaluate's calibrated threshold)."""
    if _active is None:
        return
    with_retry(_active.client.update_run, _active.run_id, name=name)


def _link_train_run(
    client: MlflowClient, run_id: str, experiment_id: str, record: run_record.CheckpointRecord
) -> None:
    """Tag the train run that wrote the checkpoint and link it from the run's description. A checkpoint
    that does not name its train run (written before elastic recorded it) is looked up by its folder."""
    train_run_id = record.train_run_id or _find_train_run(client, experiment_id, str(record.path))
    exists = bool(train_run_id) and with_retry(_run_exists, client, train_run_id)
    train_experiment = None
    if exists:
        train_experiment = with_retry(client.get_run, train_run_id).info.experiment_id
    note = run_record.train_run_note(replace(record, train_run_id=train_run_id), train_experiment)
    tags = {run_record.NOTE_TAG: note}
    if train_run_id:
        tags[run_record.TRAIN_RUN_TAG] = train_run_id
    for key, value in tags.items():
        with_retry(client.set_tag, run_id, key, value)


def _find_train_run(client: MlflowClient, experiment_id: str, folder: str) -> str:
    """The last finished train run of `folder` in the experiment, "" if none."""
    query = (
        f"tags.`{CHECKPOINT_TAG}` = '{folder}' and tags.`elastic.stage` = 'train' "
        "and attributes.status = 'FINISHED'"
    )
    found = with_retry(
        client.search_runs,
        [experiment_id],
        filter_string=query,
        max_results=1,
        order_by=["attributes.end_time DESC"],
    )
    return found[0].info.run_id if found else ""


def process_tags(checkpoint: str | None) -> dict[str, str]:
    """Who runs the run: this process and host (so a later stage can tell whether it died), and the
    checkpoint folder it works on."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if checkpoint is not None:
        tags[CHECKPOINT_TAG] = checkpoint
    torch = sys.modules.get("torch")  # (not imported for it: a report needs no torch)
    if torch is not None:  # the threads it ran with: a sweep's jobs share the machine (elastic_cli.launchers)
        tags[THREADS_TAG] = str(torch.get_num_threads())
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job:  # an array task's own id: <array job>_<task>, as squeue names it
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        tags[SLURM_JOB_TAG] = f"{array_job}_{task}" if array_job and task else slurm_job
    return tags


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process that runs a run with these tags is known to be gone: a dead pid on this host,
    or a Slurm job the queue no longer holds (killed by its time or memory limit: it could not end its
    run). Unknown (another host, no Slurm tag, squeue not answering) is not gone."""
    pid = _pid(tags.get(PID_TAG))
    if tags.get(HOST_TAG) == socket.gethostname() and pid is not None:
        return not pid_alive(pid)
    job = tags.get(SLURM_JOB_TAG)
    if not job or shutil.which("squeue") is None:
        return False
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:  # squeue refuses a job id it has forgotten: gone, unless it is down
        return "Invalid job id" in out.stderr
    return not out.stdout.strip()


def end_stale_runs(client: MlflowClient, experiment_id: str, checkpoint: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `checkpoint` in the experiment whose process, on this host, no longer
    exists (killed by SIGKILL, or the machine lost power). Runs of other hosts are left alone: their
    processes cannot be seen from here. Returns the ids marked."""
    from mlflow.entities import ViewType

    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    stale: list[tuple[str, int]] = []
    token = None
    while True:
        found = with_retry(
            client.search_runs,
            [experiment_id],
            filter_string=query,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        for run in found:
            pid = _pid(run.data.tags.get(PID_TAG))
            if (
                run.data.tags.get(CHECKPOINT_TAG) == checkpoint
                and pid is not None
                and process_gone(run.data.tags)
            ):
                stale.append((run.info.run_id, pid))
        token = found.token
        if not token:
            break
    for run_id, _ in stale:
        with_retry(client.set_terminated, run_id, status="KILLED")
    if stale:
        log.info(
            "marked KILLED %d RUNNING run(s) of %s whose process is gone: %s",
            len(stale),
            checkpoint,
            ", ".join(f"{run_id} (pid {pid})" for run_id, pid in stale),
        )
    return [run_id for run_id, _ in stale]


def _pid(text: str | None) -> int | None:
    try:
        pid = int(text or "")
    except ValueError:
        return None
    return pid if pid > 0 else None


def _parent_id(client: MlflowClient, uri: str, configured: str | None) -> str | None:
    """The run's parent: the config's `tracking.parent_run_id`, which the sweep callback sets in every
    job's config, if the store holds it."""
    parent_id = configured
    if parent_id is not None and not with_retry(_run_exists, client, parent_id):
        log.warning("parent run %s is not in %s: logging a top-level run", parent_id, uri)
        return None
    return parent_id


def _log_config(
    client: MlflowClient,
    run_id: str,
    raw: DictConfig,
    resumed: bool,
    record: run_record.CheckpointRecord | None = None,
) -> None:
    """The params (run_record.run_params: the config, or the checkpoint's training config beside the
    stage's settings) and the config as config.yaml. A resumed run keeps the params it has (MLflow
    refuses to change one): its new ones are added, and its config is config_resume.yaml."""
    config = plain_config(raw)
    params = flatten(run_record.run_params(config, record))
    if resumed:
        logged = with_retry(client.get_run, run_id).data.params
        changed = sorted(key for key, value in params.items() if key in logged and logged[key] != value)
        if changed:
            log.warning(
                "resumed run %s keeps its first values of %s (this config: config_resume.yaml)",
                run_id,
                ", ".join(changed[:8]) + (", ..." if len(changed) > 8 else ""),
            )
        params = {key: value for key, value in params.items() if key not in logged}
    log_params(params)
    text = OmegaConf.to_yaml(OmegaConf.create(config))
    with_retry(client.log_text, run_id, text, "config_resume.yaml" if resumed else "config.yaml")


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    import mlflow

    try:
        mlflow.end_run(status)  # pops MLflow's active run, then sets the status
    except Exception as err:
        if not _locked(err):
            raise
        with_retry(client.set_terminated, run_id, status=status)


def _fluent_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as err:
        if _locked(err):
            raise  # with_retry asks again
        return False


def _default_run_name(cfg: RootConfig | ReportRootConfig) -> str:
    if isinstance(cfg, ReportRootConfig):  # `report sst2`, `report sst2 mpnet-base`
        return " ".join(filter(None, [cfg.stage, cfg.task.name, cfg.report.backbone]))
    return run_record.run_name(
        cfg.stage, cfg.method.name, cfg.backbone.name, cfg.method.exit.name, cfg.method.exit.threshold
    )


# --- logging helpers: no-ops outside an enabled stage_run -----------------------------------------------


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    if _active is None or not metrics:
        return
    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
    with_retry(_active.client.log_batch, _active.run_id, metrics=batch)


def set_tag(key: str, value: str) -> None:
    if _active is None:
        return
    with_retry(_active.client.set_tag, _active.run_id, key, value)


def log_params(params: Mapping[str, Any]) -> None:
    if _active is None or not params:
        return
    from mlflow.entities import Param

    batch = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    with_retry(_active.client.log_batch, _active.run_id, params=batch)


def log_layer_tokens(
    mean_tokens: Sequence[float], prefix: str = "", who: str = "", files: bool = True
) -> None:
    """A length-reducing model's mean tokens entering each layer: the metric `<prefix>tokens_kept` with
    step = layer (1-indexed), the table `<prefix>layer_tokens.csv` and a bar chart PNG."""
    if _active is None:
        return
    import pandas as pd
    from mlflow.entities import Metric

    from elastic_cli.plots import layer_tokens_figure

    now = _now_ms()
    series = [Metric(f"{prefix}tokens_kept", float(t), now, layer) for layer, t in enumerate(mean_tokens, 1)]
    with_retry(_active.client.log_batch, _active.run_id, metrics=series)
    if not files:  # the metric alone: the split's folder holds the files
        return
    table = pd.DataFrame({"layer": list(range(1, len(mean_tokens) + 1)), "mean_tokens": list(mean_tokens)})
    log_dataframe(table, f"{prefix}layer_tokens.csv")
    title = _figure_title("mean tokens entering each layer", who, prefix)
    log_figure(layer_tokens_figure(mean_tokens, title), f"{prefix}layer_tokens.png")


def log_exit_histogram(
    counts: Sequence[int], layers: Sequence[int], prefix: str = "", who: str = "", files: bool = True
) -> None:
    """counts[i] examples left at layer layers[i] (1-indexed): the metric `<prefix>exit_count` with
    step = layer (for plotting; a runs table shows only its last step, so evaluate also logs
    exit_fraction_<exit> and mean_exit_layer), the table `<prefix>exit_histogram.csv` (layer, count,
    fraction) and a bar chart PNG titled with `who` (method / backbone / task); `files=False`: the metric
    alone (the split's folder holds the files)."""
    if _active is None:
        return
    if len(counts) != len(layers):
        raise ValueError(f"log_exit_histogram: {len(counts)} counts for {len(layers)} layers")
    import pandas as pd
    from mlflow.entities import Metric

    from elastic_cli.plots import exit_histogram_figure

    now = _now_ms()
    series = [
        Metric(f"{prefix}exit_count", float(c), now, int(layer))
        for c, layer in zip(counts, layers, strict=True)
    ]
    with_retry(_active.client.log_batch, _active.run_id, metrics=series)
    if not files:
        return
    total = sum(counts)
    table = pd.DataFrame(
        {
            "layer": [int(layer) for layer in layers],
            "count": [int(c) for c in counts],
            "fraction": [c / total if total else 0.0 for c in counts],
        }
    )
    log_dataframe(table, f"{prefix}exit_histogram.csv")
    title = _figure_title("exit layers", who, prefix)
    log_figure(exit_histogram_figure(counts, layers, title), f"{prefix}exit_histogram.png")


def _figure_title(what: str, who: str, prefix: str) -> str:
    """`sweet / mpnet-base / sst2 (validation split): exit layers`"""
    split = prefix.rstrip("/_")
    where = f"{who} ({split} split)" if who and split else who or split
    return f"{where}: {what}" if where else what


def log_dataframe(df: pd.DataFrame, artifact_file: str) -> None:
    """A csv artifact (no index column)."""
    if _active is None:
        return
    # artifacts are files, but the first one looks the run's artifact location up in the store
    with_retry(_active.client.log_text, _active.run_id, df.to_csv(index=False), artifact_file)


def log_dict(obj: Mapping, artifact_file: str) -> None:
    """A json artifact; numpy scalars and arrays are written as numbers and lists."""
    if _active is None:
        return
    text = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True)
    with_retry(_active.client.log_text, _active.run_id, text, artifact_file)


def log_file(path: Path, artifact_path: str | None = None) -> None:
    """A file written elsewhere, as an artifact (under `artifact_path` when given)."""
    if _active is None:
        return
    with_retry(_active.client.log_artifact, _active.run_id, str(path), artifact_path)


def log_figure(fig: Any, artifact_file: str) -> None:
    if _active is None:
        return
    with_retry(_active.client.log_figure, _active.run_id, fig, artifact_file)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
