"""calibrate.target=consistency: the Clopper-Pearson bound, fixed-sequence certification, and the guarantee
itself, checked by repetition on a synthetic 3-exit classifier whose calibration and evaluation examples
come from one distribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

from elastic_cli import exits
from elastic_cli.calibration import (
    certify_consistency,
    choose_threshold,
    inconsistency_bound,
    threshold_curve,
)
from elastic_cli.config import ExitRuleConfig
from elastic_cli.errors import UserError
from elastic_cli.signals import ExitSignals

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))
GRID = torch.linspace(0.5, 1.0, 101, dtype=torch.float64).tolist()  # fixed before any data is seen
EPSILON, DELTA = 0.05, 0.1


def test_the_bound_is_clopper_pearson():
    for k, n in ((0, 200), (3, 200), (40, 500)):
        u = float(inconsistency_bound(np.array([k]), n, DELTA)[0])
        # the largest rate at which seeing k or fewer is still as likely as delta
        assert binom.cdf(k, n, u) == pytest.approx(DELTA, abs=1e-6)
        assert binom.cdf(k, n, u - 1e-3) > DELTA
    assert float(inconsistency_bound(np.array([0]), 200, DELTA)[0]) == pytest.approx(1 - DELTA ** (1 / 200))
    assert float(inconsistency_bound(np.array([5]), 5, DELTA)[0]) == 1.0


def test_certification_stops_at_the_first_threshold_that_fails():
    # thresholds from the slowest (1.0) down: counts 0, 1, 60 (fails: 6%), 2: the last is never tested
    curve = pd.DataFrame(
        {
            "threshold": [1.0, 0.9, 0.8, 0.7],
            "n_inconsistent": [0, 1, 60, 2],
            "layer_speedup": [1.0, 1.3, 1.8, 2.5],
            "consistency": [1.0, 0.999, 0.94, 0.998],
        }
    )
    chosen = certify_consistency(curve, 1000, EPSILON, DELTA, larger_is_slower=True)
    assert chosen["threshold"] == 0.9 and bool(chosen["target_met"])
    nothing = certify_consistency(curve.assign(n_inconsistent=[60, 0, 0, 0]), 1000, EPSILON, DELTA, True)
    assert nothing["threshold"] == 1.0 and not bool(nothing["target_met"])


def test_consistency_needs_class_predictions():
    with pytest.raises(UserError, match="several exits"):
        choose_threshold(
            pd.DataFrame({"threshold": [0.5], "score": [0.9]}), "consistency", reference_accuracy=0.9
        )


def synthetic(rng: np.random.Generator, n: int) -> ExitSignals:
    """Two classes, three exits that see the same evidence ever more sharply, each with its own noise: early
    exits are less often confident and, when not, often disagree with the last."""
    evidence = rng.normal(0.0, 1.0, size=n)
    logits = []
    for scale in (1.0, 2.0, 3.5):
        z = scale * evidence + rng.normal(0.0, 1.0, size=n)
        logits.append(np.stack([-z / 2, z / 2], axis=1))
    return ExitSignals(torch.tensor(np.stack(logits, axis=1), dtype=torch.float32))


def test_the_guarantee_holds_over_200_calibration_samples():
    """P(evaluation inconsistency > epsilon) <= delta: the chosen threshold's true rate (from 200,000
    examples of the same distribution) is above epsilon in at most delta of 200 calibration draws."""
    population = synthetic(np.random.default_rng(12345), 200_000)
    labels = np.zeros(200_000, dtype=np.int64)  # labels do not enter consistency
    true_rate = 1.0 - threshold_curve(MAXPROB, population, labels, [1, 2, 3], GRID, None)["consistency"]
    rate_at = dict(zip(GRID, true_rate, strict=True))
    failures, speedups, naive_failures = 0, [], 0
    for seed in range(200):
        calibration = synthetic(np.random.default_rng(seed), 300)
        curve = threshold_curve(MAXPROB, calibration, np.zeros(300, dtype=np.int64), [1, 2, 3], GRID, None)
        chosen = certify_consistency(curve, 300, EPSILON, DELTA, larger_is_slower=True)
        failures += rate_at[float(chosen["threshold"])] > EPSILON
        speedups.append(float(chosen["layer_speedup"]))
        # without the bound (the fastest threshold whose calibration consistency reaches 1 - epsilon)
        naive = curve[curve["consistency"] >= 1 - EPSILON].sort_values("layer_speedup").iloc[-1]
        naive_failures += rate_at[float(naive["threshold"])] > EPSILON
    print(
        f"certified: {failures}/200 above epsilon, mean layer speed-up {np.mean(speedups):.2f}; naive: {naive_failures}/200"
    )
    assert failures / 200 <= DELTA + 0.03
    assert np.mean(speedups) > 1.2  # it does exit early: the check is not passed by never exiting
    assert naive_failures / 200 > DELTA  # and the bound is what makes it hold
