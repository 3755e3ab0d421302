"""The report's table and the series its figures draw, from the rows read back from the store.

Every number is one a run logged: a row's curve is its evaluate run's threshold curve (speed-up from the
cost model, for `report.x=flops|layers`) or its measured points (one evaluate run per threshold, for
`report.x=latency`); the operating point is that run's own metrics; what calibration predicted is the
calibrate run's; the oracles are evaluate's `oracle_*` metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from elastic_cli import run_record
from elastic_cli.config import ReportAxis
from elastic_cli.report.curves import elue_score, mean_score, pareto_front, score_at
from elastic_cli.report.runs import Row, number

X, Y = "speedup", "score"  # the columns of a row's points


@dataclass(frozen=True)
class Axis:
    """What `report.x` reads: the curve's column, the run's metric for its operating point (`{split}`
    filled in), the oracle metrics' suffix, and how the axis is named."""

    curve: str | None  # None: no curve holds it; the measured points (one run per threshold) do
    point: str
    oracle: str | None
    label: str
    short: str


AXES = {
    ReportAxis.flops: Axis(
        "flops_speedup", "{split}/flops_speedup", "flops_speedup", "FLOPs speed-up", "FLOPs"
    ),
    ReportAxis.layers: Axis(
        "layer_speedup", "{split}/layer_speedup", "layer_speedup", "layer speed-up", "layer"
    ),
    # the mean's ratio (a ratio of totals, as the FLOPs speed-up is): the median of a two-peaked
    # distribution of exit layers (SWEET's: 41% at L4, 37% at L6) says 2.10x where the split ran 1.78x faster
    ReportAxis.latency: Axis(
        None, "latency_speedup_mean", None, "batch-1 latency speed-up (mean)", "latency"
    ),
}


@dataclass
class Series:
    """What the figures draw for one row: every point, its Pareto front, the evaluated operating point
    and the two oracles (name -> (speed-up, score))."""

    label: str
    points: pd.DataFrame  # speedup, score, threshold, exits (the share leaving at each exit, as text)
    front: pd.DataFrame
    operating: tuple[float, float, str] | None
    oracles: dict[str, tuple[float, float]]


def points(row: Row, axis: Axis, split: str, score: str) -> pd.DataFrame:
    """The row's (speed-up, score) points with their threshold and exit shares, on `axis`: the rows of its
    threshold curve, or of its measured runs (one per threshold) when no curve holds the axis."""
    if axis.curve is not None:
        source, x, y, shares = row.curve, axis.curve, "score", "exit_frac_"
    else:
        source, x, y = row.measured, axis.point.format(split=split), f"{split}/{score}"
        shares = f"{split}/exit_fraction_"
    if source is None or x not in source or y not in source:
        return pd.DataFrame(columns=[X, Y, "threshold", "exits"])
    table = pd.DataFrame({X: source[x], Y: source[y], "threshold": source["threshold"]})
    table["exits"] = _exit_shares(source, [c for c in source.columns if c.startswith(shares)], shares)
    return table.dropna(subset=[X, Y]).reset_index(drop=True)


def _exit_shares(table: pd.DataFrame, columns: list[str], prefix: str) -> list[str]:
    """Per row, `L1 40% · L4 35% · L12 25%` (exits by depth), for the figure's hover."""
    if not columns:
        return [""] * len(table)
    columns = sorted(columns, key=run_record.exit_position)
    names = [c.removeprefix(prefix) for c in columns]
    return [
        " · ".join(f"{n} {100 * float(v):.0f}%" for n, v in zip(names, values) if pd.notna(v))
        for values in table[columns].itertuples(index=False)
    ]


def series(row: Row, axis: Axis, split: str, score: str) -> Series:
    found = points(row, axis, split, score)
    front = pareto_front(found, X, Y) if len(found) else found
    x, y = row.metric(axis.point.format(split=split)), row.metric(f"{split}/{score}")
    source = "calibrated" if row.threshold_source == "calibration" else "evaluated"
    operating = (x, y, f"{source} t={run_record.threshold_text(row.threshold)}") if _finite(x, y) else None
    oracles = {}
    if axis.oracle is not None:
        for kind in ("consistency", "correct"):
            ox = row.metric(f"{split}/oracle_{kind}_{axis.oracle}")
            oy = row.metric(f"{split}/oracle_{kind}_accuracy")
            if _finite(ox, oy):
                oracles[kind] = (ox, oy)
    return Series(row.label, found, front, operating, oracles)


def full_depth(row: Row, split: str, score: str) -> float:
    """The last exit's own score (the static model's: every example through the whole model)."""
    prefix = f"metrics.{split}/exit_{score}_"
    exits = [c for c in row.run.index if c.startswith(prefix) and pd.notna(row.run[c])]
    if not exits:
        return float("nan")
    return float(row.run[max(exits, key=run_record.exit_position)])


def shared_range(drawn: Sequence[Series]) -> tuple[float, float]:
    """The speed-ups every curve reaches: from 1x (full depth) to the smallest of their fronts' fastest
    points. A single-point row (a static model) reaches no speed-up and is not counted."""
    fastest = [float(s.front[X].max()) for s in drawn if len(s.front) and s.front[X].max() > 1.0]
    if not fastest:
        return float("nan"), float("nan")
    return 1.0, min(fastest)


def build(
    rows: Sequence[Row],
    axis: Axis,
    split: str,
    score: str,
    speedups: Sequence[float],
    reference: str | None,
) -> tuple[pd.DataFrame, list[Series]]:
    """The report's table (one row per row, in the order given) and the figures' series."""
    drawn = [series(row, axis, split, score) for row in rows]
    low, high = shared_range(drawn)
    references = {
        row.backbone: s for row, s in zip(rows, drawn) if reference is not None and row.method == reference
    }
    mean_column = f"mean {score} {low:.2f}-{high:.2f}x" if high > low else f"mean {score} (no shared range)"
    records = []
    for row, s in zip(rows, drawn):
        record: dict[str, object] = {"method": row.label, "backbone": row.backbone, "rule": row.rule}
        record["full depth"] = full_depth(row, split, score)
        at = score_at(s.front, speedups, X, Y)
        record.update({f"{score} @{v:g}x": a for v, a in zip(speedups, at)})
        record[mean_column] = mean_score(s.front, low, high, X, Y) if high > low else float("nan")
        if reference is not None:
            ref = references.get(row.backbone)  # the reference on the row's own backbone
            vs = math.nan
            if ref is not None and len(ref.front) > 0 and len(s.front) > 0:
                vs = elue_score(s.front, ref.front, X, Y)[0]
            record[f"vs {reference}"] = vs
        record["threshold"] = row.threshold
        record["source"] = row.threshold_source
        record[score] = row.metric(f"{split}/{score}")
        record["FLOPs x"] = row.metric(f"{split}/flops_speedup")
        record["latency x"] = row.metric("latency_speedup_mean")
        record["throughput x"] = row.metric("throughput_speedup")
        calibration = row.calibration
        predicted = calibration if calibration is not None else pd.Series(dtype=object)
        record[f"predicted {score}"] = number(predicted.get("metrics.calibration/score"))
        record["predicted FLOPs x"] = number(predicted.get("metrics.calibration/flops_speedup"))
        # the consistent oracle: full-depth predictions at the fewest layers (no latency is measured for it)
        oracle = axis if axis.oracle is not None else AXES[ReportAxis.flops]
        record[f"oracle {oracle.short} x"] = row.metric(f"{split}/oracle_consistency_{oracle.oracle}")
        record["rule/oracle"] = row.metric(f"{split}/oracle_room_ratio")
        record["run"] = row.run_id
        records.append(record)
    return pd.DataFrame(records), drawn


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


# --- Markdown --------------------------------------------------------------------------------------------


def cell(column: str, value: object) -> str:
    """A table value as the terminal and report.md show it: scores to 4 places, speed-ups (`... x`) and
    ratios to 2, the ELUE-style score signed, `n/a` for a missing value, a run id shortened to 8."""
    if column == "run":
        return str(value)[:8]
    if column == "threshold":
        return run_record.threshold_text(number(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "n/a"
        if column.endswith(" x") or column == "rule/oracle":
            return f"{value:.2f}"
        return f"{value:+.4f}" if column.startswith("vs ") else f"{value:.4f}"
    return str(value)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (report.csv has every number whole)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for record in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(table.columns, record)) + " |")
    return "\n".join(lines)
