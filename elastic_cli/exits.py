"""Exit rules, written once and vectorised over logits of shape [examples, exits, classes].

A rule maps the logits seen so far to "exit here" decisions, [N, E] booleans. Every rule is causal:
the decision at exit e depends only on exits 0..e. The adaptive model calls the same function on
the prefix it has computed, so the adaptive path and the simulation from cached logits cannot
disagree about the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (calibrated logits [N, E, C], threshold) -> exit here? [N, E] bool. Every rule also accepts a
# tensor of thresholds shaped [T, 1, 1] and returns [T, N, E]: a whole curve in one call.
Decide = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


@dataclass(frozen=True)
class ExitRule:
    name: str
    decide: Decide
    threshold_range: tuple[float, float]
    # the threshold grid used by calibration and by the evaluation curve, for C classes
    grid: Callable[[int, int], torch.Tensor]
    # True when a larger threshold makes examples exit later (slower, usually more accurate)
    larger_is_slower: bool


def _maxprob(logits: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    # SWEET / Sledgehammer: exit at the first exit whose top softmax probability reaches tau
    return logits.softmax(dim=-1).amax(dim=-1) >= threshold


def _maxprob_grid(num_classes: int, size: int) -> torch.Tensor:
    # SWEET sweeps linspace(1/C, 1): 1/C exits everything at the first exit, 1 runs (nearly) all layers
    return torch.linspace(1.0 / num_classes, 1.0, size, dtype=torch.float64)


RULES: dict[str, ExitRule] = {
    "maxprob": ExitRule("maxprob", _maxprob, (0.0, 1.0), _maxprob_grid, larger_is_slower=True),
}


def scale(logits: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
    """Per-exit temperature scaling: z_e / T_e. `temperatures` has one entry per exit of `logits`."""
    if temperatures is None:
        return logits
    t = temperatures.to(logits.dtype).to(logits.device)
    return logits / t.view(1, -1, 1)


def decisions(
    rule: ExitRule, logits: torch.Tensor, threshold: float, temperatures: torch.Tensor | None = None
) -> torch.Tensor:
    """[N, E] exit decisions; the last exit always fires (it is the full model)."""
    return rule.decide(scale(logits.float(), temperatures), threshold)


def first_exit(exit_here: torch.Tensor) -> torch.Tensor:
    """Index of the first exit that fires for each example; the last exit if none does."""
    n, e = exit_here.shape
    forced = exit_here.clone()
    forced[:, -1] = True
    # argmax returns the first maximal index: the first True
    return forced.to(torch.int8).argmax(dim=1)


def simulate(
    rule: ExitRule, logits: torch.Tensor, threshold: float, temperatures: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a rule to cached all-exits logits [N, E, C]: (exit index [N], logits at the exit [N, C])."""
    idx = first_exit(decisions(rule, logits, threshold, temperatures))
    chosen = logits[torch.arange(logits.shape[0]), idx]
    return idx, chosen


def get_rule(name: str) -> ExitRule:
    return RULES[name]
