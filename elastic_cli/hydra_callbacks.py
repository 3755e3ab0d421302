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

from elastic_cli import launchers, run_record
from elastic_cli.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from elastic_cli.run_record import CheckpointRecord

log = logging.getLogger(__name__)

SWEEP_KEYS_TAG = "elastic.sweep_keys"
FAILED_CHILDREN_TAG = "elastic.failed_children"  # on the parent: the children that did not finish
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
    ui_url: str | None = None  # tracking.ui_url: where the printed link points


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent: SweepParent | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_outputs(config)
        if tracking_enabled(config):
            _check_store(config)  # at once, not after the stage has loaded its model and data

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_outputs(config)
        try:
            launchers.check_launcher(str(OmegaConf.select(config, "hydra.launcher._target_", default="")))
        except UserError as err:
            _abort(err)
        if not tracking_enabled(config) or not _main_process():
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
        pass_parent_to_jobs(config, self.parent.run_id)
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


def _main_process() -> bool:
    """False in the other processes of a multirun launched by torchrun: rank 0 alone opens and closes the
    parent, as it alone logs the jobs (elastic_cli/distributed.py)."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")


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
    keys = swept_keys(overrides)
    values = swept_values(overrides)
    stage = str(OmegaConf.select(config, "stage", default=""))
    # the children's tags, a swept one with its values: the parent sorts and filters beside them
    tags = {
        "elastic.sweep": "true",
        "elastic.stage": stage,
        "elastic.method": values.get("method", str(config.method.name)),
        "elastic.backbone": values.get("backbone", str(config.backbone.name)),
        "elastic.task": values.get("task", str(config.task.name)),
        SWEEP_KEYS_TAG: ",".join(keys),
    }
    commit = tracking.git_commit()
    if commit:
        tags["elastic.git_commit"] = commit
    run_name = parent_run_name(config, keys)
    run = tracking.with_retry(client.create_run, experiment_id, tags=resolve_tags(tags), run_name=run_name)
    run_id = run.info.run_id
    params = [Param("sweep.overrides", " ".join(overrides)[: tracking.MAX_PARAM_CHARS])]
    params += [Param(k, v) for k, v in parent_params(config, keys).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
        tracking.with_retry(client.log_batch, run_id, params=params[start : start + 100])
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / tracking.PARENT_RUN_FILE).write_text(run_id + "\n", encoding="utf-8")
    ui_url = OmegaConf.select(config, "tracking.ui_url", default=None)
    return SweepParent(uri=uri, run_id=run_id, sweep_dir=sweep_dir, ui_url=ui_url)


PARENT_KEY = "tracking.parent_run_id"


def pass_parent_to_jobs(config: DictConfig, run_id: str) -> None:
    """Every job's config gets `tracking.parent_run_id=<run_id>`: the sweeper builds the jobs from the
    command line's overrides, read after this callback, so the id travels inside each job's config (to a
    Slurm job on another node as well) rather than only in the sweep folder's file."""
    from omegaconf import read_write

    overrides = config.hydra.overrides.task
    with read_write(overrides):
        kept = [o for o in overrides if not str(o).lstrip("+~").startswith(f"{PARENT_KEY}=")]
        overrides.clear()  # (a parent id given on the command line is this sweep's no more)
        overrides.extend([*kept, f"{PARENT_KEY}={run_id}"])


def sweep_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides and the sweep config's `hydra.sweeper.params`, as `key=value` strings."""
    overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    return overrides


def swept_values(overrides: list[str]) -> dict[str, str]:
    """The values each swept key (or config group) takes, comma-joined (`method` -> `sweet,pabee`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            try:
                values[override.key_or_group] = ",".join(override.sweep_string_iterator())
            except Exception:  # a range or an interval sweep: say it as written
                values[override.key_or_group] = override.get_value_element_as_str()
    return values


def parent_run_name(config: DictConfig, keys: list[str]) -> str:
    """`sweep evaluate sweet mpnet-base maxprob over exit.threshold`: the children's name, and what varies."""
    from elastic_cli.run_record import logged_name, run_name

    stage = str(OmegaConf.select(config, "stage", default=""))
    rule = OmegaConf.select(config, "method.exit.name", default=None)
    name = run_name(stage, str(config.method.name), str(config.backbone.name), rule)
    over = ", ".join(logged_name(k) for k in keys)
    return f"sweep {name}" + (f" over {over}" if over else "")


# config groups and keys that choose another checkpoint: when one is swept, the children read different ones
CHECKPOINT_KEYS = ("method", "method.name", "backbone", "backbone.name", "task", "task.name", "seed", "ckpt")


def parent_params(config: DictConfig, keys: list[str]) -> dict[str, str]:
    """The params the children share, as strings: their run_params without the swept keys. For a calibrate
    or evaluate sweep over one checkpoint, that is the checkpoint's training config too."""
    from elastic_cli import tracking

    plain = tracking.plain_config(config)
    record = None
    stage = plain.get("stage")
    if stage in ("calibrate", "evaluate") and not set(keys) & set(CHECKPOINT_KEYS):
        record = _checkpoint_record(config)
    params = tracking.flatten(run_record.run_params(plain, record))
    swept = {run_record.logged_name(k) for k in keys} | set(keys)
    return {k: v for k, v in params.items() if not any(k == s or k.startswith(f"{s}.") for s in swept)}


def _checkpoint_record(config: DictConfig) -> CheckpointRecord | None:
    """The record of the checkpoint the children read, or None when it cannot be read (the children say
    why, each with one line)."""
    from elastic_cli import checkpoint
    from elastic_cli.stages import subjects

    try:
        folder = checkpoint.checkpoint_dir(config)  # type: ignore[arg-type]  # reads the same fields
        return subjects.record(folder, subjects.describe(folder))
    except Exception:
        return None


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

    from elastic_cli.plots import axis_label, pareto_figure
    from elastic_cli.tracking import with_retry

    client = MlflowClient(parent.uri)
    parent_run = with_retry(client.get_run, parent.run_id)
    children = with_retry(child_runs, client, parent.run_id)
    if not killed and end_vanished_children(client, children):  # (on a signal the jobs may live on)
        children = with_retry(child_runs, client, parent.run_id)
    keys = [k for k in parent_run.data.tags.get(SWEEP_KEYS_TAG, "").split(",") if k]
    sweep = summarize(children, keys)
    # the failed or killed children are counted (failed_children) and named, never mixed into the table
    finished = sweep.table[sweep.table["status"] == "FINISHED"] if len(sweep.table) else sweep.table
    written: list[Path] = []
    if len(finished):
        client.log_text(parent.run_id, finished.to_csv(index=False), "summary.csv")
        client.log_table(parent.run_id, data=finished, artifact_file="summary.json")
        written.append(_write_local(parent.sweep_dir / "summary.csv", finished.to_csv(index=False)))
        if sweep.best_run_id:
            client.set_tag(parent.run_id, sweep.best_run_tag, sweep.best_run_id)
        if sweep.points is not None:
            figure = pareto_figure(
                sweep.points,
                X_METRIC,
                sweep.metric,
                "label",
                _figure_title(parent_run.data.tags, sweep),
                x_label=axis_label(X_METRIC),
                y_label=axis_label(sweep.metric),
                static_point=_static_point(sweep.points, sweep.metric),
            )
            client.log_figure(parent.run_id, figure, "pareto.png")
            written.append(parent.sweep_dir / "pareto.png")
            figure.savefig(written[-1])
    with_retry(client.log_batch, parent.run_id, metrics=_metric_entities(sweep.numbers))
    failed = sweep.numbers["failed_children"]
    if failed:  # named on the parent, whatever printed them
        bad = sweep.table[sweep.table["status"] != "FINISHED"]
        names = ", ".join(f"{r.run_name} ({r.status}, {r.run_id})" for r in bad.itertuples())
        with_retry(client.set_tag, parent.run_id, FAILED_CHILDREN_TAG, names[:5000])
    ok = not force_failed and not killed and len(sweep.table) > 0 and failed == 0
    status = "KILLED" if killed else "FINISHED" if ok else "FAILED"
    with_retry(client.set_terminated, parent.run_id, status=status)
    # a sweep cut short by an error or a signal: the CLI's one line ("error: ...", "interrupted") stays last
    if not (killed or force_failed):
        print_summary(sweep, finished, parent, parent_run.info.experiment_id, status, written)
    return finished


def end_vanished_children(client: MlflowClient, children: list[Any]) -> list[str]:
    """Mark FAILED the children still RUNNING whose process is gone (a job killed by SIGKILL, or by
    Slurm for its time or memory: it could not end its own run). Returns their ids."""
    from elastic_cli import tracking

    gone = [
        run.info.run_id
        for run in children
        if run.info.status == "RUNNING" and tracking.process_gone(run.data.tags)
    ]
    for run_id in gone:
        tracking.with_retry(client.set_terminated, run_id, status="FAILED")
    if gone:
        log.warning("marked FAILED %d child run(s) whose job is gone: %s", len(gone), ", ".join(gone))
    return gone


def _write_local(path: Path, text: str) -> Path:
    from elastic_cli.files import write_text_atomic

    write_text_atomic(path, text)
    return path


def _figure_title(tags: dict[str, str], sweep: SweepSummary) -> str:
    """`sweet / mpnet-base / sst2: accuracy vs FLOPs speed-up over exit.threshold`"""
    from elastic_cli.plots import axis_label

    who = " / ".join(tags[k] for k in ("elastic.method", "elastic.backbone", "elastic.task") if tags.get(k))
    title = f"{who}: {axis_label(sweep.metric)} vs {axis_label(X_METRIC)}"
    if sweep.label_cols:
        title += f" over {', '.join(sweep.label_cols)}"
    return title


def _static_point(points: pd.DataFrame, metric: str) -> tuple[float, float] | None:
    """The static model (every example through the last exit, speed-up 1), from the children's score of
    the last exit (`exit_<score>_<last exit>` of the first child), if they logged one."""
    exits = [c for c in points.columns if c.startswith("exit_accuracy_") or c.startswith("exit_pearson_")]
    if metric not in ("accuracy", "pearson") or not exits:
        return None
    last = max(exits, key=run_record.exit_position)
    value = points[last].dropna()
    return (1.0, float(value.iloc[0])) if len(value) else None


# the sweep's table in the terminal: these metrics when the children have them, then the exit fractions
SUMMARY_COLUMNS = (
    ("layer_speedup", "layer speed-up"),
    ("flops_speedup", "FLOPs speed-up"),
    ("latency_speedup_mean", "latency speed-up"),
)


def print_summary(
    sweep: SweepSummary,
    finished: pd.DataFrame,
    parent: SweepParent,
    experiment_id: str,
    status: str,
    written: list[Path],
) -> None:
    """The sweep's one table (a row per finished child: its swept values, the task metric, the speed-ups
    and the share of examples leaving at each exit), then the parent run and the files written."""
    from rich.table import Table
    from rich.text import Text

    from elastic_cli.progress import console
    from elastic_cli.run_record import run_link, ui_command

    if len(finished):
        fractions = [c for c in finished.columns if c.startswith("exit_fraction_")]
        fractions.sort(key=run_record.exit_position)
        table = Table(title=Text(f"sweep: {len(finished)} finished runs"))
        labels = sweep.label_cols or ["run_name"]
        for col in labels:
            table.add_column(col, justify="right")
        table.add_column(sweep.metric, justify="right")
        shown = [(col, name) for col, name in SUMMARY_COLUMNS if col in finished]
        for _, name in shown:
            table.add_column(name, justify="right")
        for col in fractions:
            table.add_column(f"% {col.removeprefix('exit_fraction_')}", justify="right")
        for _, row in finished.iterrows():
            cells = [_short(row[col]) for col in labels]
            cells.append(_number(row.get(sweep.metric), "{:.4f}"))
            cells += [_number(row[col], "{:.2f}x") for col, _ in shown]
            cells += [_number(100 * row[col], "{:.0f}") for col in fractions]
            table.add_row(*cells)
        console.print(table)
    bad = sweep.table[sweep.table["status"] != "FINISHED"] if len(sweep.table) else sweep.table
    if len(bad):
        console.print(
            f"[yellow]{len(bad)} child run(s) did not finish and are left out:[/] "
            + ", ".join(f"{r.run_name} ({r.status}, {r.run_id})" for r in bad.itertuples()),
            highlight=False,
        )
    link = run_link(parent.uri, experiment_id, parent.run_id, parent.ui_url)
    console.print(f"sweep parent run {parent.run_id} ({status}): {link}", highlight=False)
    opens = ui_command(parent.uri)
    if opens and not parent.ui_url:
        console.print(f"  (open the UI first: {opens})", highlight=False)
    for path in written:
        console.print(f"  {path}", highlight=False)


def _number(value: Any, fmt: str) -> str:
    return fmt.format(float(value)) if _finite(value) else "-"


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
    in the sweep's job order."""
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
    return sorted(runs, key=_job_order)


def _job_order(run: Any) -> tuple[int, int]:
    """The sweep's job order (parallel jobs start in any order), then the start time."""
    from elastic_cli.tracking import JOB_TAG

    job = run.data.tags.get(JOB_TAG, "")
    return (int(job) if job.isdigit() else -1, run.info.start_time or 0)


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
    from elastic_cli.run_record import logged_name

    declared = []
    shown_as: dict[str, str] = {}  # a declared param's column: the sweep key as the user wrote it
    for key in sweep_keys:
        # a calibrate or evaluate run logs the stage's exit rule and data as exit.* and data.*
        for candidate in (key, f"{key}.name", logged_name(key)):
            if candidate in param_names and candidate not in declared:
                declared.append(candidate)
                shown_as[candidate] = key if candidate == logged_name(key) else candidate
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
        row.update({shown_as.get(name, name): run.data.params.get(name) for name in param_cols})
        row.update(
            {
                key: value
                for key, value in sorted(run.data.metrics.items())
                if not key.endswith(SERIES_SUFFIXES)
            }
        )
        rows.append(row)
    param_cols = [shown_as.get(name, name) for name in param_cols]
    declared = [shown_as.get(name, name) for name in declared]
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
