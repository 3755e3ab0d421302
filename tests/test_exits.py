"""Exit rules on hand-made logits whose exits are known, and the contract every rule keeps."""

from __future__ import annotations

import math

import pytest
import torch

from elastic_cli import exits

MAXPROB = exits.get_rule("maxprob")


def _logits_for(probs: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_maxprob_exits_at_first_confident_exit():
    # example 0: confident at exit 1; example 1: at exit 2; example 2: never (falls to the last exit)
    logits = _logits_for(
        [
            [[0.6, 0.4], [0.95, 0.05], [0.99, 0.01]],
            [[0.5, 0.5], [0.7, 0.3], [0.2, 0.8]],
            [[0.5, 0.5], [0.55, 0.45], [0.6, 0.4]],
        ]
    )
    idx, chosen = exits.simulate(MAXPROB, logits, 0.9)
    assert idx.tolist() == [1, 2, 2]
    assert torch.equal(chosen, logits[[0, 1, 2], [1, 2, 2]])
    idx, _ = exits.simulate(MAXPROB, logits, 0.7)
    assert idx.tolist() == [1, 1, 2]
    idx, _ = exits.simulate(MAXPROB, logits, 0.5)
    assert idx.tolist() == [0, 0, 0]


def test_temperatures_change_the_decision():
    logits = _logits_for([[[0.8, 0.2], [0.99, 0.01]]])
    assert exits.simulate(MAXPROB, logits, 0.75)[0].tolist() == [0]
    # a high temperature at exit 0 flattens it below the threshold
    assert exits.simulate(MAXPROB, logits, 0.75, torch.tensor([4.0, 1.0]))[0].tolist() == [1]


def test_first_exit_forces_the_last():
    fired = torch.tensor([[False, False, False], [False, True, True], [True, False, False]])
    assert exits.first_exit(fired).tolist() == [2, 1, 0]


@pytest.mark.parametrize("name", sorted(exits.RULES))
def test_every_rule_is_causal_and_broadcasts_thresholds(name):
    rule = exits.RULES[name]
    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(40, 5, 3, generator=gen)
    grid = rule.grid(3, 7)
    full = [rule.decide(logits, float(t)) for t in grid]
    # a prefix of the exits gives the same decisions on that prefix (the adaptive path relies on it)
    for t, d in zip(grid, full):
        for k in range(1, 5):
            assert torch.equal(rule.decide(logits[:, :k], float(t)), d[:, :k])
    # a [T, 1, 1] tensor of thresholds gives the [T, N, E] stack of single-threshold decisions
    many = rule.decide(logits, grid.to(logits.dtype).view(-1, 1, 1))
    assert torch.equal(many, torch.stack(full))
    lo, hi = rule.threshold_range
    assert lo <= float(grid.min()) and float(grid.max()) <= hi
    assert not math.isnan(float(grid[0]))
