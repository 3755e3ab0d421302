"""Latency and throughput measurement.

Hygiene: warm-up calls that are not recorded, one timed call per example and variant, medians and
percentiles rather than means alone, and the variants interleaved (the order rotated per example) so
that machine noise and drift spread over all of them instead of landing on whichever ran first or last.
Timed loops run under torch.inference_mode with the garbage collector paused, and wait for the GPU when
one is in use. Nothing is printed or logged inside the clock (a progress bar advances between examples).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def _synchronize() -> None:
    # CUDA kernels run asynchronously: without a sync the clock stops before the work is done
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def _quiet() -> Iterator[None]:
    """inference_mode, and no garbage collection pauses inside the timed region."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_enabled:
            gc.enable()


def latency_per_example(
    fns: Mapping[str, Callable[[int], object]],
    examples: Sequence[int],
    warmup: int = 10,
    after_each: Callable[[], object] | None = None,
) -> dict[str, np.ndarray]:
    """Batch-1 latency in ms of every variant on every example, interleaved.

    Each fn takes an example index. For the i-th example the variants run in the order of `fns`
    rotated by i, so no variant always runs first. `warmup` unrecorded calls of each variant come first
    (cycling through `examples`). `after_each` (a progress bar's advance) runs after each example's
    variants, outside the clock. Returns, per variant, ms per example in the order of `examples`.
    """
    names = list(fns)
    if not names:
        raise ValueError("latency_per_example needs at least one function to time")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    ms = {name: np.empty(len(examples), dtype=np.float64) for name in names}
    with _quiet():
        if examples:
            for w in range(warmup):
                for name in names:
                    fns[name](examples[w % len(examples)])
            _synchronize()
        for i, example in enumerate(examples):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                fn = fns[name]
                start = time.perf_counter()
                fn(example)
                _synchronize()
                ms[name][i] = (time.perf_counter() - start) * 1e3
            if after_each is not None:
                after_each()
    return ms


def summarize_ms(ms: np.ndarray) -> dict[str, float]:
    """Median, 90th percentile and mean of latencies in ms."""
    values = np.asarray(ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latencies to summarise")
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
    }


def throughput(fn: Callable[[int], int], n_batches: int, warmup: int = 1) -> float:
    """Examples per second: fn(batch_no) runs one batch and returns how many examples it processed.

    The warm-up calls use batch numbers 0..warmup-1 and are not timed; then batches 0..n_batches-1 are
    timed as one block.
    """
    if n_batches < 1:
        raise ValueError("throughput needs at least one batch")
    with _quiet():
        for batch_no in range(warmup):
            fn(batch_no)
        _synchronize()
        examples = 0
        start = time.perf_counter()
        for batch_no in range(n_batches):
            examples += int(fn(batch_no))
        _synchronize()
        elapsed = time.perf_counter() - start
    return examples / elapsed
