"""Which evaluate runs a report compares, read back from the MLflow store: the rows of the report.

A row is one method / backbone / exit-rule setting (the rule's settings besides its threshold: ELBERT's
window, PABEE's patience counted differently...). Its run is the latest finished evaluate run of that
setting, preferring one whose threshold came from calibration (the calibrated operating point); its curve
is the threshold curve that run logged; its measured points are the latest evaluate run at each threshold
of the same weights (a `sweep=thresholds` gives one per threshold: the curve of measured latency). The
calibrate run that chose the threshold gives what calibration predicted for it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from elastic_cli import tracking
from elastic_cli.config import ReportConfig
from elastic_cli.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient

# exit.* params that are not the rule's settings: they vary within one setting's runs
NOT_SETTINGS = ("threshold", "sweep", "threshold_source", "temperature_scaled")
# the seed of the evaluated model (and of the calibration split): data.seed, seed in older stores
SEED_PARAMS = ("params.data.seed", "params.seed")
# how the evaluated model ran (device.dtype, device.quantize=int8): runs of one model in two precisions
# are two rows
# (runs logged before they were settings ran float32, unquantized)
PRECISION_PARAMS = {"params.device.dtype": "float32", "params.device.quantize": "none"}
# the evaluated rule's params: exit.*, or method.exit.* in stores of elastic before issue 13
EXIT_PARAM_PREFIXES = ("params.exit.", "params.method.exit.")


@dataclass
class Row:
    """One method / backbone / rule setting of the report."""

    label: str  # how the table and the figure name it: `sweet`, `elbert (window=4)`, `sweet / mpnet-base`
    method: str
    backbone: str
    rule: str
    run: pd.Series  # the chosen evaluate run (a row of mlflow.search_runs)
    curve: pd.DataFrame | None  # its <split>/threshold_curve.csv; None when it logged none
    measured: pd.DataFrame  # the latest evaluate run at each threshold of these weights: threshold, metrics
    calibration: pd.Series | None  # the calibrate run that chose the run's threshold, when it came from one

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    def metric(self, name: str) -> float:
        """The chosen run's metric `name` (NaN when it logged none)."""
        return number(self.run.get(f"metrics.{name}"))

    @property
    def threshold_source(self) -> str:
        return str(_param(self.run, "threshold_source") or "config")

    @property
    def threshold(self) -> float:
        return number(_param(self.run, "threshold"))


def search(client: MlflowClient, experiment_id: str, stage: str) -> pd.DataFrame:
    """The finished runs of `stage` in the experiment, latest first (one row per run, MLflow's columns)."""
    import mlflow

    found = tracking.with_retry(
        mlflow.search_runs,
        experiment_ids=[experiment_id],
        filter_string=f"tags.`elastic.stage` = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    assert isinstance(found, pd.DataFrame)
    return found


def select(runs: pd.DataFrame, report: ReportConfig, experiment: str) -> pd.DataFrame:
    """The evaluate runs `report`'s filters keep; a filter that keeps nothing is a one-line error naming
    what the store holds."""
    where = f"experiment {experiment!r}"
    if runs.empty:
        raise UserError(
            f"{where} has no finished evaluate run: run `elastic evaluate` on the task first "
            "(or point tracking.uri / tracking.experiment at the store that has them)"
        )
    if report.runs:
        missing = [r for r in report.runs if r not in set(runs["run_id"])]
        if missing:
            raise UserError(
                f"report.runs has {', '.join(missing)}, not a finished evaluate run of {where}: "
                "copy run ids from the MLflow UI or the line evaluate prints at its end"
            )
        runs = runs[runs["run_id"].isin(report.runs)]
    if report.parent:
        parents = runs.get("tags.mlflow.parentRunId", pd.Series(index=runs.index, dtype=object))
        runs = runs[parents == report.parent]
        if runs.empty:
            raise UserError(
                f"report.parent={report.parent} has no finished evaluate run under it in {where}: "
                "give the id of a sweep's parent run (the `sweep evaluate ...` run in the MLflow UI)"
            )
    runs = _keep(
        runs, "tags.elastic.backbone", [report.backbone] if report.backbone else [], "report.backbone"
    )
    return _keep(runs, "tags.elastic.method", list(report.methods), "report.methods")


def check_split(runs: pd.DataFrame, split: str) -> None:
    """The selected runs evaluated `split`; else a one-line error naming the splits they did evaluate."""
    logged = sorted({c[len("metrics.") : -len("/task_metric")] for c in runs.columns if _split_metric(c)})
    if split not in logged:
        raise UserError(
            f"report.split={split}: the selected evaluate runs logged no {split} split; "
            f"choose one of {', '.join(logged) or 'none'}"
        )


def _split_metric(column: str) -> bool:
    return column.startswith("metrics.") and column.endswith("/task_metric")


def _keep(runs: pd.DataFrame, column: str, wanted: list[str], setting: str) -> pd.DataFrame:
    if not wanted:
        return runs
    present = sorted(set(runs[column].dropna())) if column in runs else []
    missing = [w for w in wanted if w not in present]
    if missing:
        raise UserError(
            f"{setting} has {', '.join(missing)}, with no finished evaluate run here: "
            f"choose among {', '.join(present) or 'none'}"
        )
    return runs[runs[column].isin(wanted)]


def rows(
    client: MlflowClient, runs: pd.DataFrame, calibrations: pd.DataFrame, split: str
) -> tuple[list[Row], list[str]]:
    """The report's rows from the selected evaluate runs (latest first), by method, backbone and setting,
    and a note for every run left without what the report reads (no curve logged for `split`)."""
    notes: list[str] = []
    settings = _settings(runs)
    keys = runs["tags.elastic.method"].astype(str) + "\t" + runs["tags.elastic.backbone"].astype(str)
    keys = keys + "\t" + settings
    many_backbones = runs["tags.elastic.backbone"].nunique() > 1
    found: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="elastic-report-") as tmp:
        for key in sorted(set(keys)):  # by method, backbone, setting: the same order in every report
            group = runs[keys == key]  # latest first
            method, backbone, setting = key.split("\t")
            chosen = _chosen(group)
            curve = _curve(client, str(chosen["run_id"]), split, Path(tmp))
            if curve is None:
                notes.append(
                    f"{method} on {backbone}: run {chosen['run_id']} logged no {split}/threshold_curve.csv "
                    "(evaluate.grid=false, or another split): its curve is left out"
                )
            label = (
                method + (f" / {backbone}" if many_backbones else "") + (f" ({setting})" if setting else "")
            )
            found.append(
                Row(
                    label=label,
                    method=method,
                    backbone=backbone,
                    rule=str(_param(chosen, "name") or ""),
                    run=chosen,
                    curve=curve,
                    measured=_measured(group, chosen),
                    calibration=_calibration(calibrations, chosen),
                )
            )
    return found, notes


def _settings(runs: pd.DataFrame) -> pd.Series:
    """Per run, its rule settings besides the threshold, its seed and precision, where they differ between
    its method's runs (e.g. `window=8`, `seed=2`, `quantize=int8`), as text; "" for a method evaluated one
    way only."""
    columns = [
        c
        for c in runs.columns
        if c.startswith(EXIT_PARAM_PREFIXES) and c.rsplit(".", 1)[1] not in NOT_SETTINGS
    ]
    columns += [c for c in SEED_PARAMS if c in runs.columns]
    runs = runs.copy()
    for column, default in PRECISION_PARAMS.items():
        runs[column] = runs[column].fillna(default) if column in runs.columns else default
        columns.append(column)
    labels = pd.Series("", index=runs.index)
    for _, group in runs.groupby(["tags.elastic.method", "tags.elastic.backbone"]):
        varying = [c for c in columns if group[c].nunique(dropna=True) > 1]
        for i, run in group.iterrows():
            labels[i] = ", ".join(f"{c.rsplit('.', 1)[1]}={run[c]}" for c in varying if pd.notna(run[c]))
    return labels


def _chosen(group: pd.DataFrame) -> pd.Series:
    """The latest run whose threshold came from calibration, else the latest run."""
    sources = group.apply(lambda run: _param(run, "threshold_source"), axis=1)
    calibrated = group[sources == "calibration"]
    return (calibrated if len(calibrated) else group).iloc[0]


# what names the weights a run read, most precise first: their content hash, else the checkpoint folder
WEIGHTS_KEYS = ("params.checkpoint.weights", "tags.elastic.checkpoint")


def _on_weights(runs: pd.DataFrame, run: pd.Series) -> pd.DataFrame | None:
    """The runs of `runs` on the weights `run` read (a retrained model is another model); None when `run`
    does not say which weights it read."""
    for column in WEIGHTS_KEYS:
        value = run.get(column)
        if column in runs and isinstance(value, str) and value:
            return runs[runs[column] == value]
    return None


def _measured(group: pd.DataFrame, chosen: pd.Series) -> pd.DataFrame:
    """One row per evaluated threshold of the chosen run's weights (the latest run at each): threshold,
    run_id and the run's metrics without their `metrics.` prefix."""
    same = _on_weights(group, chosen)
    if same is None:
        same = chosen.to_frame().T
    thresholds = same.apply(lambda run: number(_param(run, "threshold")), axis=1)
    same = same.assign(_threshold=thresholds.round(9)).drop_duplicates("_threshold")
    # (evaluate also logs the threshold as a metric: the param, exact to 12 digits, is the one kept)
    metrics = {
        c: c.removeprefix("metrics.")
        for c in same.columns
        if c.startswith("metrics.") and c != "metrics.threshold"
    }
    table = same[["run_id", "_threshold", *metrics]].rename(columns={"_threshold": "threshold", **metrics})
    return table.sort_values("threshold").reset_index(drop=True)


def _calibration(calibrations: pd.DataFrame, run: pd.Series) -> pd.Series | None:
    """The latest calibrate run before `run`, on its weights and rule, that chose its threshold."""
    if calibrations.empty or _param(run, "threshold_source") != "calibration":
        return None
    found = calibrations[calibrations["start_time"] <= run["start_time"]]
    same = _on_weights(found, run)
    found = found if same is None else same
    names = found.apply(lambda r: _param(r, "name"), axis=1) if len(found) else pd.Series(dtype=object)
    found = found[names == _param(run, "name")] if len(found) else found
    threshold = number(_param(run, "threshold"))
    if "metrics.calibration/threshold" not in found or not math.isfinite(threshold):
        return None
    chose = (found["metrics.calibration/threshold"] - threshold).abs() <= 1e-9 * max(1.0, abs(threshold))
    found = found[chose]
    return found.iloc[0] if len(found) else None


def _curve(client: MlflowClient, run_id: str, split: str, tmp: Path) -> pd.DataFrame | None:
    """The run's logged threshold curve for `split`, or None when it has none."""
    from mlflow.exceptions import MlflowException

    try:
        local = tracking.with_retry(
            client.download_artifacts, run_id, f"{split}/threshold_curve.csv", str(tmp / run_id)
        )
    except (MlflowException, OSError):
        return None
    return pd.read_csv(local)


# where stores of older elastic logged an exit param: method.exit.<name>, and exit_threshold and
# threshold_source at the top level before issue 13
_OLD_NAMES = {"threshold": ("params.exit_threshold",), "threshold_source": ("params.threshold_source",)}


def _param(run: pd.Series, name: str) -> Any:
    """The run's exit.<name> param (as older stores named it, when they did), or None."""
    for column in (*(f"{prefix}{name}" for prefix in EXIT_PARAM_PREFIXES), *_OLD_NAMES.get(name, ())):
        value = run.get(column)
        if isinstance(value, str) and value:
            return value
    return None


def number(value: Any) -> float:
    """A logged value (a param's text, a metric) as a float; NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
