"""Training objectives over the per-exit losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def per_exit_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every exit, [E], from logits [B, E, C]."""
    b, e, c = logits.shape
    flat = F.cross_entropy(logits.reshape(b * e, c), labels.repeat_interleave(e), reduction="none")
    return flat.view(b, e).mean(dim=0)


def final_only(losses: torch.Tensor) -> torch.Tensor:
    return losses[-1]


def summed(losses: torch.Tensor) -> torch.Tensor:
    # the plain sum of exit losses (SWEET's MultiExitCrossEntropyLoss, ElasticBERT's fine-tuning loss)
    return losses.sum()


OBJECTIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"final_only": final_only, "sum": summed}
