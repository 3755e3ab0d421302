"""FastBERT (Liu et al., ACL 2020).

Two stages: (1) fine-tune the backbone and the teacher (final) classifier with cross-entropy;
(2) self-distillation: the student classifiers of the other layers learn the teacher's
distribution, sum_i KL(p_L || p_i), with the backbone frozen, no labels and a 10x higher lr.
Each classifier is FastBERT's small student head (`method.head=fastbert`). Exit rule: normalised
entropy below `speed`.
"""

from typing import Any

from elastic_cli.config import BackboneConfig, FastbertMethodConfig
from elastic_cli.methods.base import Method, register
from elastic_cli.models.heads import HeadSpec


@register
class FastBert(Method):
    name = "fastbert"

    def objective_options(self, objective: str) -> dict[str, Any]:
        cfg = self.cfg
        if objective == "self_distil" and isinstance(cfg, FastbertMethodConfig):
            return {"temperature": cfg.distil_temperature}
        return {}

    def head_spec(self, backbone: BackboneConfig) -> HeadSpec:
        cfg = self.cfg
        if isinstance(cfg, FastbertMethodConfig):
            return HeadSpec(
                kind=cfg.head,
                pooling=backbone.pooling,
                width=cfg.head_hidden,
                attention_heads=cfg.head_attention_heads,
                dropout=cfg.head_dropout,
            )
        return super().head_spec(backbone)
