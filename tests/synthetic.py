"""A small learnable task in the shape of SST-2 (or RTE with pair=True), written as local files.

Each sentence mixes filler words with positive and negative cue words; the label is the kind of cue
that dominates. Easy examples carry several cues of one kind, hard ones a single cue or a 2-to-1
mix, so a tiny model learns the task and an early exit has confident and unsure examples to tell
apart. Some filler words hold quote characters, which an unquoted TSV must read as they are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

FILLER = (
    "the movie story film plot actor scene it was is a an and with of to in this that its "
    "at by for on as some more most very quite rather script music ending cast director "
    '\'s "well" "so" n\'t'
).split()
POSITIVE_CUES = ("good", "great", "superb", "lovely", "brilliant", "charming")
NEGATIVE_CUES = ("bad", "awful", "dull", "boring", "terrible", "poor")
# (number of cues of the label's kind, number of the other kind) and how often each appears
CUE_MIXES = ((4, 0), (3, 0), (1, 0), (2, 1))
CUE_MIX_PROBABILITIES = (0.25, 0.25, 0.3, 0.2)

SINGLE_COLUMNS = ("sentence", "label")
PAIR_COLUMNS = ("sentence1", "sentence2", "label")
SINGLE_LABEL_NAMES = ("negative", "positive")
PAIR_LABEL_NAMES = ("entailment", "not_entailment")


def write_synthetic_task(
    folder: Path, n_train: int = 800, n_dev: int = 200, seed: int = 0, fmt: str = "tsv", pair: bool = False
) -> Path:
    """train.<fmt>, dev.<fmt> and labels.json in `folder` (created); the same files for the same seed."""
    if fmt not in ("tsv", "csv", "jsonl"):
        raise ValueError(f"fmt must be tsv, csv or jsonl, not {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = PAIR_COLUMNS if pair else SINGLE_COLUMNS
    for stem, size in (("train", n_train), ("dev", n_dev)):
        rows = [_example(rng, pair) for _ in range(size)]
        _write_rows(folder / f"{stem}.{fmt}", columns, rows, fmt)
    names = PAIR_LABEL_NAMES if pair else SINGLE_LABEL_NAMES
    (folder / "labels.json").write_text(json.dumps({str(i): name for i, name in enumerate(names)}, indent=1))
    return folder


def _example(rng: np.random.Generator, pair: bool) -> tuple[str | int, ...]:
    label = int(rng.integers(2))
    winning, losing = CUE_MIXES[rng.choice(len(CUE_MIXES), p=CUE_MIX_PROBABILITIES)]
    label_cues, other_cues = (POSITIVE_CUES, NEGATIVE_CUES) if label == 1 else (NEGATIVE_CUES, POSITIVE_CUES)
    cues = [str(w) for w in rng.choice(label_cues, winning)] + [
        str(w) for w in rng.choice(other_cues, losing)
    ]
    lengths = [int(rng.integers(5, 13)) for _ in range(2 if pair else 1)]
    total = max(sum(lengths), len(cues) + len(lengths))
    words = [str(w) for w in rng.choice(FILLER, total - len(cues))] + cues
    words = [words[i] for i in rng.permutation(len(words))]
    texts, start = [], 0
    for length in lengths[:-1]:
        texts.append(" ".join(words[start : start + length]))
        start += length
    texts.append(" ".join(words[start:]))
    return (*texts, label)


def _write_rows(path: Path, columns: tuple[str, ...], rows: list[tuple[str | int, ...]], fmt: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "tsv":  # GLUE style: no quoting at all
            out.write("\t".join(columns) + "\n")
            out.writelines("\t".join(map(str, row)) + "\n" for row in rows)
        elif fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows(rows)
        else:
            out.writelines(json.dumps(dict(zip(columns, row, strict=True))) + "\n" for row in rows)
