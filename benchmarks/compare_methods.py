"""The comparison table of benchmarks/compare_methods.sh, read back from its MLflow store.

For each method (its latest evaluate run; one row per exit-rule setting when it was evaluated
under several, e.g. ELBERT's window): full-depth accuracy (the last exit alone), each exit's
accuracy, the accuracy and speed-ups at the calibrated threshold, and the best accuracy reached at
>= 2x and >= 3x (and each of --speedups) layer speed-up on the evaluation threshold curve (the
curve is the same cached all-exits pass, priced at every threshold of the rule's grid).

    python benchmarks/compare_methods.py OUTDIR [--split validation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient


def accuracy_at(curve: pd.DataFrame, speedup: float) -> float:
    """Best accuracy among thresholds whose layer speed-up is at least `speedup` (NaN if none)."""
    fast = curve[curve["layer_speedup"] >= speedup - 1e-9]
    return float(fast["score"].max()) if len(fast) else float("nan")


def markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A markdown table (pandas' to_markdown needs the optional tabulate package)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if v != v else f"{v:.{digits}f}"  # NaN: an exit the method does not have
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def variants(runs: pd.DataFrame) -> pd.Series:
    """A label per run for the exit-rule settings (besides the threshold) that differ between one
    method's evaluate runs, e.g. " (window=8)"; "" for a method evaluated one way only."""
    # the evaluated rule is exit.* (method.exit.* in stores of older elastic)
    keys = [
        c
        for c in runs.columns
        if c.startswith(("params.exit.", "params.method.exit."))
        and c.rsplit(".", 1)[1] not in ("threshold", "sweep", "threshold_source", "temperature_scaled")
    ]
    labels = pd.Series("", index=runs.index)
    for _, group in runs.groupby("tags.elastic.method"):
        varying = [c for c in keys if group[c].nunique(dropna=True) > 1]
        for i, row in group.iterrows():
            settings = ", ".join(f"{c.rsplit('.', 1)[1]}={row[c]}" for c in varying)
            labels[i] = f" ({settings})" if settings else ""
    return labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--split", default="validation")
    p.add_argument("--experiment", default="sst2")
    p.add_argument("--speedups", default="1.5,2,2.5,3,4,5", help="rows of the accuracy-at-speed-up table")
    a = p.parse_args()
    mlflow.set_tracking_uri(f"sqlite:///{(a.outdir / 'mlflow.db').resolve()}")
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_names=[a.experiment], order_by=["start_time DESC"])
    runs = runs[(runs["tags.elastic.stage"] == "evaluate") & (runs["status"] == "FINISHED")]
    # cascades have models, not layers, as exits: benchmarks/cascade_summary.py reports them
    runs = runs[~runs["tags.elastic.method"].isin(["elang", "multi_model"])]
    trains = mlflow.search_runs(experiment_names=[a.experiment])
    trains = trains[(trains["tags.elastic.stage"] == "train") & (trains["status"] == "FINISHED")]
    rows, exit_rows, at_speedup = [], [], {}
    speedups = [float(x) for x in a.speedups.split(",")]
    for (method, label), group in runs.groupby(["tags.elastic.method", variants(runs)], sort=False):
        run = group.iloc[0]
        local = Path(client.download_artifacts(run["run_id"], f"{a.split}/threshold_curve.csv"))
        curve = pd.read_csv(local)
        exits = sorted(
            (int(c.rsplit("_L", 1)[1]), run[c])
            for c in run.index
            if c.startswith(f"metrics.{a.split}/exit_accuracy_L")
        )
        train = trains[trains["tags.elastic.method"] == method]
        rows.append(
            {
                "method": method + label,
                "rule": run.get("params.exit.name", run.get("params.method.exit.name")),
                "full depth": exits[-1][1],
                "calibrated: acc": run[f"metrics.{a.split}/accuracy"],
                "layer x": run[f"metrics.{a.split}/layer_speedup"],
                "FLOPs x": run[f"metrics.{a.split}/flops_speedup"],
                "acc @2x": accuracy_at(curve, 2.0),
                "acc @3x": accuracy_at(curve, 3.0),
                "latency x (b=1 p50)": run.get("metrics.latency_speedup_p50"),
                # the median flatters a method whose median example leaves at the first exit: also the mean
                "latency x (b=1 mean)": run.get("metrics.latency_static_mean_ms")
                / run.get("metrics.latency_adaptive_mean_ms"),
                "train min": float(train["metrics.train_seconds"].iloc[0]) / 60
                if len(train)
                else float("nan"),
            }
        )
        exit_rows.append({"method": method + label, **{f"L{layer}": acc for layer, acc in exits}})
        at_speedup[method + label] = [accuracy_at(curve, x) for x in speedups]
    table = pd.DataFrame(rows)
    print(markdown(table))
    print()
    print(markdown(pd.DataFrame(exit_rows), digits=3))
    print()
    print("best accuracy at a layer speed-up of at least x:")
    print(markdown(pd.DataFrame({"speed-up >=": [f"{x:g}" for x in speedups], **at_speedup})))


if __name__ == "__main__":
    main()
