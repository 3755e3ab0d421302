"""The method interface and its registry."""

from __future__ import annotations

from typing import ClassVar

import torch

from elastic_cli.config import MethodConfig
from elastic_cli.errors import UserError
from elastic_cli.methods import objectives

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


class Method:
    """A registered unit: its config (the schema of method/<name>.yaml) and its training objective.

    The model shape of every method so far is one multi-exit model; the exit rule comes from
    `cfg.exit` (see elastic_cli/exits.py), so any rule combines with any objective.
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg
        if cfg.objective not in objectives.OBJECTIVES:
            raise UserError(
                f"method.objective={cfg.objective!r} is not one of {', '.join(objectives.OBJECTIVES)}"
            )
        self.objective = objectives.OBJECTIVES[cfg.objective]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss from all-exits logits [B, E, C] and labels [B]."""
        return self.objective(objectives.per_exit_losses(logits, labels))


def build_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise UserError(f"method.name={cfg.name!r} is not a known method ({', '.join(sorted(METHODS))})")
    return METHODS[cfg.name](cfg)
