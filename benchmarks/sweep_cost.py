"""What a threshold curve costs (issue 15, benchmark 1): elastic's 100-threshold curve from one evaluation
against one single-threshold evaluation done the way the original repos do it, measured interleaved in
the same run.

- curve: one batched pass computing every exit's outputs (evaluate's cached pass, batch
  `--batch-size`), then the rule applied at 100 thresholds to those outputs (evaluate's threshold curve);
- single: the adaptive model at one threshold, one example at a time over the whole split (the original
  repos' evaluation loop: early exit at batch 1, one full pass per threshold).

Target: the curve costs at most 1.3x one single-threshold evaluation (so a 100-point curve costs about
1/77 of the 100 passes the originals need). Latency timing is in neither. Also checked: the single pass's
exits and predictions equal the curve's simulation at the same threshold.

    python benchmarks/sweep_cost.py CKPT --data ../shared/assets/data/sst2 [--repeat 3] [--threshold T]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import add_checkpoint_args, load, set_threads

from elastic_cli import exits
from elastic_cli.stages.common import CachedOutputs, all_exit_outputs
from elastic_cli.stages.subjects import MultiExitSubject

TARGET = 1.3
GRID = 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    add_checkpoint_args(p)
    a = p.parse_args()
    device = set_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as out:
        b = load(a.ckpt, a.data, out, device)
    subject = b.subject
    if not isinstance(subject, MultiExitSubject):
        raise SystemExit("sweep_cost.py times the exits of one multi-exit model")
    meta, enc, costs, rule, temperatures = subject.meta, b.inputs, b.costs, b.rule, b.temperatures
    split_name = b.cached.split
    threshold = b.threshold if a.threshold is None else a.threshold
    singles = subject.batches(enc, 1, list(range(len(enc.labels))), device)
    n = len(singles)
    print(
        f"{meta.method} / {meta.backbone} / {meta.task} ({split_name}, {n} examples), rule {rule.name} t={threshold:g}"
    )

    def curve() -> tuple[float, CachedOutputs]:
        start = time.perf_counter()
        signals = all_exit_outputs(subject.model, enc, a.batch_size, subject.pad_id, device)
        cached = CachedOutputs(signals, np.asarray(enc.labels), np.asarray(enc.lengths), split_name)
        subject.threshold_curve(rule, cached, costs, temperatures, GRID)
        return time.perf_counter() - start, cached

    def single() -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        exit_index = torch.empty(n, dtype=torch.long)
        prediction = torch.empty(n, dtype=torch.long)
        start = time.perf_counter()
        with torch.inference_mode():
            for b in singles:
                out = subject.adaptive(b, rule, threshold, temperatures)
                exit_index[b.index] = out.exit_index
                prediction[b.index] = out.logits.argmax(-1)
        return time.perf_counter() - start, (exit_index, prediction)

    curve()  # warm-up: allocator, thread pools, the first-call costs of every kernel
    single()
    seconds: dict[str, list[float]] = {"curve": [], "single": []}
    for i in range(a.repeat):  # interleaved, the order alternating, so load from elsewhere hits both
        for name in ["curve", "single"] if i % 2 == 0 else ["single", "curve"]:
            if name == "curve":
                elapsed, cached = curve()
            else:
                elapsed, passed = single()
            seconds[name].append(elapsed)
    idx, chosen = exits.simulate(rule, cached.signals, threshold, temperatures)
    agree = float(((idx == passed[0]) & (chosen.argmax(-1) == passed[1])).float().mean())
    curve_s, single_s = np.asarray(seconds["curve"]), np.asarray(seconds["single"])
    ratios = curve_s / single_s
    ratio = float(np.median(curve_s) / np.median(single_s))
    print("| variant | median s | min-max s | / single | target | met |")
    print("|---|---|---|---|---|---|")
    print(
        f"| single threshold, batch 1 (the originals' way) | {np.median(single_s):.2f} | {single_s.min():.2f}-{single_s.max():.2f} | 1.00 | - | - |"
    )
    print(
        f"| {GRID}-threshold curve (batch {a.batch_size} all-exits pass + rule) | {np.median(curve_s):.2f} | "
        f"{curve_s.min():.2f}-{curve_s.max():.2f} | {ratio:.2f} ({ratios.min():.2f}-{ratios.max():.2f}) | "
        f"<= {TARGET:g} | {'yes' if ratio <= TARGET else 'no'} |"
    )
    print(
        f"| {GRID} single-threshold passes (computed: {GRID} x single) | {GRID * np.median(single_s):.1f} | - | {GRID:.0f} | - | - |"
    )
    print(
        f"single pass agrees with the curve's simulation at t={threshold:g} on {100 * agree:.1f}% of examples"
    )


if __name__ == "__main__":
    main()
