import time

import numpy as np
import pytest
import torch

from elastic_cli.timing import latency_per_example, summarize_ms, throughput


def test_interleaving_rotates_order_and_counts_calls():
    calls: list[tuple[str, int]] = []

    def recorder(name):
        def fn(example):
            assert torch.is_inference_mode_enabled()
            calls.append((name, example))

        return fn

    fns = {name: recorder(name) for name in ("a", "b", "c")}
    examples = [10, 11, 12, 13]
    ms = latency_per_example(fns, examples, warmup=2)

    # warm-up: two rounds over every variant on the first examples, then one call per example and variant
    assert calls[:6] == [("a", 10), ("b", 10), ("c", 10), ("a", 11), ("b", 11), ("c", 11)]
    timed = calls[6:]
    assert len(timed) == 3 * len(examples)
    orders = [[name for name, _ in timed[3 * i : 3 * i + 3]] for i in range(len(examples))]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert [ex for _, ex in timed] == [10] * 3 + [11] * 3 + [12] * 3 + [13] * 3
    assert set(ms) == {"a", "b", "c"}
    assert all(v.shape == (4,) and np.all(v >= 0) for v in ms.values())


def test_latency_is_in_milliseconds_per_example():
    delays_s = [0.002, 0.01]
    ms = latency_per_example({"sleep": lambda i: time.sleep(delays_s[i])}, [0, 1], warmup=0)
    # sleep never returns early; the upper bounds leave room for a loaded machine but not for a wrong unit
    assert 2.0 <= ms["sleep"][0] < 50.0
    assert 10.0 <= ms["sleep"][1] < 60.0


def test_summarize_ms_on_a_known_array():
    summary = summarize_ms(np.arange(1.0, 11.0))  # 1..10
    assert summary == {"p50_ms": 5.5, "p90_ms": pytest.approx(9.1), "mean_ms": 5.5}
    with pytest.raises(ValueError):
        summarize_ms(np.array([]))


def test_throughput_of_a_sleeping_batch():
    seen: list[int] = []

    def batch(batch_no):
        seen.append(batch_no)
        time.sleep(0.02)
        return 8

    per_second = throughput(batch, n_batches=5, warmup=1)
    assert seen == [0, 0, 1, 2, 3, 4]  # one warm-up batch, then five timed
    # 8 examples per 20 ms = 400/s at most; sleep overshoot only lowers it
    assert 200 < per_second <= 400
