"""The labelled splits a run works on, and how they are carved and subsampled.

Every random choice here is seeded so that a run is reproducible. The calibration split and the
evaluation subsets use fixed seeds on purpose: every training seed must calibrate and report on the
same examples, or seeds would differ by more than their training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from elastic_cli.errors import UserError

# Fixed seeds, independent of the run's seed (see the module docstring).
CALIBRATION_SEED = 1_000_003
EVAL_SUBSET_SEED = 1_000_033


@dataclass
class Split:
    name: str
    texts: list[tuple[str, ...]]  # one tuple per example, one entry per text column
    labels: np.ndarray  # int64 class ids, or float32 for regression

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Sequence[int] | np.ndarray, name: str | None = None) -> Split:
        """The examples at `rows`, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        return Split(
            name=self.name if name is None else name,
            texts=[self.texts[i] for i in rows],
            labels=self.labels[rows],
        )


@dataclass
class TaskData:
    train: Split
    calibration: Split
    evals: dict[str, Split]  # in task.eval_splits order


def calibration_size(n_train: int, fraction: float, max_samples: int | None) -> int:
    """min(round(fraction * N), max_samples), at least 1, leaving at least 1 example to train on."""
    if n_train < 2:
        raise UserError(
            f"the training split has {n_train} labelled example(s); at least 2 are needed "
            "(one is carved off for calibration): check the training file or task.train_split"
        )
    size = round(fraction * n_train)
    if max_samples is not None:
        size = min(size, max_samples)
    return int(min(max(size, 1), n_train - 1))


def carve_calibration(train: Split, fraction: float, max_samples: int | None) -> tuple[Split, Split]:
    """(train without the calibration examples, calibration), both in the original order.

    The seed is fixed so that every training seed calibrates on the same examples."""
    size = calibration_size(len(train), fraction, max_samples)
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(train))
    calibration_rows = np.sort(order[:size])
    train_rows = np.sort(order[size:])
    return train.select(train_rows), train.select(calibration_rows, name="calibration")


def random_subset(split: Split, max_samples: int | None, seed: int) -> Split:
    """A seeded random subset of at most `max_samples` examples, in the original order.

    Random rather than the first N: files are often sorted (by label, source or length)."""
    if max_samples is None or max_samples >= len(split):
        return split
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    rows = np.sort(np.random.default_rng(seed).choice(len(split), size=max_samples, replace=False))
    return split.select(rows)
