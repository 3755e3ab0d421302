"""The multi-exit model: a backbone adapter with exit heads at `exit_layers`.

Two execution paths share the same layers and heads:
- `forward`: every layer once, the outputs of every exit (`ExitSignals`: logits [B, E, C] and the
  learned-to-exit scores when the model has that module). Training and the evaluation cache use it.
- `adaptive`: layer by layer, each example leaves the batch when its exit rule fires and the rest
  go on (compaction). Batch 1 is the latency path. It calls the exit rule of `elastic_cli.exits` on
  the outputs seen so far (the latest the rule reads: `exits.DecisionWindow`), so it agrees with
  `exits.simulate` on cached outputs.

Training-time variants of the forward pass (no effect on the values it computes):
- `stop_gradient` (SWEET): the hidden state handed on after an exit is detached, so exit k's loss
  updates only the layers since exit k-1 (and its head).
- `gradient_equilibrium` (ElasticBERT, after Li et al. 2019): at exit e of E, the gradient reaching
  the hidden state is the average, not the sum, of what the E - e exits that read it send back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from elastic_cli import exits
from elastic_cli.models.adapters import BackboneAdapter
from elastic_cli.models.heads import HeadSpec, build_heads
from elastic_cli.registry import Registry


class _GradientRescale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `weight` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.weight, None


def rescale_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    return _GradientRescale.apply(x, weight)


@dataclass
class AdaptiveOutput:
    exit_index: torch.Tensor  # [B] index into exit_layers
    logits: torch.Tensor  # [B, C] logits of the exit taken
    layer_tokens: torch.Tensor | None = None  # [B, L] tokens entering each layer (a length-reducing model)

    @classmethod
    def empty(cls, batch: int, num_labels: int, device: torch.device) -> AdaptiveOutput:
        return cls(
            exit_index=torch.full((batch,), -1, dtype=torch.long, device=device),
            logits=torch.empty(batch, num_labels, device=device),
        )

    def settle(
        self, rows: torch.Tensor, exit_index: int, z: torch.Tensor, exit_now: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Record the active examples (batch rows `rows`, outputs `z` at exit `exit_index`) that leave
        here: those where `exit_now` [N] is true, or all of them when it is None (the last exit). Return
        the positions among the active ones that go on, or None when all do (nothing to compact). The
        common cases, none or all leaving (always, at batch 1), cost no indexing."""
        leaving = z.shape[0] if exit_now is None else int(exit_now.sum())
        if leaving == 0:
            return None
        if leaving == z.shape[0]:
            self.logits[rows] = z.to(self.logits.dtype)
            self.exit_index[rows] = exit_index
            return rows.new_empty(0)
        assert exit_now is not None
        self.logits[rows[exit_now]] = z[exit_now].to(self.logits.dtype)
        self.exit_index[rows[exit_now]] = exit_index
        return (~exit_now).nonzero().squeeze(1)


# the model shapes a checkpoint can hold (meta.json's `shape`): this one, and the length-reducing model
# (models/length_reducing.py); a method declares the one it trains (Method.model_shape)
MODEL_SHAPES: Registry[MultiExitModel] = Registry("model shape", "shape")


@MODEL_SHAPES.register("multi_exit")
class MultiExitModel(nn.Module):
    name: ClassVar[str] = ""  # its shape, set by MODEL_SHAPES.register
    predictor_width: int = 0  # width of a token-importance predictor before every layer (none here)

    def __init__(
        self,
        backbone: BackboneAdapter,
        exit_layers: list[int],
        num_labels: int,
        head: HeadSpec | None = None,
        use_pretrained_pooler: bool = True,
        lte: bool = False,
        stop_gradient: bool = False,
        gradient_equilibrium: bool = False,
    ) -> None:
        super().__init__()
        if not exit_layers or exit_layers[-1] != backbone.num_layers:
            raise ValueError("the last exit must be the backbone's last layer")
        self.backbone = backbone
        self.exit_layers = list(exit_layers)
        self.num_labels = num_labels
        self.head_spec = head or HeadSpec()
        pooler = backbone.pretrained_pooler() if use_pretrained_pooler else None
        self.heads = build_heads(self.head_spec, len(exit_layers), backbone.hidden_size, num_labels, pooler)
        # BERxiT: one module for all exits, Linear(pooled -> 1) + sigmoid: the predicted need to continue
        self.lte = nn.Linear(self.heads.pooled_size, 1) if lte else None
        self.stop_gradient = stop_gradient
        self.gradient_equilibrium = gradient_equilibrium

    def shape_settings(self) -> dict[str, object]:
        """Constructor settings beyond the exits and head that rebuild this model from its checkpoint."""
        return {}

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def _exit(
        self, e: int, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, pooled = self.heads(e, hidden, mask)
        # the LTE module learns from its own MSE only: it reads the pooled state without moving it
        lte = None if self.lte is None else torch.sigmoid(self.lte(pooled.detach())).squeeze(-1)
        return logits, lte

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> exits.ExitSignals:
        """Outputs of every exit: logits [B, E, C] (and LTE scores [B, E])."""
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        logits, ltes = [], []
        layer = 0
        last = self.num_exits - 1
        for e, exit_layer in enumerate(self.exit_layers):
            while layer < exit_layer:
                state = self.backbone.layer(layer, state)
                layer += 1
            hidden = state.hidden
            if self.gradient_equilibrium:
                hidden = rescale_gradient(hidden, 1.0 / (self.num_exits - e))
            z, u = self._exit(e, hidden, state.attention_mask)
            logits.append(z)
            if u is not None:
                ltes.append(u)
            if e < last:
                onward = hidden
                if self.gradient_equilibrium:
                    onward = rescale_gradient(onward, float(self.num_exits - e - 1))
                if self.stop_gradient:
                    onward = onward.detach()
                state.hidden = onward
        return exits.ExitSignals(torch.stack(logits, dim=1), torch.stack(ltes, dim=1) if ltes else None)

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
        return self.heads(self.num_exits - 1, state.hidden, state.attention_mask)[0]

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
        out = AdaptiveOutput.empty(batch, self.num_labels, input_ids.device)
        rows = torch.arange(batch, device=input_ids.device)  # original row of every active example
        window = exits.DecisionWindow(rule, threshold, temperatures)
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        layer = 0
        last = self.num_exits - 1
        for e, exit_layer in enumerate(self.exit_layers):
            while layer < exit_layer:
                state = self.backbone.layer(layer, state)
                layer += 1
            z, u = self._exit(e, state.hidden, state.attention_mask)
            keep = out.settle(rows, e, z, None if e == last else window.decide(z, u))
            if keep is None:
                continue
            if keep.numel() == 0:
                break
            state = self.backbone.select(state, keep)
            rows = rows[keep]
            window.keep(keep)
        return out
