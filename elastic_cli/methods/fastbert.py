"""FastBERT (Liu et al., ACL 2020).

Two stages: (1) fine-tune the backbone and the teacher (final) classifier with cross-entropy;
(2) self-distillation: the student classifiers of the other layers learn the teacher's
distribution, sum_i KL(p_L || p_i), with the backbone frozen, no labels and a 10x higher lr.
Each classifier is FastBERT's small student head (`method.head=fastbert`). Exit rule: normalised
entropy below `speed`.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from elastic_cli.config import POSITIVE, BackboneConfig, Bound, MethodConfig, at_least
from elastic_cli.methods.base import METHODS, Method
from elastic_cli.models.heads import HeadSpec


@dataclass
class FastbertConfig(MethodConfig):
    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("head_hidden", at_least(1), "the width of FastBERT's student classifier"),
        ("head_attention_heads", at_least(1), "the attention heads of FastBERT's student classifier"),
        ("distil_temperature", POSITIVE, "FastBERT's distillation temperature"),
    )

    head_hidden: int = 128  # FastBERT's student classifier width
    head_attention_heads: int = 2
    distil_temperature: float = 1.0


@METHODS.register("fastbert", schema=FastbertConfig)
class FastBert(Method[FastbertConfig]):
    def objective_options(self, objective: str) -> dict[str, Any]:
        if objective == "self_distil":
            return {"temperature": self.cfg.distil_temperature}
        return {}

    def head_spec(self, backbone: BackboneConfig) -> HeadSpec:
        return HeadSpec(
            kind=self.cfg.head,
            pooling=backbone.pooling,
            width=self.cfg.head_hidden,
            attention_heads=self.cfg.head_attention_heads,
            dropout=self.cfg.head_dropout,
        )
