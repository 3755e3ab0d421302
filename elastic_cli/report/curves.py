"""Reading threshold curves for the report: the Pareto front, the score at a given speed-up, the mean score
over a speed-up range, and the ELUE-style score against a reference method's front (METHODS.md section 3).

A curve is a table with a speed-up column (x, larger is faster) and a score column (y, larger is better),
one row per threshold, as evaluate logs it (`<split>/threshold_curve.csv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from elastic_cli.plots import pareto_mask


def pareto_front(curve: pd.DataFrame, x: str = "flops_speedup", y: str = "score") -> pd.DataFrame:
    """The rows no other row beats on both speed and score, by increasing speed-up (one row per speed),
    with all their columns."""
    data = curve.dropna(subset=[x, y]).astype({x: float, y: float})
    front = data[pareto_mask(data[x].tolist(), data[y].tolist())]
    return front.drop_duplicates(subset=[x]).sort_values(x).reset_index(drop=True)


def score_at(
    front: pd.DataFrame, speedups: Sequence[float], x: str = "flops_speedup", y: str = "score"
) -> list[float]:
    """The score the front reaches at each speed-up: interpolated linearly between its points, its
    slowest point's score below them (that point is fast enough), NaN beyond its fastest point."""
    xs, ys = front[x].to_numpy(float), front[y].to_numpy(float)
    if len(xs) == 0:
        return [float("nan")] * len(speedups)
    out = []
    for s in speedups:
        if s > xs[-1] + 1e-12:
            out.append(float("nan"))
        elif s <= xs[0]:
            out.append(float(ys[0]))
        else:
            out.append(float(np.interp(s, xs, ys)))
    return out


def mean_score(
    front: pd.DataFrame, low: float, high: float, x: str = "flops_speedup", y: str = "score"
) -> float:
    """The front's mean score over speed-ups [low, high] (the area under it divided by the range): NaN
    when the front does not reach `high`, or the range is empty."""
    if not high > low or len(front) == 0 or front[x].max() < high - 1e-12:
        return float("nan")
    xs = np.union1d(np.linspace(low, high, 2), front[x][(front[x] > low) & (front[x] < high)].to_numpy(float))
    ys = np.asarray(score_at(front, xs.tolist(), x, y))
    return float(np.trapezoid(ys, xs) / (high - low))


def elue_score(
    points: pd.DataFrame, reference: pd.DataFrame, x: str = "flops_speedup", y: str = "score"
) -> tuple[float, int]:
    """The ELUE-style score: the mean over `points` of (their score - the reference front's at their
    speed-up), the reference read as `score_at` reads a front (interpolated; its slowest point's score
    below it). Points faster than the reference ever runs have no reference value and are left out;
    returns (score, points used). Positive: above the reference."""
    ref = pareto_front(reference, x, y)
    if len(ref) == 0:
        return float("nan"), 0
    inside = points[points[x] <= float(ref[x].iloc[-1]) + 1e-12]
    if len(inside) == 0:
        return float("nan"), 0
    reference_scores = np.asarray(score_at(ref, inside[x].astype(float).tolist(), x, y))
    return float(np.mean(inside[y].to_numpy(float) - reference_scores)), len(inside)
