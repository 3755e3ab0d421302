"""Exit rules, written once and vectorised over the exits' outputs, [examples, exits, ...].

A rule maps what the exits produced so far (`ExitSignals`: logits, and the learned-to-exit score
when the model has one) to "exit here" decisions, [N, E] booleans. Every rule is causal: the decision
at exit e depends only on exits 0..e. The adaptive model calls the same `decide` on the prefix it
has computed, so the adaptive path and the simulation from cached logits cannot disagree about the
rule. Every rule also accepts a tensor of thresholds shaped [T, 1, 1] and returns [T, N, E] (a whole
threshold curve in one call): write rules with negative dims (dim=-1 is exits once the class dim is
reduced) so the extra leading dim broadcasts.

Each rule is a class registered in RULES; its config schema (conf/method/exit/<name>.yaml) is the
dataclass named in `schema`, in elastic_cli/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from elastic_cli.config import ExitRuleConfig
from elastic_cli.errors import UserError


@dataclass
class ExitSignals:
    """What the exits of a batch produced."""

    logits: torch.Tensor  # [N, E, C]; C = 1 for regression
    lte: torch.Tensor | None = None  # [N, E] learned-to-exit score (BERxiT): predicted need to continue

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[1])

    def rows(self, index: torch.Tensor) -> ExitSignals:
        return ExitSignals(self.logits[index], None if self.lte is None else self.lte[index])

    def upto(self, k: int) -> ExitSignals:
        """The first k exits."""
        return ExitSignals(self.logits[:, :k], None if self.lte is None else self.lte[:, :k])

    def scaled(self, temperatures: torch.Tensor | None) -> ExitSignals:
        """Per-exit temperature scaling of the logits, z_e / T_e (`temperatures` has one entry per exit)."""
        if temperatures is None or self.logits.shape[-1] == 1:  # regression outputs are not probabilities
            return self
        t = temperatures[: self.num_exits].to(self.logits.dtype).to(self.logits.device)
        return replace(self, logits=self.logits / t.view(1, -1, 1))

    def append(self, logits: torch.Tensor, lte: torch.Tensor | None) -> ExitSignals:
        """Add one exit's outputs ([N, C] and [N]) after the last."""
        new_lte = None
        if lte is not None:
            new_lte = lte.unsqueeze(1) if self.lte is None else torch.cat([self.lte, lte.unsqueeze(1)], 1)
        return ExitSignals(torch.cat([self.logits, logits.unsqueeze(1)], 1), new_lte)

    @staticmethod
    def first(logits: torch.Tensor, lte: torch.Tensor | None) -> ExitSignals:
        return ExitSignals(logits.unsqueeze(1), None if lte is None else lte.unsqueeze(1))

    def float(self) -> ExitSignals:
        return ExitSignals(self.logits.float(), None if self.lte is None else self.lte.float())


class ExitRule:
    """Base of the registered rules: a rule instance holds its config (extra parameters such as a
    patience rule's regression threshold); the swept threshold is passed to `decide`."""

    name: ClassVar[str] = ""
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    larger_is_slower: ClassVar[bool] = True  # a larger threshold makes examples exit later
    regression: ClassVar[bool] = False  # applies to one-output (regression) exits
    needs_lte: ClassVar[bool] = False  # reads the learned-to-exit score (method.lte=true)

    def __init__(self, cfg: ExitRuleConfig) -> None:
        self.cfg = cfg

    def grid(self, num_classes: int, num_exits: int, size: int) -> torch.Tensor:
        """Thresholds for calibration and the evaluation curve (float64, ascending)."""
        lo, hi = self.threshold_range
        return torch.linspace(lo, hi, size, dtype=torch.float64)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


RULES: dict[str, type[ExitRule]] = {}


def register(cls: type[ExitRule]) -> type[ExitRule]:
    RULES[cls.name] = cls
    return cls


def _threshold(threshold: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    return threshold.to(like.dtype).to(like.device) if isinstance(threshold, torch.Tensor) else threshold


@register
class MaxProb(ExitRule):
    """SWEET / Sledgehammer: exit at the first exit whose top softmax probability reaches tau."""

    name = "maxprob"

    def grid(self, num_classes: int, num_exits: int, size: int) -> torch.Tensor:
        # SWEET sweeps linspace(1/C, 1): 1/C exits everything at the first exit, 1 runs (nearly) all layers
        return torch.linspace(1.0 / num_classes, 1.0, size, dtype=torch.float64)

    def decide(self, signals: ExitSignals, threshold: float | torch.Tensor) -> torch.Tensor:
        confidence = signals.logits.softmax(dim=-1).amax(dim=-1)
        return confidence >= _threshold(threshold, confidence)


def build_rule(cfg: ExitRuleConfig) -> ExitRule:
    if cfg.name not in RULES:
        raise UserError(f"method.exit.name={cfg.name!r} is not one of {', '.join(sorted(RULES))}")
    return RULES[cfg.name](cfg)


def check_applicable(rule: ExitRule, num_labels: int, has_lte: bool) -> None:
    """Reject a rule that cannot work on this model (regression exits, no learned-to-exit module)."""
    if num_labels == 1 and not rule.regression:
        usable = ", ".join(sorted(n for n, r in RULES.items() if r.regression))
        raise UserError(
            f"the {rule.name} exit rule needs class probabilities; this task is a regression: "
            f"use method/exit= one of {usable}"
        )
    if rule.needs_lte and not has_lte:
        raise UserError(
            f"the {rule.name} exit rule reads the learned-to-exit module: set method.lte=true and train"
        )


def decisions(
    rule: ExitRule,
    signals: ExitSignals,
    threshold: float | torch.Tensor,
    temperatures: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, E] exit decisions (or [T, N, E] for a [T, 1, 1] tensor of thresholds)."""
    return rule.decide(signals.float().scaled(temperatures), threshold)


def first_exit(exit_here: torch.Tensor) -> torch.Tensor:
    """Index of the first exit that fires for each example; the last exit if none does."""
    forced = exit_here.clone()
    forced[..., -1] = True
    # argmax returns the first maximal index: the first True
    return forced.to(torch.int8).argmax(dim=-1)


def simulate(
    rule: ExitRule, signals: ExitSignals, threshold: float, temperatures: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a rule to cached all-exits outputs: (exit index [N], logits at that exit [N, C])."""
    idx = first_exit(decisions(rule, signals, threshold, temperatures))
    chosen = signals.logits[torch.arange(signals.logits.shape[0]), idx]
    return idx, chosen
