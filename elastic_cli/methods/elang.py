"""E-LANG (METHODS.md section 1): a swift model in front of a super model, each fine-tuned separately
(or reused from a trained static checkpoint); the swift model's energy score s = T logsumexp(z/T) routes
an example to the super model when s < t (conf/method/exit/energy.yaml). The super model is `backbone`;
the swift model is `method.swift` (`method.swift=minilm-l3` picks another backbone config)."""

from collections.abc import Callable
from dataclasses import dataclass, field

from elastic_cli.config import BackboneConfig, MethodConfig, RootConfig
from elastic_cli.methods.base import METHODS, CascadeMemberSpec, CascadeMethod


@dataclass
class ElangConfig(MethodConfig):
    """E-LANG: a swift model (this backbone) in front of the super model (the `backbone` group)."""

    swift: BackboneConfig = field(default_factory=BackboneConfig)
    swift_ckpt: str | None = None  # reuse a trained single-exit (static) checkpoint as the swift model
    super_ckpt: str | None = None  # ... or as the super model


@METHODS.register("elang", schema=ElangConfig)
class Elang(CascadeMethod[ElangConfig]):
    def members(self, cfg: RootConfig, depth: Callable[[], int]) -> list[CascadeMemberSpec]:
        m = self.cfg
        return [
            CascadeMemberSpec("swift", m.swift, ckpt=m.swift_ckpt),
            CascadeMemberSpec("super", cfg.backbone, ckpt=m.super_ckpt),
        ]
