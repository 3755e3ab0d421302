"""A cascade: separately trained single-exit models run smallest first, each example stopping at the
first model whose exit rule fires (E-LANG's swift/super pair, SWEET's multi-model baseline, or more).

Each member is a `MultiExitModel` with one exit at its last layer and its own tokenizer, so members may
have different vocabularies: every member reads the example tokenised for itself (a `Batch` per member,
same rows). The members' logits form the same `ExitSignals` [N, members, C] as the exits of one model,
so exit rules, calibration and the threshold curve are shared with early exit; `adaptive` calls the
rule on the outputs seen so far, like `MultiExitModel.adaptive`, and agrees with `exits.simulate`.
Nothing is reused between members: an example stopping at member j pays members 0..j in full
(`cost.ExitCosts.cascade`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elastic_cli import exits
from elastic_cli.data import Batch
from elastic_cli.models.multi_exit import AdaptiveOutput, MultiExitModel


@dataclass
class Member:
    name: str  # how its exit is labelled: "swift", "super", "L4"
    model: MultiExitModel  # one exit, at its last layer
    tokenizer: Any
    max_seq_length: int
    folder: Path  # its checkpoint folder (where its logits are cached)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def take_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """Rows of a padded batch, with the columns that are padding in every kept row cut."""
    mask = batch.attention_mask.index_select(0, rows)
    length = max(1, int(mask.sum(dim=1).max())) if mask.numel() else 1
    return Batch(
        input_ids=batch.input_ids.index_select(0, rows)[:, :length],
        attention_mask=mask[:, :length],
        token_type_ids=None
        if batch.token_type_ids is None
        else batch.token_type_ids.index_select(0, rows)[:, :length],
        labels=batch.labels.index_select(0, rows),
        index=batch.index.index_select(0, rows),
    )


class Cascade:
    def __init__(self, members: Sequence[Member]) -> None:
        if not members:
            raise ValueError("a cascade needs at least one model")
        labels = {m.model.num_labels for m in members}
        if len(labels) != 1:
            raise ValueError(f"the cascade's models disagree on the number of labels: {sorted(labels)}")
        if any(m.model.num_exits != 1 for m in members):
            raise ValueError("every model of a cascade has a single exit")
        self.members = list(members)
        self.num_labels = labels.pop()

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def num_exits(self) -> int:
        return len(self.members)

    def eval(self) -> Cascade:
        for m in self.members:
            m.model.eval()
        return self

    def static(self, batches: Sequence[Batch]) -> torch.Tensor:
        """The last (super) model alone, [B, C]: the reference the cascade is measured against."""
        b = batches[-1]
        return self.members[-1].model.static_forward(b.input_ids, b.attention_mask, b.token_type_ids)

    def adaptive(
        self,
        batches: Sequence[Batch],
        rule: exits.ExitRule,
        threshold: float,
        temperatures: torch.Tensor | None = None,
    ) -> AdaptiveOutput:
        """Run the models in turn on the examples still undecided: batches[j] is the batch as model j
        tokenises it (same rows in the same order)."""
        if len(batches) != len(self.members):
            raise ValueError(f"{len(batches)} batches for {len(self.members)} models")
        first = batches[0].input_ids
        size = first.shape[0]
        out = AdaptiveOutput.empty(size, self.num_labels, first.device)
        rows = torch.arange(size, device=first.device)  # batch rows still undecided
        window = exits.DecisionWindow(rule, threshold, temperatures)
        last = len(self.members) - 1
        for j, (member, batch) in enumerate(zip(self.members, batches, strict=True)):
            b = batch if rows.numel() == size else take_rows(batch, rows)
            z = member.model.static_forward(b.input_ids, b.attention_mask, b.token_type_ids)
            keep = out.settle(rows, j, z, None if j == last else window.decide(z, None))
            if keep is None:
                continue
            if keep.numel() == 0:
                break
            rows = rows[keep]
            window.keep(keep)
        return out
