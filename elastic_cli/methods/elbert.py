"""ELBERT (Xie et al., ICASSP 2021): ALBERT with a confidence-window early exit.

One exit head shared by all layers (`method.head=shared`: no parameters per exit). Training: ELBERT's
`dyn` exit weights (objectives.DynamicWeights): learned sigmoid weights for the intermediate exits,
the last exit takes the rest so they sum to the number of exits. Exit rule: normalised entropy, then
the confidence-window rules bias_1 / bias_2 / bias_3 (see elastic_cli/exits.py).
"""

from typing import Any

from elastic_cli.config import ElbertMethodConfig
from elastic_cli.methods.base import Method, register


@register
class Elbert(Method):
    name = "elbert"

    def objective_options(self, objective: str) -> dict[str, Any]:
        cfg = self.cfg
        if objective == "dyn_weights" and isinstance(cfg, ElbertMethodConfig):
            return {"w_init": cfg.w_init, "w_lr": cfg.w_lr}
        return {}
