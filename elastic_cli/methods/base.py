"""The method interface and its registry.

A method is its config (the schema of conf/method/<name>.yaml, a dataclass in elastic_cli/config.py),
its training stages and objectives (elastic_cli/methods/objectives.py), its exit heads, and its
default exit rule (conf/method/exit/). Every method so far shapes one multi-exit model; any exit
rule can be combined with any objective (`method/exit=patience`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from elastic_cli.config import BackboneConfig, MethodConfig, TrainStageConfig
from elastic_cli.errors import UserError
from elastic_cli.exits import ExitSignals
from elastic_cli.methods.objectives import OBJECTIVES, Objective, lte_loss
from elastic_cli.models.heads import HeadSpec

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


class Method:
    name: ClassVar[str] = ""

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def stages(self) -> list[TrainStageConfig]:
        return list(self.cfg.stages) or [TrainStageConfig(objective=self.cfg.objective)]

    def objective_options(self, objective: str) -> dict[str, Any]:
        """Keyword arguments of one of this method's objectives (e.g. ELBERT's weight init and lr)."""
        return {}

    def objective(self, stage: TrainStageConfig, exit_layers: list[int]) -> Objective:
        if stage.objective not in OBJECTIVES:
            raise UserError(f"objective {stage.objective!r} is not one of {', '.join(sorted(OBJECTIVES))}")
        return OBJECTIVES[stage.objective](exit_layers, **self.objective_options(stage.objective))

    def loss(self, objective: Objective, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        loss = objective(out, labels, step)
        if out.lte is not None:
            loss = loss + self.cfg.lte_weight * lte_loss(out, labels)
        return loss

    def head_spec(self, backbone: BackboneConfig) -> HeadSpec:
        return HeadSpec(kind=self.cfg.head, pooling=backbone.pooling, dropout=self.cfg.head_dropout)


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise UserError(f"method.name={cfg.name!r} is not a known method ({', '.join(sorted(METHODS))})")
    return METHODS[cfg.name](cfg)
