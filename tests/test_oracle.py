"""The oracle bounds on hand-made predictions (elastic_cli/oracle.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from elastic_cli import oracle
from elastic_cli.cost import ExitCosts

# 4 examples, 3 exits (layers 1, 2, 3); each row: the prediction of exit 1, 2, 3
PREDICTIONS = np.array(
    [
        [0, 0, 0],  # agrees with the final exit from exit 1; right from exit 1
        [1, 0, 0],  # agrees from exit 2; right (label 0) from exit 2
        [1, 1, 0],  # agrees at exit 3 only; right (label 1) from exit 1
        [0, 1, 1],  # agrees from exit 2; never right (label 2): the correct oracle runs to the end
    ]
)
LABELS = np.array([0, 0, 1, 2])


def costs() -> ExitCosts:
    # every example costs its exit's layer count: the FLOPs speed-up equals the layer speed-up
    return ExitCosts(
        exit_flops=np.tile(np.array([1.0, 2.0, 3.0]), (4, 1)),
        reference_flops=np.full(4, 3.0),
        exit_layers=np.array([1, 2, 3]),
        reference_layers=3,
    )


def test_the_oracles_choose_the_earliest_agreeing_and_the_earliest_correct_exit():
    chosen = oracle.oracle_exits(PREDICTIONS, LABELS)
    assert chosen.consistency.tolist() == [0, 1, 2, 1]
    assert chosen.correct.tolist() == [0, 1, 0, 2]


def test_oracle_metrics():
    m = oracle.oracle_metrics(PREDICTIONS, LABELS, costs())
    # the consistency oracle keeps full depth's predictions: accuracy 2/4 (the final exit's), 12 / 8 layers
    assert m["oracle_consistency_accuracy"] == (PREDICTIONS[:, -1] == LABELS).mean() == 0.5
    assert m["oracle_consistency_layer_speedup"] == pytest.approx(12 / (1 + 2 + 3 + 2))
    assert m["oracle_consistency_flops_speedup"] == pytest.approx(12 / 8)
    # the correct oracle: 3 of 4 right somewhere, 12 / 7 layers
    assert m["oracle_correct_accuracy"] == 0.75
    assert m["oracle_correct_flops_speedup"] == pytest.approx(12 / (1 + 2 + 1 + 3))


def test_room_ratio_reads_the_curve_within_one_point_of_full_depth():
    curve = pd.DataFrame({"score": [0.90, 0.895, 0.88, 0.80], "flops_speedup": [1.0, 1.4, 2.0, 3.0]})
    assert oracle.speedup_at_full_depth(curve, 0.90) == 1.4  # 0.895 >= 0.89; 0.88 is not
    assert oracle.room_ratio(curve, 0.90, 2.8) == pytest.approx(0.5)
    assert np.isnan(oracle.room_ratio(curve, 0.99, 2.8))  # no point keeps full depth
