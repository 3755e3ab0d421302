"""evaluate's warning that timings met a busy machine: from the static model's spread, the adaptive p90
against the static one, and batched throughput against the layers saved; never from the adaptive model's
own p50-p90 spread, which early exit makes wide on a quiet machine."""

from __future__ import annotations

from elastic_cli.stages.evaluate import timing_noise

QUIET = {
    "latency_static_p50_ms": 90.0,
    "latency_static_p90_ms": 110.0,
    # most examples leave early, the slowest tenth run every layer: p90 over 3x p50 is normal
    "latency_adaptive_p50_ms": 17.0,
    "latency_adaptive_p90_ms": 105.0,
    "throughput_speedup": 2.0,
}


def test_a_quiet_early_exit_run_is_not_called_noisy():
    assert timing_noise(QUIET, layer_speedup=2.8) is None


def test_a_static_spread_is_noise():
    says = timing_noise({**QUIET, "latency_static_p90_ms": 300.0}, layer_speedup=2.8)
    assert says is not None and "static p90 (300.0 ms) is over 3x its p50 (90.0 ms)" in says


def test_an_adaptive_p90_far_above_the_static_one_is_noise():
    says = timing_noise({**QUIET, "latency_adaptive_p90_ms": 200.0}, layer_speedup=2.8)
    assert says is not None and "adaptive p90 (200.0 ms) is over 1.5x the static p90 (110.0 ms)" in says


def test_batched_slower_while_running_fewer_layers_is_noise():
    says = timing_noise({**QUIET, "throughput_speedup": 0.8}, layer_speedup=2.8)
    assert says is not None and "below static (0.80x)" in says
    assert timing_noise({**QUIET, "throughput_speedup": 0.8}, layer_speedup=1.1) is None
