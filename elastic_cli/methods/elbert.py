"""ELBERT (Xie et al., ICASSP 2021): ALBERT with a confidence-window early exit.

One exit head shared by all layers (`method.head=shared`: no parameters per exit). Training: ELBERT's
`dyn` exit weights (objectives.DynamicWeights): learned sigmoid weights for the intermediate exits,
the last exit takes the rest so they sum to the number of exits. Exit rule: normalised entropy, then
the confidence-window rules bias_1 / bias_2 / bias_3 (see elastic_cli/exits.py).
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_cli.config import POSITIVE, Bound, MethodConfig
from elastic_cli.methods.base import METHODS, Method


@dataclass
class ElbertConfig(MethodConfig):
    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("w_lr", POSITIVE, "the learning rate of ELBERT's exit weights"),
    )

    w_init: float = 4.0  # initial logit of every intermediate exit weight (sigmoid(4) = 0.982)
    w_lr: float = 1e-2  # lr of the exit weights (their own optimizer group)


@METHODS.register("elbert", schema=ElbertConfig)
class Elbert(Method[ElbertConfig]):
    def objective_options(self, objective: str) -> dict[str, Any]:
        if objective == "dyn_weights":
            return {"w_init": self.cfg.w_init, "w_lr": self.cfg.w_lr}
        return {}
