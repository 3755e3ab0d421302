"""Training objectives: losses over the outputs of every exit.

Each objective maps (exit outputs, labels, step) to a scalar loss. Per-exit losses are cross-entropy,
or mean squared error for a regression task (one output). The learning-to-exit loss (BERxiT) is
added by the method on top of whichever objective it trains with (`lte_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from elastic_cli.registry import Registry
from elastic_cli.signals import ExitSignals


def per_exit_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of every exit, [E], from logits [B, E, C]: cross-entropy, or MSE when C = 1 (regression)."""
    b, e, c = logits.shape
    if c == 1:
        return ((logits.squeeze(-1) - labels.float().unsqueeze(1)) ** 2).mean(dim=0)
    flat = F.cross_entropy(logits.reshape(b * e, c), labels.repeat_interleave(e), reduction="none")
    return flat.view(b, e).mean(dim=0)


class Objective(nn.Module):
    """Base: subclasses implement `forward(out, labels, step)`; learnable objectives (ELBERT's exit
    weights) hold their parameters, which the trainer optimises in their own group at `lr`."""

    lr: float | None = None
    # forward also takes `rows`, the batch's row numbers in the training split (AdapLeR's saliency targets)
    reads_rows: bool = False

    def __init__(self, exit_layers: Sequence[int]) -> None:
        super().__init__()
        self.exit_layers = list(exit_layers)

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def logged(self, exit_layers: list[int]) -> dict[str, float]:
        """What this objective logs after each epoch, beside the exits' scores: none by default."""
        return {}

    def describe(self, step: int) -> str:
        """What the loss at `step` adds up, for the progress line's `loss (...)`: "" for a plain loss (one
        exit, or an objective that does not say)."""
        return ""

    # Hooks of the training loop (stages/train_loop.py); the defaults are plain fine-tuning.

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Model parameters this objective trains apart from the others (AdapLeR's eta and theta): optimizer
        groups with their own lr, no weight decay, a constant lr and no gradient clipping."""
        return []

    def start_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Before epoch `epoch` (0-indexed) of `epochs`."""

    def backward(self, loss: torch.Tensor) -> None:
        """The gradients of one step, from the loss `forward` returned."""
        loss.backward()

    def after_step(self, model: nn.Module) -> None:
        """After each optimizer step (AdapLeR clips eta)."""

    def rank(self, score: float, flops_speedup: float | None) -> tuple[float, ...]:
        """How an epoch's weights rank, from its calibration score and (for a length-reducing model) its
        FLOPs speed-up: the best-ranked epoch is kept. By default, the score."""
        return (score,)


class FinalOnly(Objective):
    """The static model's loss: the final exit only (also DeeBERT's and FastBERT's first stage)."""

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        return per_exit_losses(out.logits[:, -1:], labels)[0]

    def describe(self, step: int) -> str:
        return "final exit" if len(self.exit_layers) > 1 else ""


class Summed(Objective):
    """The plain sum of exit losses: SWEET (MultiExitCrossEntropyLoss), ElasticBERT, early_exit."""

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        return per_exit_losses(out.logits, labels).sum()

    def describe(self, step: int) -> str:
        return _over("sum", len(self.exit_layers))


class SummedIntermediate(Objective):
    """DeeBERT's second stage: the sum over every exit but the final one."""

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        return per_exit_losses(out.logits[:, :-1], labels).sum()

    def describe(self, step: int) -> str:
        return _over("sum", len(self.exit_layers) - 1)


class LayerWeighted(Objective):
    """PABEE: a weighted average, sum_j j * L_j / sum_j j, j the exit's layer number."""

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        j = torch.tensor(self.exit_layers, dtype=out.logits.dtype, device=out.logits.device)
        return (j * per_exit_losses(out.logits, labels)).sum() / j.sum()

    def describe(self, step: int) -> str:
        return _over("layer-weighted mean", len(self.exit_layers))


class SelfDistillation(Objective):
    """FastBERT's second stage: every exit but the last learns the last exit's distribution,
    sum_i KL(p_L || p_i); no labels needed. The teacher is not trained here (its head is frozen)."""

    def __init__(self, exit_layers: Sequence[int], temperature: float = 1.0) -> None:
        super().__init__(exit_layers)
        self.temperature = temperature

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        t = self.temperature
        if out.logits.shape[-1] == 1:  # regression: match the teacher's value
            return ((out.logits[:, :-1] - out.logits[:, -1:].detach()) ** 2).mean(dim=0).sum()
        teacher = F.softmax(out.logits[:, -1].detach() / t, dim=-1).unsqueeze(1)  # [B, 1, C]
        students = F.log_softmax(out.logits[:, :-1] / t, dim=-1)  # [B, E-1, C]
        kl = (teacher * (teacher.clamp_min(1e-12).log() - students)).sum(-1)  # [B, E-1]
        return kl.mean(dim=0).sum() * t * t

    def describe(self, step: int) -> str:
        over = _over("sum", len(self.exit_layers) - 1)
        return f"distillation, {over}" if over else "distillation"


class DynamicWeights(Objective):
    """ELBERT's `dyn` weights: w_i = sigmoid(W_i) for the intermediate exits, the last exit takes the
    rest, w_E = E - sum_i w_i, so the weights always sum to the number of exits. W is learned with the
    same loss (its own optimizer group at `w_lr`), which moves weight off exits whose loss exceeds the
    final one's. ELBERT initialises W at 4 (sigmoid(4) = 0.982)."""

    def __init__(self, exit_layers: Sequence[int], w_init: float = 4.0, w_lr: float = 1e-2) -> None:
        super().__init__(exit_layers)
        self.w = nn.Parameter(torch.full((len(self.exit_layers) - 1,), float(w_init)))
        self.lr = w_lr

    def weights(self) -> torch.Tensor:
        inner = torch.sigmoid(self.w)
        return torch.cat([inner, (len(self.exit_layers) - inner.sum()).unsqueeze(0)])

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        return (self.weights() * per_exit_losses(out.logits, labels)).sum()

    def describe(self, step: int) -> str:
        return _over("weighted sum", len(self.exit_layers))

    def logged(self, exit_layers: list[int]) -> dict[str, float]:
        """The exit weights w_i, one per exit layer."""
        weights = self.weights().detach().cpu().numpy()
        return {f"train/exit_weight_L{layer}": float(w) for layer, w in zip(exit_layers, weights)}


class Alternating(Objective):
    """BERxiT's `alternate` routine: even steps train the final exit only, odd steps all exits."""

    def forward(self, out: ExitSignals, labels: torch.Tensor, step: int) -> torch.Tensor:
        losses = per_exit_losses(out.logits, labels)
        return losses[-1] if step % 2 == 0 else losses.sum()

    def describe(self, step: int) -> str:
        return "final exit" if step % 2 == 0 else _over("sum", len(self.exit_layers))


def _over(how: str, exits: int) -> str:
    """`sum over 6 exits`; "" for one exit, where the loss is that exit's."""
    return f"{how} over {exits} exits" if exits > 1 else ""


def lte_loss(out: ExitSignals, labels: torch.Tensor) -> torch.Tensor:
    """BERxiT's learning-to-exit target: 1 - [exit e is right] for classification, tanh|z_e - y| for
    regression; MSE against the module's score u_e, summed over exits."""
    assert out.lte is not None
    with torch.no_grad():
        z = out.logits
        if z.shape[-1] == 1:
            target = torch.tanh((z.squeeze(-1) - labels.float().unsqueeze(1)).abs())
        else:
            target = 1.0 - (z.argmax(-1) == labels.unsqueeze(1)).to(z.dtype)
    return ((out.lte - target) ** 2).mean(dim=0).sum()


OBJECTIVES: Registry[Objective] = Registry("objective", "method.objective")
for _name, _objective in {
    "final_only": FinalOnly,
    "sum": Summed,
    "sum_intermediate": SummedIntermediate,
    "layer_weighted": LayerWeighted,
    "self_distil": SelfDistillation,
    "dyn_weights": DynamicWeights,
    "alternate": Alternating,
}.items():
    OBJECTIVES.register(_name)(_objective)
