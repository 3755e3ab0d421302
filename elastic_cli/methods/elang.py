"""E-LANG (METHODS.md section 1): a swift model in front of a super model, each fine-tuned separately
(or reused from a trained static checkpoint); the swift model's energy score s = T logsumexp(z/T) routes
an example to the super model when s < t (conf/method/exit/energy.yaml). The super model is `backbone`;
the swift model is `method.swift` (`method.swift=minilm-l3` picks another backbone config)."""

from collections.abc import Callable

from elastic_cli.config import ElangMethodConfig, RootConfig
from elastic_cli.methods.base import CascadeMemberSpec, CascadeMethod, register


@register
class Elang(CascadeMethod):
    name = "elang"

    def members(self, cfg: RootConfig, depth: Callable[[], int]) -> list[CascadeMemberSpec]:
        m = self.cfg
        assert isinstance(m, ElangMethodConfig)
        return [
            CascadeMemberSpec("swift", m.swift, ckpt=m.swift_ckpt),
            CascadeMemberSpec("super", cfg.backbone, ckpt=m.super_ckpt),
        ]
