"""The numbers of a cascade's latest evaluate run (benchmarks/elang_sst2.sh), read back from MLflow:
each model alone, the cascade at its threshold with the split between the models, FLOPs speed-up and
the measured latency against the last (super) model alone.

    python benchmarks/cascade_summary.py OUTDIR [--method elang] [--split validation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path)
    p.add_argument("--method", default="elang")
    p.add_argument("--split", default="validation")
    p.add_argument("--experiment", default="sst2")
    a = p.parse_args()
    mlflow.set_tracking_uri(f"sqlite:///{(a.outdir / 'mlflow.db').resolve()}")
    runs = mlflow.search_runs(experiment_names=[a.experiment], order_by=["start_time DESC"])
    runs = runs[
        (runs["tags.elastic.stage"] == "evaluate")
        & (runs["tags.elastic.method"] == a.method)
        & (runs["status"] == "FINISHED")
    ]
    if runs.empty:
        raise SystemExit(f"no finished evaluate run of {a.method} in {a.outdir}")
    run = runs.iloc[0].dropna()
    m = {k[len("metrics.") :]: v for k, v in run.items() if k.startswith("metrics.")}
    s = f"{a.split}/"
    models = [k[len(s + "exit_fraction_") :] for k in m if k.startswith(s + "exit_fraction_")]
    # smallest model first: swift before super, L1 before L12
    models.sort(key=lambda name: (name != "swift", int(name[1:]) if name[1:].isdigit() else 0, name))
    print(f"| {a.method} | " + " | ".join(f"{name} alone" for name in models) + " | cascade | threshold | "
          + " | ".join(f"{name} fraction" for name in models)
          + " | FLOPs x | latency x (b=1 p50) | latency x (b=1 mean) | throughput x |")  # fmt: skip
    print("|---" * (len(models) * 2 + 7) + "|")
    cells = [f"{m[s + 'exit_accuracy_' + name]:.4f}" for name in models]
    cells += [f"{m[s + 'accuracy']:.4f}", f"{m['threshold']:.4f}"]
    cells += [f"{100 * m[s + 'exit_fraction_' + name]:.1f}%" for name in models]
    cells += [
        f"{m[s + 'flops_speedup']:.2f}",
        f"{m['latency_speedup_p50']:.2f}",
        f"{m['latency_static_mean_ms'] / m['latency_adaptive_mean_ms']:.2f}",
        f"{m['throughput_speedup']:.2f}",
    ]
    print(f"| {run.get('tags.elastic.backbone', '')} | " + " | ".join(cells) + " |")
    print(
        f"latency ms (b=1, p50/p90/mean): super alone {m['latency_static_p50_ms']:.2f}/"
        f"{m['latency_static_p90_ms']:.2f}/{m['latency_static_mean_ms']:.2f}, cascade "
        f"{m['latency_adaptive_p50_ms']:.2f}/{m['latency_adaptive_p90_ms']:.2f}/{m['latency_adaptive_mean_ms']:.2f}; "
        f"GFLOPs/example super {m[s + 'static_gflops_per_example']:.2f}, cascade "
        f"{m[s + 'adaptive_gflops_per_example']:.2f}; adaptive = simulation on "
        f"{100 * m['adaptive_agreement']:.1f}%"
    )


if __name__ == "__main__":
    main()
