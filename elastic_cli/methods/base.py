"""The method interface and its registry.

A method is its config (the schema of conf/method/<name>.yaml, a dataclass in elastic_cli/config.py),
its training stages and objectives (elastic_cli/methods/objectives.py), its exit heads, and its
default exit rule (conf/method/exit/). A method shapes one multi-exit model, or (a `CascadeMethod`) a
chain of separately trained single-exit models; any exit rule can be combined with any objective
(`method/exit=patience`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from elastic_cli.config import BackboneConfig, MethodConfig, RootConfig, TrainStageConfig
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


@dataclass
class CascadeMemberSpec:
    """One model of a cascade, as training needs it."""

    name: str  # its label in metrics and its folder under members/
    backbone: BackboneConfig
    layers: int | None = None  # keep only the backbone's first `layers` layers (None: all)
    ckpt: str | None = None  # reuse this trained single-exit checkpoint instead of training


class CascadeMethod(Method):
    """A chain of separately trained single-exit models, smallest first (models/cascade.py). Each member is
    fine-tuned like the static baseline: final classifier only, the method's head and head dropout."""

    def members(self, cfg: RootConfig, depth: Callable[[], int]) -> list[CascadeMemberSpec]:
        """The models, smallest first; `depth()` gives the layer count of cfg.backbone."""
        raise NotImplementedError

    def member_method(self) -> Method:
        return Method(
            MethodConfig(
                name="static",
                exit_layers="last",
                head=self.cfg.head,
                objective="final_only",
                head_dropout=self.cfg.head_dropout,
            )
        )


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise UserError(f"method.name={cfg.name!r} is not a known method ({', '.join(sorted(METHODS))})")
    return METHODS[cfg.name](cfg)
