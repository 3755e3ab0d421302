"""Exit heads: pool the hidden states of one layer and classify."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExitHead(nn.Module):
    """[CLS] (or mean) pooling, a dense+tanh pooler, dropout and a linear classifier.

    The pooler starts from the backbone's pretrained pooler when there is one (DeeBERT copies the
    final pooler into every off-ramp the same way); otherwise it is freshly initialised.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        pooling: str = "cls",
        init_pooler: nn.Module | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        if init_pooler is not None:
            dense = getattr(init_pooler, "dense", None)
            if isinstance(dense, nn.Linear) and dense.weight.shape == self.dense.weight.shape:
                self.dense = copy.deepcopy(dense)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(self.pool(hidden, attention_mask)))
        return self.classifier(self.dropout(pooled))
