"""Exit heads: read the hidden states at an exit layer and classify.

Four kinds (`method.head`), as the reference methods build them:
- `pooler`: per exit, its own dense+tanh pooler and linear classifier (DeeBERT's off-ramps, ElasticBERT,
  BERxiT);
- `shared_pooler`: one pooler shared by every exit, a linear classifier per exit (SWEET, PABEE);
- `shared`: one pooler and one classifier for every exit (ELBERT: no parameters added per exit);
- `fastbert`: per exit, FastBERT's student classifier: Linear(h -> 128) + tanh, 2-head self-attention
  at width 128, [CLS], Linear(128 -> 128) + tanh, Linear(-> C).
Every head returns (logits [B, C], pooled [B, D]); the pooled vector feeds BERxiT's learning-to-exit
module when there is one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

HEAD_KINDS = ("pooler", "shared_pooler", "shared", "fastbert")


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
    """The heads of all exits; `forward(e, ...)` runs exit e's head."""

    def __init__(
        self, spec: HeadSpec, num_exits: int, hidden_size: int, num_labels: int, init_pooler: nn.Module | None
    ) -> None:
        super().__init__()
        if spec.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {spec.kind!r}")
        self.spec = spec
        self.num_exits = num_exits
        self.dropout = nn.Dropout(spec.dropout)
        if spec.kind == "fastbert":
            self.fastbert = nn.ModuleList(
                FastBertHead(hidden_size, num_labels, spec.width, spec.attention_heads, spec.dropout)
                for _ in range(num_exits)
            )
            self.pooled_size = spec.width
            return
        n_poolers = num_exits if spec.kind == "pooler" else 1
        n_classifiers = 1 if spec.kind == "shared" else num_exits
        self.poolers = nn.ModuleList(Pooler(hidden_size, spec.pooling, init_pooler) for _ in range(n_poolers))
        self.classifiers = nn.ModuleList(_classifier(hidden_size, num_labels) for _ in range(n_classifiers))
        self.pooled_size = hidden_size

    def forward(
        self, e: int, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.kind == "fastbert":
            out: tuple[torch.Tensor, torch.Tensor] = self.fastbert[e](hidden, attention_mask)
            return out
        pooled = self.poolers[e if len(self.poolers) > 1 else 0](hidden, attention_mask)
        logits = self.classifiers[e if len(self.classifiers) > 1 else 0](self.dropout(pooled))
        return logits, pooled

    def own_parameters(self, e: int) -> list[nn.Parameter]:
        """Parameters that belong to exit e alone (shared ones belong to no single exit)."""
        if self.spec.kind == "fastbert":
            return list(self.fastbert[e].parameters())
        own: list[nn.Parameter] = []
        if len(self.poolers) > 1:
            own += list(self.poolers[e].parameters())
        if len(self.classifiers) > 1:
            own += list(self.classifiers[e].parameters())
        return own
