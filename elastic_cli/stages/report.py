"""`elastic report`: the methods evaluated on a task, compared from what their evaluate runs logged.

It re-runs no model. From the task's MLflow experiment (any tracking URI) it takes the latest finished
evaluate run of each method / backbone / exit-rule setting (report.* filters narrow or replace that
choice), reads each run's threshold curve, operating point, oracle bounds and the calibrate run that
chose its threshold, and writes report.csv, report.md, report.png and a self-contained report.html into
its folder; they are logged as the artifacts of a `report` run in the same experiment.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig
from rich.table import Table
from rich.text import Text

from elastic_cli import files, tracking
from elastic_cli.config import ReportRootConfig
from elastic_cli.errors import UserError
from elastic_cli.metrics import score_name
from elastic_cli.progress import console
from elastic_cli.report import figures, runs, table

if TYPE_CHECKING:
    from mlflow import MlflowClient

REPORT_FILES = ("report.csv", "report.md", "report.png", "report.html")


def run(cfg: ReportRootConfig, raw: DictConfig) -> None:
    report = cfg.report
    split = report.split or cfg.task.eval_splits[0]
    score = score_name(cfg.task.num_labels)
    axis = table.AXES[report.x]
    uri, client, experiment_id = _open_store(cfg)
    experiment = tracking.experiment_name(cfg)
    with tracking.stage_run(cfg, raw):
        evaluated = runs.select(runs.search(client, experiment_id, "evaluate"), report, experiment)
        runs.check_split(evaluated, split)
        calibrations = runs.search(client, experiment_id, "calibrate")
        rows, notes = runs.rows(client, evaluated, calibrations, split)
        reference = report.reference if any(r.method == report.reference for r in rows) else None
        if report.reference and reference is None:
            notes.append(
                f"report.reference={report.reference} has no evaluate run here: no ELUE-style column "
                "(set report.reference=<one of the methods below>)"
            )
        found, drawn = table.build(rows, axis, split, score, report.speedups, reference)
        folder = _folder()
        title = f"{cfg.task.name} ({split} split), {', '.join(sorted(set(found['backbone'])))}: " + (
            f"{score} against {axis.label}"
        )
        written = _write(folder, found, drawn, title, axis.label, score, uri)
        for path in written:
            tracking.log_file(path)
        _print(found, title, notes, written)


def _open_store(cfg: ReportRootConfig) -> tuple[str, MlflowClient, str]:
    """The store's uri, a client, and the task experiment's id; a store or experiment that is not there
    is a one-line error (a report creates neither)."""
    uri = tracking.resolve_uri(cfg)
    database = tracking.sqlite_file(uri)
    if database is not None and not database.is_file():
        raise UserError(
            f"no MLflow store at {database}: run `elastic evaluate` first, or point tracking.uri "
            "(or outputs=) at the store that holds the runs"
        )
    tracking.ensure_reachable(uri)
    tracking.quiet_mlflow_store_logs()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per tiny csv
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads it
    client = tracking.with_retry(MlflowClient, uri)
    name = tracking.experiment_name(cfg)
    experiment = tracking.with_retry(client.get_experiment_by_name, name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = [e.name for e in tracking.with_retry(client.search_experiments)]
        raise UserError(
            f"{uri} has no experiment {name!r} (it holds {', '.join(sorted(names)) or 'none'}): "
            "set task= (or tracking.experiment=) to the task the runs evaluated"
        )
    return uri, client, experiment.experiment_id


def _folder() -> Path:
    """Hydra's run folder of this report: outputs/reports/<time>_<task>."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(HydraConfig.get().runtime.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write(
    folder: Path,
    found: pd.DataFrame,
    drawn: list[table.Series],
    title: str,
    x_label: str,
    score: str,
    uri: str,
) -> list[Path]:
    """The four files, each written whole or not at all."""
    paths = [folder / name for name in REPORT_FILES]
    csv, md, png, html = paths
    files.write_text_atomic(csv, found.to_csv(index=False))
    made = f"made by `{_command()}` from the runs in {uri}"
    files.write_text_atomic(md, f"{title}\n\n{table.markdown(found)}\n\n{made}\n")
    figure = figures.png_figure(drawn, title, x_label, score)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    files.write_bytes_atomic(png, buffer.getvalue())
    page = figures.html_figure(drawn, title, x_label, score)
    # the page carries plotly.js itself (about 4 MB): it opens offline, attached to a mail or an artifact
    files.write_text_atomic(html, page.to_html(include_plotlyjs=True, full_html=True))
    return paths


def _command() -> str:
    """`elastic report` with this run's overrides, to put beside a table pasted elsewhere."""
    from hydra.core.hydra_config import HydraConfig

    return " ".join(["elastic report", *HydraConfig.get().overrides.task])


# the terminal's table: the columns a reader compares first (report.csv and report.md have them all)
HIDDEN_IN_TERMINAL = ("backbone", "source", "throughput x", "run")


def _print(found: pd.DataFrame, title: str, notes: list[str], written: list[Path]) -> None:
    shown = [c for c in found.columns if c not in HIDDEN_IN_TERMINAL]
    grid = Table(title=Text(title))
    for column in shown:
        grid.add_column(column, justify="left" if column in ("method", "rule") else "right")
    for _, record in found.iterrows():
        grid.add_row(*(table.cell(column, record[column]) for column in shown))
    console.print(grid)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"wrote {', '.join(p.name for p in written)} to {written[0].parent}", highlight=False)
