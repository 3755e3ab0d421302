"""The method interface and its registry.

A method is a class registered with its config schema (`@METHODS.register("fastbert",
schema=FastbertConfig)`: a MethodConfig subclass beside the class, when it has settings of its own), its
defaults (conf/method/<name>.yaml), its training stages and objectives (elastic_cli/methods/objectives.py),
its exit heads (`method.head`, elastic_cli/models/heads.py), and its default exit rule (conf/method/exit/).
A method shapes one multi-exit model, or (a `CascadeMethod`) a chain of separately trained single-exit
models; any exit rule can be combined with any objective (`method/exit=patience`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import torch

from elastic_cli.config import BackboneConfig, MethodConfig, RootConfig, TrainStageConfig
from elastic_cli.methods.objectives import OBJECTIVES, Objective, lte_loss
from elastic_cli.models.heads import HeadSpec
from elastic_cli.registry import Registry, as_schema
from elastic_cli.signals import ExitSignals

if TYPE_CHECKING:
    from elastic_cli.data import Encoded
    from elastic_cli.models.multi_exit import MultiExitModel

C = TypeVar("C", bound=MethodConfig)


@dataclass
class StageContext:
    """What a method may read when it prepares a training stage (`Method.prepare_stage`)."""

    train: Encoded  # the training split, encoded (never the calibration split)
    calibration: Encoded
    pad_id: int
    device: torch.device
    batch_size: int  # for passes without gradients (device.eval_batch_size)
    # the kept weights of the stage before, best first (empty for the first stage run here)
    previous: list[dict[str, torch.Tensor]] = field(default_factory=list)
    previous_score: float | None = None  # the stage before's best calibration score
    init_from_weights: str = ""  # fingerprint of the train.init_from weights that stand for skipped stages
    work: Path | None = None  # where the method keeps files beside the checkpoint while it trains
    resuming: bool = False  # this stage resumes an interrupted run


class Method(Generic[C]):
    """Base of the registered methods, typed over its config schema: `self.cfg` is a `C`."""

    name: ClassVar[str] = ""  # set by METHODS.register
    schema: ClassVar[type[MethodConfig]] = MethodConfig  # set by METHODS.register when it has its own
    # the model it trains, a name in models.multi_exit.MODEL_SHAPES (a cascade is a chain of multi_exit)
    model_shape: ClassVar[str] = "multi_exit"

    def __init__(self, cfg: MethodConfig) -> None:
        # a plain MethodConfig (a method built in code) gets the schema's defaults for the method's own fields
        self.cfg: C = cast(C, as_schema(cfg, self.schema))

    def stages(self) -> list[TrainStageConfig]:
        return list(self.cfg.stages) or [TrainStageConfig(objective=self.cfg.objective)]

    def objective_options(self, objective: str) -> dict[str, Any]:
        """Keyword arguments of one of this method's objectives (e.g. ELBERT's weight init and lr)."""
        return {}

    def objective(self, stage: TrainStageConfig, exit_layers: list[int]) -> Objective:
        return OBJECTIVES.get(stage.objective)(exit_layers, **self.objective_options(stage.objective))

    def loss(
        self,
        objective: Objective,
        out: ExitSignals,
        labels: torch.Tensor,
        step: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of a batch; `rows` are its row numbers in the training split."""
        loss = (
            objective(out, labels, step, rows=rows) if objective.reads_rows else objective(out, labels, step)
        )
        if out.lte is not None:
            loss = loss + self.cfg.lte_weight * lte_loss(out, labels)
        return loss

    def backbone_problem(self, family: type) -> str | None:
        """Why this method cannot run on a backbone of `family` (an adapter class), or None."""
        return None

    def shape_settings(self) -> dict[str, Any]:
        """Constructor settings of its model shape beyond exits and head (AdapLeR's predictor width)."""
        return {}

    def checkpoint_files(self, folder: Path) -> dict[str, Path]:
        """Files the method made while training for the checkpoint `folder`, to be saved in it by name
        (moved in: AdapLeR's saliency targets). None by default."""
        return {}

    def prepare_stage(
        self, s: int, stage: TrainStageConfig, model: MultiExitModel, context: StageContext
    ) -> None:
        """Before training stage `s`: anything the stage needs from the model the stages before left
        (AdapLeR: its saliency targets, token dropping on or off). Nothing by default."""

    def head_spec(self, backbone: BackboneConfig) -> HeadSpec:
        return HeadSpec(kind=self.cfg.head, pooling=backbone.pooling, dropout=self.cfg.head_dropout)


@dataclass
class CascadeMemberSpec:
    """One model of a cascade, as training needs it."""

    name: str  # its label in metrics and its folder under members/
    backbone: BackboneConfig
    layers: int | None = None  # keep only the backbone's first `layers` layers (None: all)
    ckpt: str | None = None  # reuse this trained single-exit checkpoint instead of training


class CascadeMethod(Method[C]):
    """A chain of separately trained single-exit models, smallest first (models/cascade.py). Each member is
    fine-tuned like the static baseline: final classifier only, the method's head and head dropout."""

    model_shape = "cascade"

    def members(self, cfg: RootConfig, depth: Callable[[], int]) -> list[CascadeMemberSpec]:
        """The models, smallest first; `depth()` gives the layer count of cfg.backbone."""
        raise NotImplementedError

    def member_method(self) -> Method[MethodConfig]:
        return Method(
            MethodConfig(
                name="static",
                exit_layers="last",
                head=self.cfg.head,
                objective="final_only",
                head_dropout=self.cfg.head_dropout,
            )
        )


METHODS: Registry[Method[Any]] = Registry("method", "method.name", group="method")


def build_method(cfg: MethodConfig) -> Method[Any]:
    return METHODS.get(cfg.name)(cfg)
