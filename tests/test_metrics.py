"""Task metrics against values computed by hand (and against scikit-learn when it is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from elastic_cli.errors import UserError
from elastic_cli.metrics import compute_metrics, main_metric

# tp=2 (rows 0, 4), tn=1 (row 2), fp=1 (row 1), fn=1 (row 3)
PREDS = np.array([1, 1, 0, 0, 1])
LABELS = np.array([1, 0, 0, 1, 1])


def test_accuracy_only_for_the_accuracy_metric() -> None:
    assert compute_metrics("accuracy", PREDS, LABELS) == {"accuracy": pytest.approx(3 / 5)}


def test_f1_of_the_positive_class() -> None:
    result = compute_metrics("f1", PREDS, LABELS)
    assert result.keys() == {"accuracy", "f1"}
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2tp / (2tp + fp + fn) = 2/3
    # precision 1/2, recall 1: F1 = 2/3
    assert compute_metrics("f1", np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))["f1"] == pytest.approx(2 / 3)


def test_f1_is_zero_without_positive_predictions_or_without_positives_at_all() -> None:
    no_positive_predictions = compute_metrics("f1", np.zeros(4, dtype=int), np.array([1, 0, 1, 0]))
    assert no_positive_predictions == {"accuracy": 0.5, "f1": 0.0}
    nothing_positive = compute_metrics("f1", np.zeros(3, dtype=int), np.zeros(3, dtype=int))
    assert nothing_positive == {"accuracy": 1.0, "f1": 0.0}


def test_f1_refuses_more_than_two_classes() -> None:
    with pytest.raises(UserError, match=r"task.metric=f1 is binary F1.*\[0, 1, 2\]"):
        compute_metrics("f1", np.array([0, 1, 2]), np.array([0, 1, 1]))


def test_matthews_binary() -> None:
    result = compute_metrics("matthews", PREDS, LABELS)
    assert result.keys() == {"accuracy", "matthews"}
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert result["matthews"] == pytest.approx(1 / 6)
    assert compute_metrics("matthews", LABELS, LABELS)["matthews"] == pytest.approx(1.0)
    assert compute_metrics("matthews", 1 - LABELS, LABELS)["matthews"] == pytest.approx(-1.0)


def test_matthews_is_zero_for_constant_predictions_or_labels() -> None:
    assert compute_metrics("matthews", np.ones(5, dtype=int), LABELS)["matthews"] == 0.0
    assert compute_metrics("matthews", PREDS, np.zeros(5, dtype=int))["matthews"] == 0.0


def test_matthews_multiclass() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    # correct c=4, samples s=6, true counts t=[2,2,2], predicted counts p=[2,3,1]
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt(22 * 24)
    expected = 12 / math.sqrt(22 * 24)
    assert compute_metrics("matthews", preds, labels)["matthews"] == pytest.approx(expected)


def test_pearson_and_spearman() -> None:
    preds = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    labels = np.array([2.0, 4.0, 5.0, 4.0, 5.0], dtype=np.float32)
    result = compute_metrics("pearson_spearman", preds, labels)
    assert result.keys() == {"pearson", "spearman"}
    # deviations [-2,-1,0,1,2] and [-2,0,1,0,1]: 6 / sqrt(10 * 6)
    assert result["pearson"] == pytest.approx(6 / math.sqrt(60))
    # label ranks [1, 2.5, 4.5, 2.5, 4.5] (ties averaged): 7 / sqrt(10 * 9)
    assert result["spearman"] == pytest.approx(7 / math.sqrt(90))


def test_regression_accepts_a_column_of_predictions_and_is_nan_when_constant() -> None:
    labels = np.array([0.0, 1.0, 3.0])
    column = compute_metrics("pearson_spearman", labels.reshape(-1, 1) * 2, labels)
    assert column == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    constant = compute_metrics("pearson_spearman", np.full(3, 2.5), labels)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])


def test_mismatched_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics("accuracy", np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics("accuracy", np.zeros(0), np.zeros(0))


def test_main_metric_names_the_headline_key() -> None:
    assert [main_metric(m) for m in ("accuracy", "f1", "matthews", "pearson_spearman")] == [
        "accuracy",
        "f1",
        "matthews",
        "pearson",
    ]
    for metric in ("accuracy", "f1", "matthews", "pearson_spearman"):
        preds = np.array([0, 1, 1, 0, 1])
        assert main_metric(metric) in compute_metrics(metric, preds, LABELS)
    with pytest.raises(
        UserError, match=r"task.metric='auc' is not one of accuracy, f1, matthews, pearson_spearman"
    ):
        main_metric("auc")
    with pytest.raises(UserError, match="task.metric='auc'"):
        compute_metrics("auc", PREDS, LABELS)


def test_agrees_with_scikit_learn_on_random_predictions() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, size=50)
        preds = np.where(rng.random(50) < 0.7, labels, 1 - labels)
        assert compute_metrics("f1", preds, labels)["f1"] == pytest.approx(
            sklearn_metrics.f1_score(labels, preds)
        )
        assert compute_metrics("matthews", preds, labels)["matthews"] == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, preds)
        )
        labels3 = rng.integers(0, 3, size=50)
        preds3 = np.where(rng.random(50) < 0.6, labels3, rng.integers(0, 3, size=50))
        assert compute_metrics("matthews", preds3, labels3)["matthews"] == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels3, preds3)
        )
