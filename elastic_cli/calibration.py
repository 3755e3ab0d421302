"""Calibration math: per-exit temperature scaling, the threshold curve, and choosing a threshold.

Temperature scaling follows Guo et al. (2017), as SWEET and Sledgehammer apply it per exit (METHODS.md
sections 4 and 6.5), but the fit is a bounded 1-D search rather than Adam over a list of learning rates:
the NLL is convex in 1/T, so it is unimodal in log T and a bounded Brent search finds its minimum without
any step size to tune or divergence to guard against.

The threshold curve prices every threshold from one all-exits pass: the exit rule is applied to the
cached logits (the same `exits` code the adaptive model runs), so the curve costs one pass, not one
evaluation per threshold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar

from elastic_cli import exits
from elastic_cli.cost import EncoderDims, ExitCosts
from elastic_cli.errors import UserError
from elastic_cli.exits import ExitRule
from elastic_cli.metrics import pearson
from elastic_cli.signals import ExitSignals

# T is searched in [1/100, 100]: far outside what a trained classifier needs, and it keeps the fit finite
# when the NLL keeps falling (perfectly separated calibration data)
_LOG_T_BOUND = float(np.log(100.0))
TARGETS = ("accuracy_within", "speedup", "super_fraction", "consistency")
_MAX_DECISIONS = 1 << 24  # booleans held at once when all thresholds are decided together
# (threshold, example) cells a curve's per-cell tensors (exit index, correctness, cost) hold at once: the
# thresholds go in chunks, so a curve over a large split does not hold T copies of it (issue 15's memory)
_MAX_CURVE_CELLS = 1 << 18


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The scalar T > 0 minimising the NLL of softmax(logits / T) on labels; 1.0 when no T improves on 1."""
    labels = torch.as_tensor(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0 or logits.shape[1] < 2:
        return 1.0  # nothing to fit on, or a regression head (one output, no softmax)
    z = logits.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.long).cpu()
    if not torch.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity: cannot fit a temperature")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {z.shape[1] - 1}]")
    result = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(-_LOG_T_BOUND, _LOG_T_BOUND),
        method="bounded",
        options={"xatol": 1e-5},
    )
    temperature = float(np.exp(result.x))
    if not np.isfinite(temperature) or _nll(z, y, temperature) >= _nll(z, y, 1.0):
        return 1.0
    return temperature


def fit_temperatures(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One temperature per exit: logits [N, E, C], labels [N] -> [E]."""
    if logits.ndim != 3:
        raise ValueError(f"expected logits [N, E, C], got {tuple(logits.shape)}")
    labels_t = torch.as_tensor(labels)
    return torch.tensor([fit_temperature(logits[:, e], labels_t) for e in range(logits.shape[1])])


def exit_indices(
    rule: ExitRule, signals: ExitSignals, thresholds: Sequence[float], temperatures: torch.Tensor | None
) -> torch.Tensor:
    """Exit index of every example at every threshold, [T, N], exactly as `exits.simulate` would give."""
    n = signals.logits.shape[0]
    parts = [idx for _, idx in _exit_index_chunks(rule, signals, thresholds, temperatures, _MAX_DECISIONS)]
    return torch.cat(parts) if parts else torch.empty(0, n, dtype=torch.long)


def _exit_index_chunks(
    rule: ExitRule,
    signals: ExitSignals,
    thresholds: Sequence[float],
    temperatures: torch.Tensor | None,
    max_cells: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first threshold's position, exit indices [t, N]) for consecutive chunks of the thresholds, each
    deciding at most `max_cells` (threshold, example) pairs and at most _MAX_DECISIONS exit decisions."""
    scaled = signals.float().scaled(temperatures)  # once, not once per threshold
    n, e = scaled.logits.shape[:2]
    values = [float(t) for t in thresholds]
    # all thresholds of a chunk at once; the thresholds are compared in the logits' dtype, as a Python
    # float threshold would be
    chunk = max(1, min(_MAX_DECISIONS // max(1, n * e), max_cells // max(1, n)))
    for start in range(0, len(values), chunk):
        block = torch.tensor(values[start : start + chunk], dtype=scaled.logits.dtype).view(-1, 1, 1)
        fired = rule.decide(scaled, block).reshape(-1, e)
        yield start, exits.first_exit(fired).long().view(-1, n)


def threshold_curve(
    rule: ExitRule,
    signals: ExitSignals,
    labels: np.ndarray,
    exit_layers: Sequence[int],
    thresholds: Sequence[float],
    temperatures: torch.Tensor | None,
    n_tokens: np.ndarray | None = None,
    dims: EncoderDims | None = None,
    *,
    costs: ExitCosts | None = None,
    exit_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per threshold: score (accuracy; Pearson's r for a regression), mean exit layer, speed-ups,
    the fraction exiting at each exit (`exit_frac_<name>`) and the fraction reaching the last exit
    (`super_fraction`: a cascade's super model).

    exit_layers[e] is the 1-indexed layer of exit e: an example leaving at exit e ran exit_layers[e]
    layers and evaluated e + 1 heads. flops_speedup (and gflops_per_example) need n_tokens and dims, or
    `costs`, which prices the exits of any model shape (a cascade's) and then also sets the layers.
    exit_names label the exits (default L<layer>).
    """
    logits = signals.logits
    n, e, c = logits.shape
    layers = torch.as_tensor(list(exit_layers), dtype=torch.long)
    if layers.shape != (e,):
        raise ValueError(f"exit_layers has {layers.numel()} entries for {e} exits")
    labels_t = torch.as_tensor(np.asarray(labels))
    if labels_t.shape != (n,):
        raise ValueError(f"labels must have one entry per example ({n}), got shape {tuple(labels_t.shape)}")
    if temperatures is not None and temperatures.shape != (e,):
        raise ValueError(f"temperatures must have one entry per exit ({e}), got {tuple(temperatures.shape)}")
    if (n_tokens is None) != (dims is None):
        raise ValueError("flops_speedup needs both n_tokens and dims (or neither)")
    if n == 0:
        raise ValueError("threshold_curve needs at least one example")
    if costs is None and dims is not None and n_tokens is not None:
        tokens = np.asarray(n_tokens, dtype=np.float64)
        if tokens.shape != (n,):
            raise ValueError(f"n_tokens must have one entry per example ({n}), got shape {tokens.shape}")
        costs = ExitCosts.multi_exit(tokens, layers.numpy(), dims)
    if costs is not None:
        if costs.exit_flops.shape != (n, e):
            raise ValueError(f"costs are for {costs.exit_flops.shape} examples x exits, not {(n, e)}")
        layers = torch.as_tensor(costs.exit_layers, dtype=torch.long)
    num_layers = costs.reference_layers if costs is not None else int(layers[-1])
    names = [f"L{int(k)}" for k in exit_layers] if exit_names is None else list(exit_names)

    t_count = len(thresholds)
    score = torch.empty(t_count, dtype=torch.float64)
    mean_layer = torch.empty(t_count, dtype=torch.float64)
    exit_frac = torch.empty(t_count, e, dtype=torch.float64)
    inconsistent = torch.zeros(t_count, dtype=torch.long)
    adaptive = np.empty(t_count, dtype=np.float64)
    predictions = logits.argmax(dim=-1)  # [N, E]; temperatures never change argmax
    correct = predictions == labels_t.unsqueeze(1)
    target = labels_t.double().numpy()
    rows = torch.arange(n).unsqueeze(0)
    for start, idx in _exit_index_chunks(rule, signals, thresholds, temperatures, _MAX_CURVE_CELLS):
        at = slice(start, start + idx.shape[0])  # this chunk's thresholds; idx is [t, N]
        if c == 1:  # regression: Pearson's r of the outputs taken at each threshold
            taken = logits[..., 0].double()[rows, idx].numpy()
            score[at] = torch.tensor([np.nan_to_num(pearson(t, target), nan=0.0) for t in taken])
        else:
            score[at] = correct[rows, idx].double().mean(dim=1)
            # examples whose taken prediction differs from the final exit's (target=consistency certifies it)
            inconsistent[at] = (predictions[rows, idx] != predictions[:, -1:].T).sum(dim=1)
        mean_layer[at] = layers[idx].double().mean(dim=1)
        offsets = (idx + e * torch.arange(idx.shape[0]).unsqueeze(1)).flatten()
        exit_frac[at] = torch.bincount(offsets, minlength=idx.shape[0] * e).view(-1, e).double() / n
        if costs is not None:
            adaptive[at] = torch.from_numpy(costs.exit_flops)[rows, idx].sum(dim=1).numpy()

    curve = pd.DataFrame(
        {
            "threshold": np.asarray(thresholds, dtype=np.float64),
            "score": score.numpy(),
            "mean_exit_layer": mean_layer.numpy(),
            "layer_speedup": num_layers / mean_layer.numpy(),
        }
    )
    if costs is not None:
        curve["flops_speedup"] = costs.reference_flops.sum() / adaptive
        curve["gflops_per_example"] = adaptive / n / 1e9
    for j in range(e):
        curve[f"exit_frac_{names[j]}"] = exit_frac[:, j].numpy()
    curve["super_fraction"] = exit_frac[:, -1].numpy()
    if c > 1:
        curve.insert(1, "accuracy", curve["score"])
        curve["consistency"] = 1.0 - inconsistent.numpy() / n
        curve["n_inconsistent"] = inconsistent.numpy()
    return curve


def inconsistency_bound(k: np.ndarray, n: int, delta: float) -> np.ndarray:
    """The one-sided Clopper-Pearson upper bound, at confidence 1 - delta, on the rate of inconsistent
    examples when k of n were: the largest rate p with P(Binomial(n, p) <= k) >= delta."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    bound = beta.ppf(1.0 - delta, k + 1.0, np.maximum(n - k, 1e-12))
    return np.where(k >= n, 1.0, bound)


def certify_consistency(
    curve: pd.DataFrame,
    n: int,
    epsilon: float,
    delta: float,
    larger_is_slower: bool,
    speed_column: str = "layer_speedup",
) -> pd.Series:
    """The fastest threshold certified consistent: with probability >= 1 - delta over the calibration
    sample, its early predictions differ from the final exit's on at most `epsilon` of the distribution.

    Fixed-sequence testing (as in Learn-then-Test): thresholds are tested from the slowest to the fastest,
    an order fixed before the data is seen, each by its Clopper-Pearson bound at level delta, and testing
    stops at the first that fails. The chance that any certified threshold is in truth worse than epsilon
    is then at most delta with no correction for the number of thresholds, although the rate is not
    monotone in the threshold. None certified: the slowest, target_met false."""
    ordered = curve.sort_values("threshold", ascending=not larger_is_slower, kind="mergesort")
    ordered = ordered.assign(inconsistency_bound=inconsistency_bound(ordered["n_inconsistent"], n, delta))
    passed = (ordered["inconsistency_bound"] <= epsilon).to_numpy()
    certified = ordered.iloc[: int(np.cumprod(passed).sum())]  # those passed before the first failure
    # the fastest certified threshold, ties in speed to the slower one; none: the slowest
    pick = (
        certified.iloc[int(np.argmax(certified[speed_column].to_numpy()))]
        if len(certified)
        else ordered.iloc[0]
    )
    chosen = pick.copy()
    chosen["target_met"] = len(certified) > 0
    return chosen


def choose_threshold(
    curve: pd.DataFrame,
    target: str,
    *,
    reference_accuracy: float,
    tolerance: float = 0.01,
    speedup: float = 2.0,
    super_fraction: float = 0.25,
    larger_is_slower: bool = True,
    speed_column: str = "layer_speedup",
    score_column: str = "accuracy",
    epsilon: float = 0.05,
    delta: float = 0.1,
    n_examples: int = 0,
) -> pd.Series:
    """The row of `curve` that meets the target, with a boolean field `target_met`.

    accuracy_within: the fastest row whose accuracy >= reference_accuracy - tolerance (absolute; 0.01 = 1
        point), ties to the more accurate. If none qualifies: the most accurate row.
    speedup: the most accurate row whose speed-up >= `speedup`, ties to the faster. If none: the fastest.
    super_fraction: the most accurate row sending at most `super_fraction` of the examples to the last exit
        (column `super_fraction`), ties to the faster. If none: the fastest.
    consistency: the fastest row certified (certify_consistency) to keep the final exit's prediction on
        >= 1 - epsilon of the distribution with probability >= 1 - delta, from `n_examples`.
    Rows equal in speed and accuracy are a plateau of thresholds; the pick is its edge on the safe side
    for the target (the slower edge for accuracy_within, the faster for speedup), using larger_is_slower.
    """
    if target not in TARGETS:
        raise UserError(f"calibrate.target={target!r} is not one of {', '.join(TARGETS)}")
    if curve.empty:
        raise ValueError("the threshold curve has no rows to choose from")
    if target == "consistency":
        if "n_inconsistent" not in curve:
            raise UserError(
                "calibrate.target=consistency needs the class predictions of several exits (a multi-exit "
                "classifier or a cascade): use calibrate.target=accuracy_within here"
            )
        return certify_consistency(curve, n_examples, epsilon, delta, larger_is_slower, speed_column)
    eps = 1e-12  # accuracies and speed-ups are ratios of counts; do not lose an exact hit to rounding
    larger_is_safer = larger_is_slower if target == "accuracy_within" else not larger_is_slower
    if target == "accuracy_within":
        meets = curve[score_column] >= reference_accuracy - tolerance - eps
        order = [speed_column, score_column] if meets.any() else [score_column, speed_column]
    else:
        if target == "speedup":
            meets = curve[speed_column] >= speedup - eps
        else:
            meets = curve["super_fraction"] <= super_fraction + eps
        order = [score_column, speed_column] if meets.any() else [speed_column, score_column]
    candidates = curve[meets] if meets.any() else curve
    ranked = candidates.sort_values(
        [*order, "threshold"], ascending=[False, False, not larger_is_safer], kind="mergesort"
    )
    chosen = ranked.iloc[0].copy()
    chosen["target_met"] = bool(meets.any())
    return chosen
