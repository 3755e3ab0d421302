"""Batched early exit (issue 15, benchmark 3): throughput of the adaptive model, which compacts the batch
as examples leave, against the static model on the same batches, at batch 32 and 128, with the batches
made of examples in random order or sorted by length (bucketing: less padding, for both models).

Ratio = throughput speed-up (adaptive / static examples per second) over the FLOPs speed-up of the same
examples. Target >= 0.9. The variants of one setting are timed interleaved, batch by batch.

    ELASTIC_MODELS=~/.cache/elastic/models python benchmarks/batched.py CKPT [CKPT ...] \
        --data ../shared/assets/data/sst2 [--sizes 32,128] [--threshold T]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import Loaded, add_checkpoint_args, load, set_threads

from elastic_cli import timing

TARGET = 0.9


def time_batches(b: Loaded, chunks: list[Any], t: float) -> dict[str, np.ndarray]:
    """ms per batch, static and adaptive interleaved batch by batch."""

    def static(k: int) -> object:
        return b.subject.static(chunks[k])

    def adaptive(k: int) -> object:
        return b.subject.adaptive(chunks[k], b.rule, t, b.temperatures)

    return timing.latency_per_example(
        {"static": static, "adaptive": adaptive}, list(range(len(chunks))), warmup=1
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", type=Path, nargs="+")
    p.add_argument("--sizes", default="32,128")
    add_checkpoint_args(p)
    a = p.parse_args()
    device = set_threads(a.threads)
    print(
        f"{torch.get_num_threads()} threads; every example of the split, each batch timed static and adaptive"
    )
    print(
        "| model | batch | order | FLOPs x | static ex/s | adaptive ex/s | throughput x | / FLOPs x | target | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="batched-bench-") as out:
        for ckpt in a.ckpts:
            b = load(ckpt, a.data, out, device)
            t = b.threshold if a.threshold is None else a.threshold
            n = len(b.cached.labels)
            rows = np.arange(n)
            fx, _ = b.flops_speedup(t, rows)
            lengths = np.asarray(b.cached.lengths)
            orders = {
                "random": np.random.default_rng(0).permutation(n),
                "by length": np.argsort(lengths, kind="stable"),
            }
            for size in (int(s) for s in a.sizes.split(",")):
                for order_name, order in orders.items():
                    chunks = b.subject.batches(b.inputs, size, order.tolist(), device)
                    counts = [len(b.subject.rows(c)) for c in chunks]
                    ms = time_batches(b, chunks, t)
                    static = sum(counts) / (ms["static"].sum() / 1e3)
                    adaptive = sum(counts) / (ms["adaptive"].sum() / 1e3)
                    ratio = (adaptive / static) / fx
                    print(
                        f"| {b.info.method} / {b.info.backbone} t={t:.4g} | {size} | {order_name} | {fx:.2f} | "
                        f"{static:.1f} | {adaptive:.1f} | {adaptive / static:.2f} | {ratio:.2f} | >= {TARGET:g} | "
                        f"{'yes' if ratio >= TARGET else 'no'} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
