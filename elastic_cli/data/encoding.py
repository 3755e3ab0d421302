"""Tokenisation of a split (once, unpadded) and batching with padding to each batch's longest row.

Padding per batch rather than to max_seq_length matters for early exit: the cost of a batch, and of
batch-1 latency, should follow the real lengths of its examples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from elastic_cli.data.splits import Split

_TOKENIZE_CHUNK = 1024  # examples tokenised per call


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None  # only for text pairs, when the tokenizer makes them
    labels: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example, special tokens included."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(split: Split, tokenizer: Any, max_length: int) -> Encoded:
    """One batched call of a Hugging Face (fast) tokenizer: truncated to max_length, not padded."""
    if len(split) == 0:
        return Encoded(input_ids=[], token_type_ids=None, labels=split.labels)
    columns = list(zip(*split.texts, strict=True))
    if len(columns) > 2:
        raise ValueError(f"a split holds 1 or 2 texts per example, this one holds {len(columns)}")
    is_pair = len(columns) == 2
    wants_types = is_pair and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    # in chunks: a fast tokenizer's batch output holds its Rust-side encodings (tokens, offsets, ...),
    # about 6 KB an example, until the call returns; only the ids are kept
    for start in range(0, len(split), _TOKENIZE_CHUNK):
        end = start + _TOKENIZE_CHUNK
        tokenized = tokenizer(
            list(columns[0][start:end]),
            list(columns[1][start:end]) if is_pair else None,
            truncation="longest_first",  # a pair loses tokens from its longer text first
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=wants_types,
        )
        input_ids += tokenized["input_ids"]
        if wants_types:
            token_type_ids += tokenized["token_type_ids"]
    return Encoded(
        input_ids=input_ids,
        token_type_ids=token_type_ids if wants_types else None,
        labels=split.labels,
    )


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor
    index: torch.Tensor  # row numbers in the split
    # this batch's weight in the averaging of gradients over processes (distributed training): its rows times
    # the number of processes over the rows of the global batch it is a part of; 1 for a whole batch
    share: float = 1.0

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids.to(device),
            labels=self.labels.to(device),
            index=self.index.to(device),
            share=self.share,
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def batches(
    enc: Encoded,
    batch_size: int,
    *,
    pad_id: int,
    shuffle: bool = False,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[Batch]:
    """Batches of `enc`'s rows (all of them, or `indices` in that order), each padded to its longest row.

    With `shuffle`, the row order is a permutation drawn from a torch.Generator seeded by `seed`. With
    `shard` = (rank, processes), each batch of `batch_size` rows is split across the processes and this
    yields process `rank`'s part (see `shard_rows`): together they walk the batches one process walks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = torch.arange(len(enc)) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        order = order[torch.randperm(len(order), generator=generator)]
    labels = torch.from_numpy(np.ascontiguousarray(enc.labels))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        share = 1.0
        if shard is not None:
            rows, share = shard_rows(rows, *shard)
        row_list = rows.tolist()
        input_ids, attention_mask = _pad([enc.input_ids[i] for i in row_list], pad_id)
        token_type_ids = None
        if enc.token_type_ids is not None:
            token_type_ids, _ = _pad([enc.token_type_ids[i] for i in row_list], 0)
        yield Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            labels=labels[rows],
            index=rows.clone(),
            share=share,
        )


def shard_rows(rows: torch.Tensor, rank: int, processes: int) -> tuple[torch.Tensor, float]:
    """Process `rank`'s part of a batch's rows (contiguous parts whose sizes differ by one at most) and its
    share, n_rank * processes / n. A process left without a row (a last batch smaller than the number of
    processes) takes the batch's first row at share 0: every process must join each step's averaging."""
    part = torch.tensor_split(rows, processes)[rank]
    if len(part) == 0:
        return rows[:1], 0.0
    return part, len(part) * processes / len(rows)


def _pad(rows: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, longest] values padded on the right with pad_value, and the 0/1 mask of real tokens."""
    longest = max(len(row) for row in rows)
    values = np.full((len(rows), longest), pad_value, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        values[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(values), torch.from_numpy(mask)
