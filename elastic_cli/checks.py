"""The composed config, typed and checked before any work: `to_root`.

config.validate checks what needs no registry; here are the checks against the registries of plug-ins
(method, head kind, backbone family, objective and exit rule names) and the exit rule's threshold range,
which depends on the rule and on the task's classes.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from elastic_cli.config import RootConfig, TrainStageConfig, validate
from elastic_cli.errors import UserError
from elastic_cli.exits import RULES, ExitRule, build_rule
from elastic_cli.methods import METHODS
from elastic_cli.methods.objectives import OBJECTIVES
from elastic_cli.models.adapters import FAMILIES
from elastic_cli.models.heads import HEADS


def to_root(cfg: DictConfig) -> RootConfig:
    """The typed object the train, calibrate and evaluate stages work with, checked."""
    root = OmegaConf.to_object(cfg)
    assert isinstance(root, RootConfig)
    check(root)
    return root


def check(cfg: RootConfig) -> None:
    FAMILIES.get(cfg.backbone.family)
    head = HEADS.get(cfg.method.head)
    method = METHODS.get(cfg.method.name)
    validate(cfg)
    built = method(cfg.method)
    # the head the method builds from its settings (FastBERT's width must split into its attention heads)
    problem = head.spec_problem(built.head_spec(cfg.backbone))
    if problem is not None:
        raise UserError(f"method.head={cfg.method.head}: {problem}")
    rule = RULES.get(cfg.method.exit.name)
    if method.model_shape not in rule.model_shapes:
        usable = ", ".join(n for n, r in RULES.items() if method.model_shape in r.model_shapes)
        raise UserError(
            f"method.exit={rule.name} does not apply to method {cfg.method.name} (a {method.model_shape} "
            f"model): use method/exit= one of {usable}"
        )
    problem = built.backbone_problem(FAMILIES.get(cfg.backbone.family))
    if problem is not None:
        raise UserError(f"backbone.family={cfg.backbone.family}: {problem}")
    for stage in cfg.method.stages or [TrainStageConfig(objective=cfg.method.objective)]:
        if stage.objective not in OBJECTIVES:
            raise UserError(f"objective {stage.objective!r} is not one of {', '.join(OBJECTIVES.names())}")
    check_thresholds(cfg)


def check_thresholds(cfg: RootConfig) -> None:
    """The threshold and every point of the sweep grid within the exit rule's range."""
    exit_cfg = cfg.method.exit
    rule = build_rule(exit_cfg)
    t = exit_cfg.threshold
    if t is not None:
        problem = threshold_problem(rule, t, cfg.task.num_labels)
        if problem:
            raise UserError(f"method.exit.threshold={t} {problem}")
    grid = [item.strip() for item in str(exit_cfg.sweep).split(",")]
    example = "method.exit.sweep=0.6,0.9" if rule.threshold_range[1] <= 1 else "method.exit.sweep=2,3,4"
    try:
        points = [float(item) for item in grid]
    except ValueError:
        points = []
    if not points:
        raise UserError(
            f"method.exit.sweep={exit_cfg.sweep!r} must be thresholds separated by commas, e.g. {example}"
        )
    for point in points:
        problem = threshold_problem(rule, point, cfg.task.num_labels)
        if problem:
            raise UserError(f"method.exit.sweep={exit_cfg.sweep!r} holds {point:g}, which {problem}")


def threshold_problem(rule: ExitRule, t: float, num_labels: int) -> str | None:
    """What is wrong with threshold `t` for `rule` (its bounds for this task's classes), or None."""
    lo, hi, why = rule.threshold_bounds(num_labels)
    # a bound written to 4 places (0.6931 for log 2) is within it
    if not (math.isfinite(t) and lo <= t and (t <= hi or round(t, 4) <= round(hi, 4))):
        note = f" ({why})" if why else ""
        return f"is outside [{round(lo, 4)}, {round(hi, 4)}] for the {rule.name} rule{note}"
    if rule.whole_thresholds and t != int(t):
        return f"must be a whole number of {rule.whole_thresholds} (1, 2, ...) for the {rule.name} rule"
    return None
