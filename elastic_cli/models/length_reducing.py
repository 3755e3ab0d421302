"""The length-reducing model (AdapLeR, METHODS.md section 5): every layer runs, but tokens leave between
layers, so a long input gets shorter as it goes up.

Before layer l a contribution predictor CP_l (Dense(h -> 32), GELU, Dense(32 -> 1)) scores the tokens
still alive; the softmax over them, with [CLS]'s share multiplied by the learned theta and renormalised,
is the predicted importance s_l. A token whose importance is below delta_l = scale * eta_l / n_l
(n_l tokens alive, [CLS] included; eta_l learned in [0.01, 1]; scale 1 as trained) is dropped; [CLS]
never is.

Three ways to run the same rule:
- soft (training, `soft_forward`): no token leaves, but its alive-mask entry is multiplied by exp(edit),
  AdapLeR's edit pushing a token below delta towards 0 at a rate set by the sharpness lambda; the log of
  the mask is added to the attention scores of every later layer (a bias on that key).
- masked (the reference, `reduce(pack=False)`): hard decisions, a dropped token masked as an attention
  key in every later layer; its hidden state is still computed, but nothing reads it.
- packed (inference, `reduce(pack=True)`): hard decisions; the dropped tokens are removed
  (BackboneAdapter.drop_tokens) and the batch is re-packed to its longest survivor, so compute shrinks.
  Batch 1 removes them physically. Positions stay the original ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from elastic_cli import exits
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import FAMILIES, BackboneAdapter, EncoderState
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.multi_exit import MODEL_SHAPES, AdaptiveOutput, MultiExitModel
from elastic_cli.signals import ExitSignals

ETA_RANGE = (0.01, 1.0)  # AdapLeR clips eta to this after every step
MIN_THETA = 0.01  # theta (the [CLS] factor) is kept positive
MIN_EDIT = -1e4  # AdapLeR's floor on the soft edit: exp(-1e4) is 0 in float32


class ContributionPredictor(nn.Module):
    """CP_l: a score per token, Dense(hidden -> width), GELU, Dense(width -> 1)."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, width)
        self.out = nn.Linear(width, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)  # [B, T]


def log_importance(scores: torch.Tensor, log_alive: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log s [B, T]: softmax of the predictor's scores over the alive tokens (log_alive: the log of the
    alive mask, -inf where a token is gone or padding), [CLS]'s share times theta, renormalised."""
    log_p = torch.log_softmax(scores + log_alive, dim=-1)
    cls_factor = torch.cat([theta.log().view(1).to(log_p.dtype), log_p.new_zeros(log_p.shape[-1] - 1)])
    weighted = log_p + cls_factor
    return weighted - torch.logsumexp(weighted, dim=-1, keepdim=True)


def keep_decisions(importance: torch.Tensor, delta: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """The tokens kept before a layer [B, T]: alive and with importance >= delta [B]; [CLS] always."""
    keep = (importance >= delta[:, None]) & alive
    keep[:, 0] = alive[:, 0]
    return keep


def soft_edit(importance: torch.Tensor, delta: torch.Tensor, sharpness: float, beta: float) -> torch.Tensor:
    """AdapLeR's calc_soft_extractV2 [B, T]: the log-factor applied to each token's alive mask,
    min(0, (lambda/delta)(s - delta) - beta/lambda, (s - 1)(beta/lambda)/(1 - delta)), floored at -1e4;
    0 for [CLS]. Below delta it falls like -lambda (s - delta)/delta: a large lambda is a hard drop; at and
    above delta it is within beta/lambda of 0."""
    d = delta[:, None]
    lam = float(sharpness)
    below = (lam / d) * (importance - d) - beta / lam
    above = (importance - 1.0) * (beta / lam) / (1.0 - d).clamp_min(1e-6)
    edit = torch.minimum(torch.minimum(below, above), torch.zeros_like(below)).clamp_min(MIN_EDIT)
    return torch.cat([torch.zeros_like(edit[:, :1]), edit[:, 1:]], dim=1)


@dataclass
class SoftTrace(ExitSignals):
    """The soft forward's outputs: logits [B, 1, C] and, per layer l, what AdapLeR's losses read: the log
    of the predicted importance [L, B, T], the alive mask it was taken over [L, B, T], and the soft length
    entering layer l [B, L] (the sum of the alive mask after the edit before it)."""

    log_importance: torch.Tensor | None = None
    alive: torch.Tensor | None = None
    soft_lengths: torch.Tensor | None = None
    theta: torch.Tensor | None = None  # the [CLS] factor the importances were taken with


def _log_mask(alive: torch.Tensor) -> torch.Tensor:
    return torch.zeros(alive.shape, device=alive.device).masked_fill(~alive, float("-inf"))


@MODEL_SHAPES.register("length_reducing")
class LengthReducingModel(MultiExitModel):
    """A backbone, its classifier after the last layer, and a contribution predictor before every layer,
    with the learned eta (one per layer) and theta. `reducing` off runs it as the static model (AdapLeR's
    first stage, plain fine-tuning); on, `forward` is the soft path in training and the packed path at
    `scale` in evaluation (its ExitSignals carry the tokens entering each layer)."""

    beta: ClassVar[float] = 0.1  # AdapLeR's beta of the soft edit

    def __init__(
        self,
        backbone: BackboneAdapter,
        exit_layers: list[int],
        num_labels: int,
        head: HeadSpec | None = None,
        use_pretrained_pooler: bool = True,
        lte: bool = False,
        predictor_width: int = 32,
        eta_init: float = 0.25,
        **unused: Any,  # the multi-exit training switches (stop_gradient, ...): no meaning with one exit
    ) -> None:
        check_family(backbone)
        if list(exit_layers) != [backbone.num_layers] or lte:
            raise UserError(
                "a length-reducing model has one classifier after the last layer: set method.exit_layers=last "
                "and method.lte=false"
            )
        super().__init__(backbone, exit_layers, num_labels, head, use_pretrained_pooler)
        self.predictor_width = int(predictor_width)
        self.predictors = nn.ModuleList(
            ContributionPredictor(backbone.hidden_size, predictor_width) for _ in range(backbone.num_layers)
        )
        self.eta = nn.Parameter(torch.full((backbone.num_layers,), float(eta_init)))
        self.theta = nn.Parameter(torch.tensor(1.0))
        self.reducing = True
        self.scale = 1.0  # the eta multiplier of the packed path in evaluation
        self.sharpness = 10.0  # lambda of the soft path

    def shape_settings(self) -> dict[str, Any]:
        return {"predictor_width": self.predictor_width}

    def speed_parameters(self) -> list[nn.Parameter]:
        """What AdapLeR's speed loss trains: eta and theta."""
        return [self.eta, self.theta]

    @torch.no_grad()
    def clip_speed_parameters(self) -> None:
        self.eta.clamp_(*ETA_RANGE)
        self.theta.clamp_(min=MIN_THETA)

    # ------------------------------------------------------------ the three paths

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> ExitSignals:
        if not self.reducing:
            return super().forward(input_ids, attention_mask, token_type_ids)
        if self.training:
            return self.soft_forward(input_ids, attention_mask, token_type_ids)
        logits, layer_tokens = self.reduce(input_ids, attention_mask, token_type_ids, self.scale)
        return ExitSignals(logits.unsqueeze(1), layer_tokens=layer_tokens)

    def _importance(self, layer: int, state: EncoderState, log_alive: torch.Tensor) -> torch.Tensor:
        return log_importance(self.predictors[layer](state.hidden), log_alive, self.theta)

    def reduce(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        scale: float,
        pack: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard dropping at eta x `scale`: the logits [B, C] and the tokens entering each layer [B, L].
        `pack` removes the dropped tokens; otherwise they are masked as keys (the reference path)."""
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        alive = state.attention_mask.bool()
        counts = []
        for layer in range(self.backbone.num_layers):
            importance = self._importance(layer, state, _log_mask(alive)).exp()
            n = alive.sum(dim=1)
            keep = keep_decisions(importance, scale * self.eta[layer] / n, alive)
            if pack:
                if bool((keep != alive).any()):
                    state = self.backbone.drop_tokens(state, keep)
            else:
                extras = {**state.extras, "mask": self.backbone.attention_mask_4d(state.hidden, keep.long())}
                state = EncoderState(state.hidden, keep.long(), extras)
            alive = state.attention_mask.bool()
            counts.append(alive.sum(dim=1))
            state = self.backbone.layer(layer, state)
        logits = self.heads(0, state.hidden, state.attention_mask)[0]
        return logits, torch.stack(counts, dim=1)

    def soft_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> SoftTrace:
        """The training path at eta (scale 1) and sharpness `self.sharpness`."""
        state = self.backbone.embed(input_ids, attention_mask, token_type_ids)
        real = state.attention_mask.bool()
        log_alive = _log_mask(real)  # the log of the soft alive mask: 0 for a fresh token, -inf padding
        alive = real.to(state.hidden.dtype)
        logs, alives, lengths = [], [], []
        for layer in range(self.backbone.num_layers):
            log_s = self._importance(layer, state, log_alive)
            delta = self.eta[layer] / alive.sum(dim=1)
            edit = soft_edit(log_s.exp(), delta, self.sharpness, self.beta).masked_fill(~real, 0.0)
            logs.append(log_s)
            alives.append(alive)
            log_alive = log_alive + edit
            alive = alive * edit.exp()
            lengths.append(alive.sum(dim=1))
            mask = self.backbone.key_bias_mask(state.hidden, state.attention_mask, log_alive)
            extras = {**state.extras, "mask": mask}
            state = self.backbone.layer(layer, EncoderState(state.hidden, state.attention_mask, extras))
        logits = self.heads(0, state.hidden, alive)[0]
        return SoftTrace(
            logits.unsqueeze(1),
            log_importance=torch.stack(logs),
            alive=torch.stack(alives),
            soft_lengths=torch.stack(lengths, dim=1),
            theta=self.theta.detach(),
        )

    def adaptive(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        rule: exits.ExitRule,
        threshold: float,
        temperatures: torch.Tensor | None = None,
    ) -> AdaptiveOutput:
        """The packed path with eta scaled by `threshold` (the token_drop rule's threshold)."""
        logits, layer_tokens = self.reduce(input_ids, attention_mask, token_type_ids, threshold)
        exit_index = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return AdaptiveOutput(exit_index, logits, layer_tokens)


def supported_families() -> list[str]:
    return [name for name, adapter in FAMILIES.items() if adapter.supports_key_bias]


def check_family(backbone: BackboneAdapter) -> None:
    if not backbone.supports_key_bias:
        raise UserError(
            f"token dropping does not run on backbone.family={backbone.family} (its attention takes no "
            f"additive mask): use a backbone of the {', '.join(supported_families())} families"
        )
