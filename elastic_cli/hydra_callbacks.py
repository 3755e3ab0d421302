"""The MLflow parent run of a Hydra multirun.

`on_multirun_start` opens the parent run with an MlflowClient (never as the "active run": with the basic
launcher the jobs run in this same process and start their own runs) and writes its id into the sweep
folder, where every job's `tracking.stage_run` finds it and becomes a child. `on_multirun_end` logs the
children's summary table, the task metric / FLOPs speed-up Pareto figure and the best numbers, and ends
the parent. Jobs can run in other processes (joblib, SLURM): the run id file and the tag
mlflow.parentRunId are the only links. Hydra instantiates this class at every start, single runs too:
nothing heavy is imported until a multirun starts.

A sweep cut short never leaves its parent RUNNING: an atexit hook ends it KILLED after Ctrl-C or SIGTERM
(the CLI calls `mark_interrupted`), FAILED after an error. The callback also checks the outputs folder
before Hydra creates its job folders in it, so that a bad `outputs=` is one line, not a traceback, and
the tracking store before a single run's stage loads anything (a multirun's parent checks it anyway).
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from elastic_cli.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

SWEEP_KEYS_TAG = "elastic.sweep_keys"
# per-layer series (step = layer): their "latest" value is the last layer's count, not a run summary
SERIES_SUFFIXES = ("exit_count",)
# the Pareto figure's axes: the FLOPs speed-up, and the children's task metric (`headline_metric`;
# accuracy when no child says which)
X_METRIC, Y_METRIC = "flops_speedup", "accuracy"

_interrupted = False  # set by the CLI when Ctrl-C or SIGTERM stops the process


def mark_interrupted() -> None:
    """The process stops on Ctrl-C or SIGTERM: a sweep parent still open ends KILLED, not FAILED."""
    global _interrupted
    _interrupted = True


@dataclass
class SweepParent:
    uri: str
    run_id: str
    sweep_dir: Path


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: SweepParent | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_outputs(config)
        if tracking_enabled(config):
            _check_store(config)  # at once, not after the stage has loaded its model and data

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_outputs(config)
        if not tracking_enabled(config):
            return
        try:
            self.parent = start_sweep_parent(config)
        except UserError as err:
            _abort(err)  # an unreachable server, a damaged store: say so once, before any job starts
        except Exception as err:  # tracking must never stop the sweep itself
            log.warning(
                "MLflow sweep parent run not created (%s): the jobs are logged as top-level runs", err
            )
            return
        # A job that raises or exits aborts the sweep before on_multirun_end: end the parent anyway.
        atexit.register(self._end_at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end(force_failed=False)

    def _end_at_exit(self) -> None:
        try:
            self._end(force_failed=True)
        except KeyboardInterrupt:
            pass  # a signal during the exit: the parent is ended KILLED, the process is leaving anyway

    def _end(self, force_failed: bool) -> None:
        parent, self.parent = self.parent, None
        if parent is None:
            return
        atexit.unregister(self._end_at_exit)
        try:
            finish_sweep_parent(parent, force_failed=force_failed, killed=_interrupted)
        except Exception as err:
            log.warning("MLflow sweep summary failed (%s): the parent run is marked FAILED", err)
            _terminate_quietly(parent, "KILLED" if _interrupted else "FAILED")
        except BaseException:  # Ctrl-C or SIGTERM while the summary is written
            _terminate_quietly(parent, "KILLED")
            raise


def _check_outputs(config: DictConfig) -> None:
    """A writable outputs folder, before Hydra creates its job folders inside (a file there, or a read-only
    folder, would be Hydra's traceback)."""
    from elastic_cli import tracking

    outputs = OmegaConf.select(config, "outputs", default=None)
    if outputs is None:
        return
    try:
        tracking.make_outputs_folder(str(outputs))
    except UserError as err:
        _abort(err)


def _check_store(config: DictConfig) -> None:
    from elastic_cli import tracking

    try:
        tracking.ensure_reachable(tracking.resolve_uri(config))
    except UserError as err:
        _abort(err)


def _abort(err: UserError) -> NoReturn:
    # Hydra turns a callback's exception into a warning and carries on: stop with the CLI's one line
    from elastic_cli.errors import fail

    fail(err)


def tracking_enabled(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "tracking.enabled", default=True))


# --- opening the parent --------------------------------------------------------------------------------


def start_sweep_parent(config: DictConfig) -> SweepParent:
    """Create the parent run in the task's experiment and write its id into <hydra.sweep.dir>."""
    from elastic_cli import tracking

    uri, client, experiment_id = tracking.open_experiment(config)
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    overrides = sweep_overrides(config)
    stage = str(OmegaConf.select(config, "stage", default=""))
    tags = {
        "elastic.sweep": "true",
        "elastic.stage": stage,
        "elastic.task": str(config.task.name),
        SWEEP_KEYS_TAG: ",".join(swept_keys(overrides)),
    }
    commit = tracking.git_commit()
    if commit:
        tags["elastic.git_commit"] = commit
    run_name = f"sweep {stage} {config.task.name}".replace("  ", " ")
    run = tracking.with_retry(client.create_run, experiment_id, tags=resolve_tags(tags), run_name=run_name)
    run_id = run.info.run_id
    sweep_text = " ".join(overrides)[: tracking.MAX_PARAM_CHARS]
    tracking.with_retry(client.log_batch, run_id, params=[Param("sweep.overrides", sweep_text)])
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / tracking.PARENT_RUN_FILE).write_text(run_id + "\n", encoding="utf-8")
    return SweepParent(uri=uri, run_id=run_id, sweep_dir=sweep_dir)


def sweep_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides and the sweep config's `hydra.sweeper.params`, as `key=value` strings."""
    overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    return overrides


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys (or config groups) that take more than one value, in order, without duplicates."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override() and override.key_or_group not in keys:
            keys.append(override.key_or_group)
    return keys


# --- closing the parent --------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """What the parent run records of its children: `table` (one row per child), the param columns that
    tell the points apart, the metric they are ranked by (the task's), the parent's metrics, the best
    child and the Pareto points."""

    table: pd.DataFrame
    label_cols: list[str]
    metric: str  # the children's task metric: accuracy, f1, matthews, pearson, or task_metric
    numbers: dict[str, float]  # the parent's metrics: children, failed_children, best_<metric>, ...
    best_run_id: str | None  # the finished child with the best task metric
    points: pd.DataFrame | None  # the finished children with both axes, labelled

    @property
    def best_run_tag(self) -> str:
        return f"elastic.best_{self.metric}_run_id"


def summarize(children: list[Any], sweep_keys: list[str]) -> SweepSummary:
    """The summary of a sweep's child runs (see `summary_table`), ranked by their task's metric."""
    table, label_cols = summary_table(children, sweep_keys)
    metric = headline_metric(children)
    failed = int((table["status"] != "FINISHED").sum()) if len(table) else 0
    numbers = {"children": float(len(table)), "failed_children": float(failed)}
    best, points = None, None
    if len(table):
        numbers.update(best_numbers(table, metric))
        best = best_run(table, metric)
        points = pareto_points(table, label_cols, metric)
    return SweepSummary(table, label_cols, metric, numbers, best, points)


def finish_sweep_parent(
    parent: SweepParent, force_failed: bool = False, killed: bool = False
) -> pd.DataFrame:
    """Log the summary table, the Pareto figure and the best numbers; end the parent FINISHED, or FAILED
    when a child failed, none exists, or the sweep was cut short (`force_failed`), or KILLED when Ctrl-C or
    SIGTERM cut it short (`killed`). Returns the summary."""
    from mlflow import MlflowClient

    from elastic_cli.plots import pareto_figure
    from elastic_cli.tracking import with_retry

    client = MlflowClient(parent.uri)
    parent_run = with_retry(client.get_run, parent.run_id)
    children = with_retry(child_runs, client, parent.run_id)
    keys = [k for k in parent_run.data.tags.get(SWEEP_KEYS_TAG, "").split(",") if k]
    sweep = summarize(children, keys)
    summary = sweep.table
    if len(summary):
        client.log_text(parent.run_id, summary.to_csv(index=False), "summary.csv")
        client.log_table(parent.run_id, data=summary, artifact_file="summary.json")
        if sweep.best_run_id:
            client.set_tag(parent.run_id, sweep.best_run_tag, sweep.best_run_id)
        if sweep.points is not None:
            stage = parent_run.data.tags.get("elastic.stage", "")
            task = parent_run.data.tags.get("elastic.task", "")
            title = f"{task} {stage}: {sweep.metric} vs {X_METRIC}".strip()
            if sweep.label_cols:
                title += f"  (points: {', '.join(sweep.label_cols)})"
            client.log_figure(
                parent.run_id,
                pareto_figure(sweep.points, X_METRIC, sweep.metric, "label", title),
                "pareto.png",
            )
    with_retry(client.log_batch, parent.run_id, metrics=_metric_entities(sweep.numbers))
    failed = sweep.numbers["failed_children"]
    ok = not force_failed and not killed and len(summary) > 0 and failed == 0
    status = "KILLED" if killed else "FINISHED" if ok else "FAILED"
    with_retry(client.set_terminated, parent.run_id, status=status)
    return summary


def headline_metric(children: list[Any]) -> str:
    """The metric a sweep's children are ranked by: their task's headline metric (metrics.main_metric of
    the param task.metric every stage run logs: accuracy, f1, matthews, or pearson for a regression);
    task_metric, which evaluate logs for every task, when the children's tasks differ in it; accuracy
    when none says."""
    from elastic_cli.metrics import main_metric

    names = {run.data.params.get("task.metric") for run in children} - {None}
    if len(names) > 1:
        return "task_metric"
    if not names:
        return Y_METRIC
    try:
        return main_metric(names.pop())
    except UserError:  # a task.metric this elastic does not know: the generic name evaluate logs too
        return "task_metric"


def child_runs(client: MlflowClient, parent_id: str) -> list[Any]:
    """Runs tagged as children of `parent_id` in any experiment (a sweep over tasks spans experiments),
    oldest first."""
    from mlflow.entities import ViewType

    experiment_ids: list[str] = []
    token = None
    while True:
        experiments = client.search_experiments(
            view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
        experiment_ids += [e.experiment_id for e in experiments]
        token = experiments.token
        if not token:
            break
    runs: list[Any] = []
    token = None
    while True:
        found = client.search_runs(
            experiment_ids,
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
            max_results=1000,
            page_token=token,
        )
        runs += list(found)
        token = found.token
        if not token:
            break
    return sorted(runs, key=lambda run: run.info.start_time or 0)


def summary_table(children: list[Any], sweep_keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per child: run id, name, status, the swept params, every metric (latest value).

    The swept params are the sweep's keys that are params (a config group `method` maps to
    `method.name`) and any other param whose value differs between children. Returns the table and
    the param columns that tell the points apart.
    """
    import pandas as pd

    param_names: set[str] = set()
    for run in children:
        param_names.update(run.data.params)
    declared = []
    for key in sweep_keys:
        for candidate in (key, f"{key}.name"):
            if candidate in param_names and candidate not in declared:
                declared.append(candidate)
                break
    varying = sorted(
        name
        for name in param_names
        if name not in declared and len({run.data.params.get(name) for run in children}) > 1
    )
    param_cols = declared + varying
    rows = []
    for run in children:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
        }
        row.update({name: run.data.params.get(name) for name in param_cols})
        row.update(
            {
                key: value
                for key, value in sorted(run.data.metrics.items())
                if not key.endswith(SERIES_SUFFIXES)
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows, columns=["run_id", "run_name", "status", *param_cols] if not rows else None)
    for name in param_cols:
        try:
            table[name] = pd.to_numeric(table[name])
        except (TypeError, ValueError):
            pass  # a categorical param (method.name, backbone.name): keep the strings
    return table, (declared or varying)


def best_numbers(summary: pd.DataFrame, metric: str = Y_METRIC) -> dict[str, float]:
    """The finished child best in `metric` (the task's) and the fastest one, each with the other axis
    beside it: best_<metric>, best_<metric>_flops_speedup, max_flops_speedup, max_flops_speedup_<metric>."""
    done = summary[summary["status"] == "FINISHED"]
    numbers: dict[str, float] = {}
    for y, name, other, other_name in (
        (metric, f"best_{metric}", X_METRIC, f"best_{metric}_{X_METRIC}"),
        (X_METRIC, f"max_{X_METRIC}", metric, f"max_{X_METRIC}_{metric}"),
    ):
        if y not in done or done[y].isna().all():
            continue
        top = done.loc[done[y].idxmax()]
        numbers[name] = float(top[y])
        if other in done and _finite(top[other]):
            numbers[other_name] = float(top[other])
    return numbers


def best_run(summary: pd.DataFrame, metric: str = Y_METRIC) -> str | None:
    """The run id of the finished child best in `metric`, None when no child has it."""
    done = summary[summary["status"] == "FINISHED"]
    if metric not in done or done[metric].isna().all():
        return None
    return str(done.loc[done[metric].idxmax(), "run_id"])


def pareto_points(
    summary: pd.DataFrame, label_cols: list[str], metric: str = Y_METRIC
) -> pd.DataFrame | None:
    """The finished children with both axes (FLOPs speed-up and `metric`), labelled by their swept
    values; None if there are none."""
    if X_METRIC not in summary or metric not in summary:
        return None
    points = summary[summary["status"] == "FINISHED"].dropna(subset=[X_METRIC, metric]).copy()
    if points.empty:
        return None

    def label(row: Any) -> str:
        if len(label_cols) == 1:
            return _short(row[label_cols[0]])
        return " ".join(f"{col.split('.')[-1]}={_short(row[col])}" for col in label_cols)

    points["label"] = [label(row) for _, row in points.iterrows()] if label_cols else points["run_name"]
    return points


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> bool:
    import math

    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _metric_entities(metrics: dict[str, float]) -> list[Any]:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in metrics.items()]


def _terminate_quietly(parent: SweepParent, status: str) -> None:
    try:
        from mlflow import MlflowClient

        from elastic_cli.tracking import with_retry

        with_retry(MlflowClient(parent.uri).set_terminated, parent.run_id, status=status)
    except Exception as err:
        log.warning("could not end the MLflow sweep parent run %s (%s)", parent.run_id, err)
