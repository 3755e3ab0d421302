"""A method defined outside the package, as a contributor adds one: this module and conf/method/toy.yaml
beside it. `ELASTIC_PLUGINS=toy_method` (with this folder on PYTHONPATH) loads it; tests/test_plugins.py
trains, calibrates and evaluates it through the CLI.

The toy method: the sum of the exit losses with the final exit's loss weighted `final_weight` times,
an objective of its own, registered with the package's objectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from elastic_cli.config import POSITIVE, Bound, MethodConfig
from elastic_cli.methods import METHODS, Method
from elastic_cli.methods.objectives import OBJECTIVES, Objective, per_exit_losses
from elastic_cli.signals import ExitSignals


@dataclass
class ToyConfig(MethodConfig):
    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("final_weight", POSITIVE, "the weight of the final exit's loss"),
    )

    final_weight: float = 2.0


@OBJECTIVES.register("final_heavy")
class FinalHeavy(Objective):
    def __init__(self, exit_layers: Sequence[int], final_weight: float = 2.0) -> None:
        super().__init__(exit_layers)
        self.final_weight = final_weight

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        losses = per_exit_losses(out.logits, labels)
        return losses[:-1].sum() + self.final_weight * losses[-1]


@METHODS.register("toy", schema=ToyConfig)
class Toy(Method[ToyConfig]):
    def objective_options(self, objective: str) -> dict[str, Any]:
        return {"final_weight": self.cfg.final_weight} if objective == "final_heavy" else {}
