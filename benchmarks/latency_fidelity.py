"""Is the FLOPs speed-up real at batch 1? (issue 15, benchmarks 2 and 7.) For each checkpoint (any
early-exit method, or a cascade such as elang): batch-1 latency of the adaptive model beside the static
model (the full model, or a cascade's last model alone), interleaved per example, on the same dev
examples whose FLOPs speed-up is computed, at three thresholds:

- calibrated: calibration.json's threshold;
- ~Nx: the threshold of the rule's curve whose FLOPs speed-up on these examples is closest to --speedup;
- none exits: the slowest threshold of the curve (every example, or nearly, runs the whole model).

Ratio = mean-latency speed-up (static mean / adaptive mean, a ratio of totals like the FLOPs one) over
the FLOPs speed-up. Targets: >= 0.95 at the calibrated and ~Nx thresholds; with nothing exiting, the
adaptive model's latency within 3% of the static one (ratio >= 0.97; the exit heads' cost aside, which
the FLOPs count). Also checked: the timed adaptive path takes the exits the simulation says.

    ELASTIC_MODELS=~/.cache/elastic/models python benchmarks/latency_fidelity.py CKPT [CKPT ...] \
        --data ../shared/assets/data/sst2 [--n 200] [--speedup 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_common import add_checkpoint_args, load, set_threads

from elastic_cli import timing

TARGET, TARGET_NONE = 0.95, 0.97


def bench(ckpt: Path, data: Path, n: int, speedup: float, warmup: int, out: str) -> list[str]:
    device = torch.device("cpu")
    b = load(ckpt, data, out, device)
    subject, rule, temperatures = b.subject, b.rule, b.temperatures
    total = len(b.cached.labels)
    subset = np.sort(np.random.default_rng(0).choice(total, size=min(n, total), replace=False))
    singles = {int(subject.rows(x)[0]): x for x in subject.batches(b.inputs, 1, subset.tolist(), device)}
    slowest = b.threshold_near(0.0, subset)  # the least speed-up the curve has
    points = {
        "calibrated": b.threshold,
        f"~{speedup:g}x": b.threshold_near(speedup, subset),
        "none exits": slowest,
    }
    lines = []
    for name, t in points.items():
        fx, index = b.flops_speedup(t, subset)

        def adaptive(i: int, t: float = t) -> object:
            return subject.adaptive(singles[i], rule, t, temperatures)

        def static(i: int) -> object:
            return subject.static(singles[i])

        ms = timing.latency_per_example(
            {"static": static, "adaptive": adaptive}, subset.tolist(), warmup=warmup
        )
        with torch.inference_mode():
            taken = np.array(
                [int(subject.adaptive(singles[i], rule, t, temperatures).exit_index[0]) for i in subset]
            )
        agree = float((taken == index).mean())
        mean_x = float(ms["static"].mean() / ms["adaptive"].mean())
        p50_x = float(np.median(ms["static"]) / np.median(ms["adaptive"]))
        ratio = mean_x / fx
        target = TARGET_NONE if name == "none exits" else TARGET
        lines.append(
            f"| {b.info.method} / {b.info.backbone} | {name} (t={t:.4g}) | {fx:.2f} | {mean_x:.2f} | {p50_x:.2f} | "
            f"{ms['static'].mean():.2f} / {ms['adaptive'].mean():.2f} | {ratio:.2f} | >= {target:g} | "
            f"{'yes' if ratio >= target else 'no'} | {100 * agree:.0f}% |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", type=Path, nargs="+")
    p.add_argument("--n", type=int, default=200, help="dev examples timed")
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=10)
    add_checkpoint_args(p)
    a = p.parse_args()
    set_threads(a.threads)
    print(f"batch 1, {a.n} dev examples, {torch.get_num_threads()} threads")
    print(
        "| model | threshold | FLOPs x | latency x (mean) | latency x (p50) | static / adaptive ms | "
        "latency / FLOPs | target | met | exits as simulated |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as out:
        for ckpt in a.ckpts:
            for line in bench(ckpt, a.data, a.n, a.speedup, a.warmup, out):
                print(line, flush=True)


if __name__ == "__main__":
    main()
