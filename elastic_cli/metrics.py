"""Task metrics in numpy/scipy, with scikit-learn's definitions (sklearn is not a dependency).

Classification gets predicted class ids (the argmax already taken), regression gets floats.
"""

from __future__ import annotations

import numpy as np

from elastic_cli.errors import UserError

_HEADLINE = {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews", "pearson_spearman": "pearson"}


def score_name(num_labels: int) -> str:
    """What a single exit is scored by: accuracy, or Pearson's r for regression."""
    return "pearson" if num_labels == 1 else "accuracy"


def main_metric(metric: str) -> str:
    """The key of the task's headline value in `compute_metrics`' result."""
    if metric not in _HEADLINE:
        raise UserError(f"task.metric={metric!r} is not one of {', '.join(_HEADLINE)}")
    return _HEADLINE[metric]


def compute_metrics(metric: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy (+ f1 or matthews) for classification; pearson and spearman for regression."""
    main_metric(metric)  # rejects an unknown name
    preds = np.asarray(preds).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {labels.shape[0]} labels")
    if preds.size == 0:
        raise ValueError("no examples to score")
    if metric == "pearson_spearman":
        return {"pearson": pearson(preds, labels), "spearman": spearman(preds, labels)}
    result = {"accuracy": float(np.mean(preds == labels))}
    if metric == "f1":
        result["f1"] = binary_f1(preds, labels)
    elif metric == "matthews":
        result["matthews"] = matthews(preds, labels)
    return result


def binary_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class 1; 0.0 when there is no positive prediction or label (sklearn's zero_division)."""
    classes = np.union1d(preds, labels)
    if not np.isin(classes, (0, 1)).all():
        raise UserError(
            f"task.metric=f1 is binary F1 (positive class 1) but the classes are {classes.tolist()}; "
            "use metric=accuracy or matthews for more than two classes"
        )
    true_pos = int(np.sum((preds == 1) & (labels == 1)))
    false_pos = int(np.sum((preds == 1) & (labels != 1)))
    false_neg = int(np.sum((preds != 1) & (labels == 1)))
    denominator = 2 * true_pos + false_pos + false_neg
    return 0.0 if denominator == 0 else 2 * true_pos / denominator


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, as sklearn); 0.0 when either side is constant."""
    classes, encoded = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    n = labels.size
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_sum = confusion.sum(axis=1)
    pred_sum = confusion.sum(axis=0)
    correct = np.trace(confusion)
    samples = confusion.sum()
    cov_true_pred = correct * samples - true_sum @ pred_sum
    cov_pred_pred = samples**2 - pred_sum @ pred_sum
    cov_true_true = samples**2 - true_sum @ true_sum
    if cov_pred_pred * cov_true_true == 0:
        return 0.0
    return float(cov_true_pred / np.sqrt(cov_true_true * cov_pred_pred))


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    """NaN when either side is constant (the correlation is undefined)."""
    if _constant(preds) or _constant(labels):
        return float("nan")
    from scipy import stats  # (a second to import: only a regression task needs it)

    return float(stats.pearsonr(preds.astype(np.float64), labels.astype(np.float64))[0])


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    if _constant(preds) or _constant(labels):
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(preds.astype(np.float64), labels.astype(np.float64))[0])


def _constant(values: np.ndarray) -> bool:
    return values.size < 2 or bool(np.all(values == values[0]))
