"""What the exits of a batch produced: the one value that exit rules decide on, objectives train on,
and models (multi-exit or cascade) return."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class ExitSignals:
    """What the exits of a batch produced."""

    logits: torch.Tensor  # [N, E, C]; C = 1 for regression
    lte: torch.Tensor | None = None  # [N, E] learned-to-exit score (BERxiT): predicted need to continue
    # [N, L] tokens entering each layer, for a model that drops tokens between layers (AdapLeR)
    layer_tokens: torch.Tensor | None = None

    @property
    def num_exits(self) -> int:
        return int(self.logits.shape[1])

    def rows(self, index: torch.Tensor) -> ExitSignals:
        return ExitSignals(
            self.logits[index],
            None if self.lte is None else self.lte[index],
            None if self.layer_tokens is None else self.layer_tokens[index],
        )

    def upto(self, k: int) -> ExitSignals:
        """The first k exits."""
        return ExitSignals(self.logits[:, :k], None if self.lte is None else self.lte[:, :k])

    def latest(self, k: int) -> ExitSignals:
        """The last k exits."""
        return ExitSignals(self.logits[:, -k:], None if self.lte is None else self.lte[:, -k:])

    def scaled(self, temperatures: torch.Tensor | None) -> ExitSignals:
        """Per-exit temperature scaling of the logits, z_e / T_e (`temperatures` has one entry per exit)."""
        if temperatures is None or self.logits.shape[-1] == 1:  # regression outputs are not probabilities
            return self
        t = temperatures[: self.num_exits].to(self.logits.dtype).to(self.logits.device)
        return replace(self, logits=self.logits / t.view(1, -1, 1))

    def append(self, logits: torch.Tensor, lte: torch.Tensor | None) -> ExitSignals:
        """Add one exit's outputs ([N, C] and [N]) after the last."""
        new_lte = None
        if lte is not None:
            new_lte = lte.unsqueeze(1) if self.lte is None else torch.cat([self.lte, lte.unsqueeze(1)], 1)
        return ExitSignals(torch.cat([self.logits, logits.unsqueeze(1)], 1), new_lte)

    @staticmethod
    def first(logits: torch.Tensor, lte: torch.Tensor | None) -> ExitSignals:
        return ExitSignals(logits.unsqueeze(1), None if lte is None else lte.unsqueeze(1))

    def float(self) -> ExitSignals:
        lte = None if self.lte is None else self.lte.float()
        return ExitSignals(self.logits.float(), lte, self.layer_tokens)
