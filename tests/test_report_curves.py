"""The report's curve reading on hand-made curves (elastic_cli/report/curves.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from elastic_cli.report.curves import elue_score, mean_score, pareto_front, score_at

# speed-up 1.0 .. 2.5; the row at 1.8 is dominated (1.9 is faster and better)
CURVE = pd.DataFrame({"flops_speedup": [1.0, 1.5, 1.8, 1.9, 2.5], "score": [0.90, 0.89, 0.80, 0.86, 0.70]})


def test_the_front_drops_dominated_points_and_sorts_by_speed():
    front = pareto_front(CURVE)
    assert front["flops_speedup"].tolist() == [1.0, 1.5, 1.9, 2.5]
    assert front["score"].tolist() == [0.90, 0.89, 0.86, 0.70]


def test_scores_at_fixed_speedups_interpolate_along_the_front_and_stop_at_its_reach():
    at = score_at(pareto_front(CURVE), [1.0, 1.5, 1.7, 2.0, 3.0])
    assert at[:4] == pytest.approx([0.90, 0.89, 0.875, 0.86 - 0.16 / 6])
    assert math.isnan(at[4])  # the curve does not reach 3x: n/a
    # a front whose slowest point is already 1.2x fast is 0.88 at 1.0x too
    assert score_at(pd.DataFrame({"flops_speedup": [1.2, 2.0], "score": [0.88, 0.8]}), [1.0]) == [0.88]


def test_mean_score_over_a_shared_range():
    front = pareto_front(CURVE)
    # 1.0..1.5: linear from 0.90 to 0.89, mean 0.895
    assert mean_score(front, 1.0, 1.5) == pytest.approx(0.895)
    # 1.5..2.5: trapezoids (0.89+0.86)/2*0.4 + (0.86+0.70)/2*0.6, over 1.0
    assert mean_score(front, 1.5, 2.5) == pytest.approx(0.35 + 0.468)
    assert math.isnan(mean_score(front, 1.0, 3.0))  # beyond its reach


def test_elue_score_is_zero_on_the_reference_and_positive_above_it():
    reference = CURVE
    score, used = elue_score(reference, reference)
    # the reference's own dominated point (1.8, 0.80) lies below its front
    assert used == 5 and score == pytest.approx((0.80 - (0.89 + (0.86 - 0.89) * 0.3 / 0.4)) / 5)
    front_only = pareto_front(reference)
    assert elue_score(front_only, reference) == (pytest.approx(0.0), 4)
    above = front_only.assign(score=front_only["score"] + 0.02)
    assert elue_score(above, reference)[0] == pytest.approx(0.02)
    # points faster than the reference ever runs have no reference value: left out; below its slowest
    # point the reference scores what that point does (it is fast enough)
    assert elue_score(pd.DataFrame({"flops_speedup": [4.0], "score": [0.5]}), reference)[1] == 0
    one_point = pd.DataFrame({"flops_speedup": [3.0], "score": [0.9]})
    assert elue_score(pd.DataFrame({"flops_speedup": [1.2, 3.5], "score": [0.95, 0.99]}), one_point) == (
        pytest.approx(0.05),
        1,
    )
