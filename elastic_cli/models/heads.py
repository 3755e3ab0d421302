"""Exit heads: read the hidden states at an exit layer and classify.

Four kinds (`method.head`), as the reference methods build them:
- `pooler`: per exit, its own dense+tanh pooler and linear classifier (DeeBERT's off-ramps, ElasticBERT,
  BERxiT);
- `shared_pooler`: one pooler shared by every exit, a linear classifier per exit (SWEET, PABEE);
- `shared`: one pooler and one classifier for every exit (ELBERT: no parameters added per exit);
- `fastbert`: per exit, FastBERT's student classifier: Linear(h -> 128) + tanh, 2-head self-attention
  at width 128, [CLS], Linear(128 -> 128) + tanh, Linear(-> C).
Every head returns (logits [B, C], pooled [B, D]); the pooled vector feeds BERxiT's learning-to-exit
module when there is one. Each kind is one `ExitHeads` subclass registered in `HEADS` under its name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from elastic_cli.cost import ATTN_SCORE_OPS, HeadCost, classifier_flops, pooler_flops
from elastic_cli.registry import Registry


@dataclass(frozen=True)
class HeadSpec:
    kind: str = "pooler"
    pooling: str = "cls"  # cls | mean (pooler kinds; the fastbert head attends over all tokens itself)
    width: int = 128  # fastbert head width
    attention_heads: int = 2  # fastbert head attention heads
    dropout: float = 0.1


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return hidden[:, 0]


class Pooler(nn.Module):
    """Dense + tanh over the pooled state; starts from the backbone's pretrained pooler if given
    (DeeBERT copies the final pooler into every off-ramp the same way)."""

    def __init__(self, hidden_size: int, pooling: str, init: nn.Module | None = None) -> None:
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        dense = getattr(init, "dense", None) if init is not None else None
        if isinstance(dense, nn.Linear) and dense.weight.shape == self.dense.weight.shape:
            self.dense = copy.deepcopy(dense)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(pool(hidden, attention_mask, self.pooling)))


def _classifier(width: int, num_labels: int) -> nn.Linear:
    layer = nn.Linear(width, num_labels)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class FastBertHead(nn.Module):
    def __init__(
        self, hidden_size: int, num_labels: int, width: int, attention_heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, width)
        self.attention = nn.MultiheadAttention(width, attention_heads, dropout=dropout, batch_first=True)
        self.dense = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = _classifier(width, num_labels)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tanh(self.down(hidden))
        # only the [CLS] row of the self-attention output is read, so only its query is computed
        attended, _ = self.attention(
            x[:, :1], x, x, key_padding_mask=~attention_mask.bool(), need_weights=False
        )
        pooled = torch.tanh(self.dense(attended[:, 0]))
        return self.classifier(self.dropout(pooled)), pooled


class ExitHeads(nn.Module):
    """The heads of all exits, of one kind: each kind is a subclass registered in `HEADS` under its
    `method.head` name (build one with `build_heads`); `forward(e, ...)` runs exit e's head.

    A kind owns its modules (their attribute names are the checkpoints' keys: `heads.poolers.N...`,
    `heads.classifiers.N...`, `heads.fastbert.N...`), what belongs to one exit alone, the width of the
    pooled vector, its FLOPs per example (elastic_cli/cost.py's convention), how a single-exit
    checkpoint's head maps onto the last exit (`train.init_from`) and what a spec of it must hold.
    """

    name: ClassVar[str]  # set by HEADS.register
    # the HeadSpec fields a `train.init_from` checkpoint's head must share with this model's
    init_fields: ClassVar[tuple[str, ...]] = ("kind", "pooling")

    def __init__(
        self,
        spec: HeadSpec,
        num_exits: int,
        hidden_size: int,
        num_labels: int,
        init_pooler: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_exits = num_exits
        self.dropout = nn.Dropout(spec.dropout)
        self.pooled_size = self.pooled_width(spec, hidden_size)

    @classmethod
    def pooled_width(cls, spec: HeadSpec, hidden_size: int) -> int:
        """The size of the pooled vector a head of `spec` returns beside its logits."""
        return hidden_size

    @classmethod
    def spec_problem(cls, spec: HeadSpec) -> str | None:
        """What keeps `spec` (read from meta.json) from describing a head of this kind, or None."""
        return None

    @classmethod
    def cost(cls, spec: HeadSpec, hidden: int, num_labels: int) -> HeadCost:
        """What one exit head of `spec` costs (cost.py's convention), without the LTE module."""
        raise NotImplementedError

    def forward(
        self, e: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exit e's head: (logits [B, C], pooled [B, pooled_size])."""
        raise NotImplementedError

    def own_parameters(self, e: int) -> list[nn.Parameter]:
        """Parameters that belong to exit e alone (shared ones belong to no single exit)."""
        raise NotImplementedError

    def static_key(self, key: str) -> str:
        """This model's name (under `heads.`) for `key`, a head parameter (under `heads.`) of a
        single-exit checkpoint of the same kind: a module every exit has its own of goes to the last
        exit, a shared one stays shared."""
        module, index, rest = key.split(".", 2)
        per_exit = len(getattr(self, module)) > 1
        return f"{module}.{self.num_exits - 1 if per_exit else int(index)}.{rest}"


HEADS: Registry[ExitHeads] = Registry("head kind", "method.head", group="head")


def build_heads(
    spec: HeadSpec, num_exits: int, hidden_size: int, num_labels: int, init_pooler: nn.Module | None = None
) -> ExitHeads:
    """The heads of kind `spec.kind` for `num_exits` exits (a UserError naming the kinds for another)."""
    return HEADS.get(spec.kind)(spec, num_exits, hidden_size, num_labels, init_pooler)


class _PoolerClassifierHeads(ExitHeads):
    """Pooler (dense + tanh over the [CLS] or mean state) then dropout and a linear classifier; each
    one per exit or one shared by every exit."""

    pooler_per_exit: ClassVar[bool]
    classifier_per_exit: ClassVar[bool]

    def __init__(
        self,
        spec: HeadSpec,
        num_exits: int,
        hidden_size: int,
        num_labels: int,
        init_pooler: nn.Module | None = None,
    ) -> None:
        super().__init__(spec, num_exits, hidden_size, num_labels, init_pooler)
        n_poolers = num_exits if self.pooler_per_exit else 1
        n_classifiers = num_exits if self.classifier_per_exit else 1
        self.poolers = nn.ModuleList(Pooler(hidden_size, spec.pooling, init_pooler) for _ in range(n_poolers))
        self.classifiers = nn.ModuleList(_classifier(hidden_size, num_labels) for _ in range(n_classifiers))

    @classmethod
    def cost(cls, spec: HeadSpec, hidden: int, num_labels: int) -> HeadCost:
        return HeadCost(pooler_flops(hidden) + classifier_flops(hidden, num_labels), 0.0, hidden)

    def forward(
        self, e: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.poolers[e if len(self.poolers) > 1 else 0](hidden, attention_mask)
        logits = self.classifiers[e if len(self.classifiers) > 1 else 0](self.dropout(pooled))
        return logits, pooled

    def own_parameters(self, e: int) -> list[nn.Parameter]:
        own: list[nn.Parameter] = []
        if len(self.poolers) > 1:
            own += list(self.poolers[e].parameters())
        if len(self.classifiers) > 1:
            own += list(self.classifiers[e].parameters())
        return own


@HEADS.register("pooler")
class PoolerHeads(_PoolerClassifierHeads):
    """Per exit, its own pooler and classifier (DeeBERT's off-ramps, ElasticBERT, BERxiT)."""

    pooler_per_exit = True
    classifier_per_exit = True


@HEADS.register("shared_pooler")
class SharedPoolerHeads(_PoolerClassifierHeads):
    """One pooler shared by every exit, a classifier per exit (SWEET, PABEE)."""

    pooler_per_exit = False
    classifier_per_exit = True


@HEADS.register("shared")
class SharedHeads(_PoolerClassifierHeads):
    """One pooler and one classifier for every exit (ELBERT: no parameters added per exit)."""

    pooler_per_exit = False
    classifier_per_exit = False


@HEADS.register("fastbert")
class FastBertHeads(ExitHeads):
    """Per exit, FastBERT's student classifier (`FastBertHead`) of `spec.width` and
    `spec.attention_heads`."""

    init_fields = ("kind", "pooling", "width", "attention_heads")

    def __init__(
        self,
        spec: HeadSpec,
        num_exits: int,
        hidden_size: int,
        num_labels: int,
        init_pooler: nn.Module | None = None,
    ) -> None:
        super().__init__(spec, num_exits, hidden_size, num_labels, init_pooler)
        self.fastbert = nn.ModuleList(
            FastBertHead(hidden_size, num_labels, spec.width, spec.attention_heads, spec.dropout)
            for _ in range(num_exits)
        )

    @classmethod
    def pooled_width(cls, spec: HeadSpec, hidden_size: int) -> int:
        return spec.width

    @classmethod
    def spec_problem(cls, spec: HeadSpec) -> str | None:
        heads = spec.attention_heads
        if spec.width < 1 or heads < 1 or spec.width % heads:
            return f"a fastbert head of width {spec.width} cannot have {heads} attention heads"
        return None

    @classmethod
    def cost(cls, spec: HeadSpec, hidden: int, num_labels: int) -> HeadCost:
        h, c, w = hidden, num_labels, spec.width
        per_token = 2.0 * h * w + 2.0 * w + 4.0 * w * w + 4.0 * w + ATTN_SCORE_OPS * spec.attention_heads
        fixed = 4.0 * w * w + 2.0 * w * w + 2.0 * w + classifier_flops(w, c)
        return HeadCost(fixed, per_token, w)

    def forward(
        self, e: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out: tuple[torch.Tensor, torch.Tensor] = self.fastbert[e](hidden, attention_mask)
        return out

    def own_parameters(self, e: int) -> list[nn.Parameter]:
        return list(self.fastbert[e].parameters())
