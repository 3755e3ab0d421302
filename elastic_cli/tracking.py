"""MLflow runs of the stages: where runs go, what every run records, and the helpers the stages log with.

One experiment per task (`tracking.experiment` overrides the name); method, backbone and stage are
params and tags. Inside a Hydra multirun the run is a child of the sweep's parent run, whose id the
sweep callback (elastic_cli.hydra_callbacks) writes into the sweep folder. `import mlflow` costs about a
second, so it happens inside the functions, never when this module is imported.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from elastic_cli.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from elastic_cli.config import RootConfig

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"  # written into the sweep folder by the sweep callback
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
REACHABLE_TIMEOUT_S = 3.0


# --- where runs go -------------------------------------------------------------------------------------


def resolve_uri(cfg: RootConfig | DictConfig) -> str:
    """`tracking.uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<absolute outputs>/mlflow.db.

    Accepts the typed config or the raw DictConfig (the sweep callback only has the latter).
    """
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    outputs = _make_folder(Path(cfg.outputs).resolve(), "outputs")
    return f"sqlite:///{(outputs / 'mlflow.db').as_posix()}"


def artifact_location(cfg: RootConfig | DictConfig, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: <abs outputs>/mlartifacts for a local store.

    A tracking server decides for itself (it may proxy artifacts to object storage): None.
    """
    if _is_remote(uri):
        return None
    return (Path(cfg.outputs).resolve() / "mlartifacts").as_uri()


def experiment_name(cfg: RootConfig | DictConfig) -> str:
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
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACHABLE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # it answered (maybe 401 or 404 behind a proxy): reachable
    except (urllib.error.URLError, OSError) as err:
        raise unreachable from err


def _check_sqlite(uri: str) -> None:
    path = uri[len("sqlite://") :].split("?", 1)[0]
    if path in ("", "/", "/:memory:"):
        return
    # sqlite:///relative/path.db and sqlite:////absolute/path.db (SQLAlchemy's convention)
    database = Path(path[1:])
    _make_folder(database.resolve().parent, f"MLflow database {uri}")


def _make_folder(folder: Path, what: str) -> Path:
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


def quiet_mlflow_store_logs() -> None:
    # Creating a new sqlite store prints alembic migration lines: noise for a CLI user.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.db.db_types"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_or_create_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    """The id of experiment `name`, created (with its artifact location) or restored when needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # another job of a parallel sweep created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --- what every run records ----------------------------------------------------------------------------


def plain_config(raw: DictConfig) -> dict[str, Any]:
    """The config as plain Python, resolved where it can be, without Hydra's own node."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        container = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException:
        # e.g. a ${hydra:...} interpolation read outside a Hydra app: keep it as written
        container = OmegaConf.to_container(raw, resolve=False)
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


def stage_tags(cfg: RootConfig) -> dict[str, str]:
    tags = {
        "elastic.stage": cfg.stage,
        "elastic.method": cfg.method.name,
        "elastic.backbone": cfg.backbone.name,
        "elastic.task": cfg.task.name,
        "elastic.seed": str(cfg.seed),
    }
    commit = git_commit()
    if commit:
        tags["elastic.git_commit"] = commit
    return tags


# --- the sweep parent ----------------------------------------------------------------------------------


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The sweep's parent run id that the sweep callback wrote into `sweep_dir`, if it did."""
    path = Path(sweep_dir) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def current_sweep_dir() -> Path | None:
    """The sweep folder when this process runs a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    # hydra.job.chdir=true moves the job into its own folder: the sweep folder is relative to the launch cwd
    return sweep_dir if sweep_dir.is_absolute() else Path(hydra_cfg.runtime.cwd) / sweep_dir


# --- the stage run -------------------------------------------------------------------------------------


@dataclass
class _ActiveRun:
    client: MlflowClient
    run_id: str


_active: _ActiveRun | None = None


def active() -> bool:
    """True inside a `stage_run` with tracking enabled."""
    return _active is not None


def _is_failure(err: BaseException) -> bool:
    if isinstance(err, SystemExit):
        return err.code not in (0, None)
    return True


@contextmanager
def stage_run(cfg: RootConfig, raw: DictConfig, run_name: str | None = None) -> Iterator[Any]:
    """The MLflow run of one stage (a child of the sweep's parent inside a multirun): yields the mlflow
    ActiveRun, or None when `tracking.enabled` is false. Ends FINISHED, or FAILED on any exception (a
    non-zero SystemExit and KeyboardInterrupt included), which propagates."""
    global _active
    if not cfg.tracking.enabled:
        yield None
        return
    if _active is not None:
        raise RuntimeError("stage_run is already active: stages do not nest")
    uri = resolve_uri(cfg)
    ensure_reachable(uri)
    quiet_mlflow_store_logs()
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = get_or_create_experiment(client, experiment_name(cfg), artifact_location(cfg, uri))
    sweep_dir = current_sweep_dir()
    parent_id = parent_run_id(sweep_dir) if sweep_dir is not None else None
    if parent_id is not None and not _run_exists(client, parent_id):
        log.warning("sweep parent run %s is not in %s: logging a top-level run", parent_id, uri)
        parent_id = None
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name or _default_run_name(cfg),
        parent_run_id=parent_id,
        tags=stage_tags(cfg),
    )
    _active = _ActiveRun(client, run.info.run_id)
    try:
        config = plain_config(raw)
        log_params(flatten(config))
        client.log_text(run.info.run_id, OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
        yield run
    except BaseException as err:
        mlflow.end_run(status="FAILED" if _is_failure(err) else "FINISHED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        _active = None


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _default_run_name(cfg: RootConfig) -> str:
    name = f"{cfg.stage} {cfg.method.name} {cfg.backbone.name}"
    if cfg.stage == "evaluate" and cfg.method.exit.threshold is not None:
        name += f" t={cfg.method.exit.threshold:g}"
    return name


# --- logging helpers: no-ops outside an enabled stage_run -----------------------------------------------


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    if _active is None or not metrics:
        return
    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
    _active.client.log_batch(_active.run_id, metrics=batch)


def log_params(params: Mapping[str, Any]) -> None:
    if _active is None or not params:
        return
    from mlflow.entities import Param

    batch = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()]
    _active.client.log_batch(_active.run_id, params=batch)


def log_exit_histogram(counts: Sequence[int], layers: Sequence[int], prefix: str = "") -> None:
    """counts[i] examples left at layer layers[i] (1-indexed): the metric `<prefix>exit_count` with
    step = layer, the table `<prefix>exit_histogram.csv` (layer, count, fraction) and a bar chart PNG."""
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
    _active.client.log_batch(_active.run_id, metrics=series)
    total = sum(counts)
    table = pd.DataFrame(
        {
            "layer": [int(layer) for layer in layers],
            "count": [int(c) for c in counts],
            "fraction": [c / total if total else 0.0 for c in counts],
        }
    )
    log_dataframe(table, f"{prefix}exit_histogram.csv")
    title = f"exit layers {prefix.rstrip('/_')}".strip()
    log_figure(exit_histogram_figure(counts, layers, title), f"{prefix}exit_histogram.png")


def log_dataframe(df: pd.DataFrame, artifact_file: str) -> None:
    """A csv artifact (no index column)."""
    if _active is None:
        return
    _active.client.log_text(_active.run_id, df.to_csv(index=False), artifact_file)


def log_dict(obj: Mapping, artifact_file: str) -> None:
    """A json artifact; numpy scalars and arrays are written as numbers and lists."""
    if _active is None:
        return
    text = json.dumps(obj, indent=2, default=_jsonable, allow_nan=True)
    _active.client.log_text(_active.run_id, text, artifact_file)


def log_figure(fig: Any, artifact_file: str) -> None:
    if _active is None:
        return
    _active.client.log_figure(_active.run_id, fig, artifact_file)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
