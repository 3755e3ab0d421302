"""AdapLeR beside the static model of the same backbone, read back from an MLflow store.

For each task: the static model's dev score, AdapLeR's (at the calibrated eta multiplier), the mean
tokens entering each layer, FLOPs speed-up, batch-1 latency and batched throughput speed-ups (static and
adaptive timed interleaved in AdapLeR's evaluate run), and the curve of the eta multiplier (each point a
real pass over the dev split).

    python benchmarks/adapler_summary.py OUTDIR --tasks sst2 mrpc [--split validation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient


def markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A markdown table (pandas' to_markdown needs the optional tabulate package); `-` for NaN."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if v != v else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def threshold(runs: pd.DataFrame) -> pd.Series:
    """The evaluated threshold: the param exit.threshold (exit_threshold in stores of older elastic)."""
    for column in ("params.exit.threshold", "params.exit_threshold"):
        if column in runs:
            return runs[column]
    return pd.Series(None, index=runs.index, dtype=object)


def latest(runs: pd.DataFrame, method: str) -> pd.Series:
    chosen = runs[(runs["tags.elastic.method"] == method) & (runs["tags.elastic.stage"] == "evaluate")]
    chosen = chosen[(chosen["status"] == "FINISHED") & (threshold(chosen).notna())]
    if chosen.empty:
        raise SystemExit(f"no finished evaluate run of method={method}")
    return chosen.sort_values("start_time").iloc[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--tasks", nargs="+", default=["sst2"])
    p.add_argument("--split", default="validation")
    a = p.parse_args()
    mlflow.set_tracking_uri(f"sqlite:///{(a.outdir / 'mlflow.db').resolve()}")
    client = MlflowClient()
    rows, curves, tokens = [], [], []
    for task in a.tasks:
        runs = mlflow.search_runs(experiment_names=[task])
        runs = runs[runs["tags.mlflow.parentRunId"].isna()] if "tags.mlflow.parentRunId" in runs else runs
        static, ada = latest(runs, "static"), latest(runs, "adapler")
        metric = ada["params.task.metric"]
        split = a.split
        scores = {
            "static acc": static[f"metrics.{split}/accuracy"],
            "adapler acc": ada[f"metrics.{split}/accuracy"],
        }
        if metric != "accuracy":  # the task's own metric too (MRPC: F1)
            scores = {
                f"static {metric}": static[f"metrics.{split}/task_metric"],
                f"adapler {metric}": ada[f"metrics.{split}/task_metric"],
                **scores,
            }
        rows.append(
            {
                "task": task,
                "backbone": ada["tags.elastic.backbone"],
                **scores,
                "eta x": float(threshold(ada.to_frame().T).iloc[0]),
                "tokens in": ada[f"metrics.{split}/mean_tokens_input"],
                "tokens last layer": ada[f"metrics.{split}/mean_tokens_last_layer"],
                "FLOPs x": ada[f"metrics.{split}/flops_speedup"],
                "latency x (b=1 p50)": ada["metrics.latency_speedup_p50"],
                "latency x (b=1 mean)": ada["metrics.latency_speedup_mean"],
                "throughput x": ada["metrics.throughput_speedup"],
                "agreement": ada["metrics.adaptive_agreement"],
            }
        )
        history = client.get_metric_history(ada["run_id"], f"{split}/tokens_kept")
        tokens.append(
            {"task": task, **{f"L{m.step}": m.value for m in sorted(history, key=lambda m: m.step)}}
        )
        local = Path(client.download_artifacts(ada["run_id"], f"{split}/threshold_curve.csv"))
        curve = pd.read_csv(local)
        for _, point in curve.iterrows():
            curves.append(
                {
                    "task": task,
                    "eta x": point["threshold"],
                    "accuracy": point["score"],
                    "FLOPs x": point["flops_speedup"],
                    "tokens last layer": point["mean_tokens_last_layer"],
                }
            )
    print(markdown(pd.DataFrame(rows), digits=3))
    print()
    print("mean tokens entering each layer:")
    print(markdown(pd.DataFrame(tokens), digits=1))
    print()
    print("the eta multiplier's curve (dev):")
    print(markdown(pd.DataFrame(curves), digits=3))


if __name__ == "__main__":
    main()
