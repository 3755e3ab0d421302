"""The oracle bounds of a multi-exit model or a cascade, from the outputs of every exit on a split.

- The consistency oracle sends each example out at the earliest exit whose prediction equals the final
  exit's: its predictions are the full-depth ones (the same accuracy), at the best speed-up any exit rule
  could reach without changing a single prediction.
- The correct oracle sends each example out at the earliest exit that is right (the last exit when none
  is): an upper bound on accuracy at its speed-up.

No rule can know either choice without the label or the final exit's output; the gap between a rule's
curve and them is the room an exit rule leaves. Classification only (a regression has no "same
prediction").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from elastic_cli.cost import ExitCosts

FULL_DEPTH_TOLERANCE = 0.01  # "full-depth accuracy": within 1 point of the final exit's


@dataclass(frozen=True)
class OracleExits:
    consistency: np.ndarray  # [N] the earliest exit agreeing with the final exit's prediction
    correct: np.ndarray  # [N] the earliest correct exit (the last exit when none is correct)


def oracle_exits(predictions: np.ndarray, labels: np.ndarray) -> OracleExits:
    """predictions [N, E] (each exit's predicted class), labels [N]."""
    predictions = np.asarray(predictions)
    last = predictions.shape[1] - 1
    agree = predictions == predictions[:, -1:]  # the final exit always agrees with itself
    right = predictions == np.asarray(labels)[:, None]
    correct = np.where(right.any(axis=1), right.argmax(axis=1), last)
    return OracleExits(consistency=agree.argmax(axis=1), correct=correct)


def oracle_metrics(predictions: np.ndarray, labels: np.ndarray, costs: ExitCosts) -> dict[str, float]:
    """Accuracy, layer and FLOPs speed-up of both oracles (MLflow metric names)."""
    chosen = oracle_exits(predictions, labels)
    rows = np.arange(len(labels))
    out: dict[str, float] = {}
    for name, exit_index in (("consistency", chosen.consistency), ("correct", chosen.correct)):
        speed = costs.at(exit_index, costs.exit_flops[rows, exit_index])
        out[f"oracle_{name}_accuracy"] = float((predictions[rows, exit_index] == labels).mean())
        out[f"oracle_{name}_layer_speedup"] = speed["layer_speedup"]
        out[f"oracle_{name}_flops_speedup"] = speed["flops_speedup"]
    return out


def speedup_at_full_depth(
    curve: pd.DataFrame,
    full_depth: float,
    speed: str = "flops_speedup",
    tolerance: float = FULL_DEPTH_TOLERANCE,
) -> float:
    """The best speed-up on a threshold curve whose score stays within `tolerance` of full depth; NaN if
    no point does."""
    kept = curve[curve["score"] >= full_depth - tolerance - 1e-12]
    return float(kept[speed].max()) if len(kept) else float("nan")


def room_ratio(curve: pd.DataFrame, full_depth: float, oracle_speedup: float) -> float:
    """The rule's speed-up at full-depth accuracy (minus 1 point) over the consistency oracle's: 1 means
    the rule leaves no room; NaN when no point of the curve keeps full-depth accuracy."""
    rule = speedup_at_full_depth(curve, full_depth)
    if not np.isfinite(rule) or not oracle_speedup > 0:
        return float("nan")
    return rule / oracle_speedup
