"""SWEET's multi-model baseline (METHODS.md section 4): for each exit layer k an independent model made of
the backbone's first k layers and its own classifier, fine-tuned separately on the same data. They run
smallest first until one is confident; nothing is reused, so an example stopping at model j pays for
models 1..j (SWEET's cumulative accounting; its evaluation script counts every example at the last
model, which is not repeated here). Exits as `method.exit_layers` (default SWEET's 0_3_5_11)."""

from collections.abc import Callable
from dataclasses import dataclass, field

from elastic_cli.config import MethodConfig, RootConfig, parse_exit_layers
from elastic_cli.errors import UserError
from elastic_cli.methods.base import METHODS, CascadeMemberSpec, CascadeMethod


@dataclass
class MultiModelConfig(MethodConfig):
    """SWEET's multi-model baseline: one model per exit layer, the backbone's first k layers each."""

    member_ckpts: dict[str, str] = field(default_factory=dict)  # reuse: {"L4": folder, ...}


@METHODS.register("multi_model", schema=MultiModelConfig)
class MultiModel(CascadeMethod[MultiModelConfig]):
    def members(self, cfg: RootConfig, depth: Callable[[], int]) -> list[CascadeMemberSpec]:
        m = self.cfg
        layers = parse_exit_layers(m.exit_layers, depth())
        names = [f"L{k}" for k in layers]
        unknown = sorted(set(m.member_ckpts) - set(names))
        if unknown:
            raise UserError(f"method.member_ckpts names {unknown}, not models of this cascade ({names})")
        return [
            CascadeMemberSpec(name, cfg.backbone, layers=k, ckpt=m.member_ckpts.get(name))
            for name, k in zip(names, layers, strict=True)
        ]
