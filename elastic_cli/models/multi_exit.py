"""The multi-exit model: a backbone adapter with exit heads at `exit_layers`.

Two execution paths share the same layers and heads:
- `forward`: every layer once, logits of every exit, [B, E, C] (training, the evaluation cache);
- `adaptive`: layer by layer, each example leaves the batch when its exit rule fires and the rest
  go on (compaction). Batch 1 is the latency path. It calls the exit rule of `elastic_cli.exits` on
  the logits seen so far, so it agrees with `exits.simulate` on cached logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from elastic_cli import exits
from elastic_cli.models.adapters import BackboneAdapter
from elastic_cli.models.heads import ExitHead


@dataclass
class AdaptiveOutput:
    exit_index: torch.Tensor  # [B] index into exit_layers
    logits: torch.Tensor  # [B, C] logits of the exit taken


class MultiExitModel(nn.Module):
    def __init__(
        self,
        backbone: BackboneAdapter,
        exit_layers: list[int],
        num_labels: int,
        pooling: str = "cls",
        use_pretrained_pooler: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not exit_layers or exit_layers[-1] != backbone.num_layers:
            raise ValueError("the last exit must be the backbone's last layer")
        self.backbone = backbone
        self.exit_layers = list(exit_layers)
        self.num_labels = num_labels
        pooler = backbone.pretrained_pooler() if use_pretrained_pooler else None
        self.heads = nn.ModuleList(
            ExitHead(backbone.hidden_size, num_labels, pooling, pooler, dropout) for _ in exit_layers
        )

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every exit, [B, E, C]."""
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        out = []
        layer = 0
        for head, exit_layer in zip(self.heads, self.exit_layers, strict=True):
            while layer < exit_layer:
                state = self.backbone.layer(layer, state)
                layer += 1
            out.append(head(state.hidden, state.attention_mask))
        return torch.stack(out, dim=1)

    def static_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The static model: every layer, then only the final head, [B, C]. The latency baseline."""
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        for layer in range(self.backbone.num_layers):
            state = self.backbone.layer(layer, state)
        return self.heads[-1](state.hidden, state.attention_mask)

    def adaptive(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        rule: exits.ExitRule,
        threshold: float,
        temperatures: torch.Tensor | None = None,
    ) -> AdaptiveOutput:
        """Early exit with per-example compaction: exited examples leave the batch."""
        batch = input_ids.shape[0]
        out_logits = torch.empty(batch, self.num_labels, device=input_ids.device)
        out_exit = torch.full((batch,), -1, dtype=torch.long, device=input_ids.device)
        rows = torch.arange(batch, device=input_ids.device)  # original row of every active example
        seen: torch.Tensor | None = None  # [active, exits so far, C]
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        layer = 0
        last = self.num_exits - 1
        for e, (head, exit_layer) in enumerate(zip(self.heads, self.exit_layers, strict=True)):
            while layer < exit_layer:
                state = self.backbone.layer(layer, state)
                layer += 1
            z = head(state.hidden, state.attention_mask)
            seen = z.unsqueeze(1) if seen is None else torch.cat([seen, z.unsqueeze(1)], dim=1)
            if e == last:
                exit_now = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
            else:
                temps = None if temperatures is None else temperatures[: e + 1]
                exit_now = exits.decisions(rule, seen, threshold, temps)[:, -1]
            out_logits[rows[exit_now]] = z[exit_now].to(out_logits.dtype)
            out_exit[rows[exit_now]] = e
            keep = (~exit_now).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            if keep.numel() < rows.numel():
                state = self.backbone.select(state, keep)
                rows, seen = rows[keep], seen[keep]
        return AdaptiveOutput(exit_index=out_exit, logits=out_logits)
