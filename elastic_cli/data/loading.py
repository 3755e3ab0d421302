"""Reading a task's splits from local files (`task.data_dir`) or the Hugging Face hub.

Both sources end in the same column table -> `Split` conversion, so the checks (columns present,
labels numbers or label names, in range) and the clean-up (unlabelled rows dropped, missing text
read as "") are the same wherever the data came from.

Labels: a class label is a name in `task.label_names` or a class id 0..num_labels-1. The one exception is
-1, GLUE's mark of an unlabelled row (its hidden test splits): those rows are dropped. Any other label
(another negative number, a fraction, an id >= num_labels, an unknown name, an empty cell) stops the run
with an error naming the file and line of the first such row (line 1 is a TSV/CSV header, as an editor
counts), or the hub split and row index. Regression labels (num_labels=1) are any finite number.

Local files are read strictly: UTF-8 (a byte-order mark is allowed), a header row, and every row with as
many fields as the header (blank lines are skipped); anything else is an error naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from elastic_cli.config import TaskConfig
from elastic_cli.data.splits import EVAL_SUBSET_SEED, Split, TaskData, carve_calibration, random_subset
from elastic_cli.errors import UserError

EXTENSIONS = (".tsv", ".csv", ".jsonl")
_TRUE = {"1", "ON", "YES", "TRUE"}
_HUB_PROBE_TIMEOUT_S = 3.0


def load_task_data(task: TaskConfig, seed: int) -> TaskData:
    """Train (minus calibration, optionally subsampled with `seed`), calibration, and eval splits."""
    for field_name in ("max_train_samples", "max_eval_samples"):
        value = getattr(task, field_name)
        if value is not None and value < 1:
            raise UserError(
                f"task.{field_name}={value} must be a positive number of examples, or null for all"
            )
    raw = load_splits(task)
    for name in task.eval_splits:
        if len(raw[name]) == 0:
            raise UserError(
                f"evaluation split {name!r} has no labelled examples (hidden test labels are -1 in GLUE); "
                "choose another split in task.eval_splits"
            )
    train, calibration = carve_calibration(
        raw[task.train_split], task.calibration_fraction, task.calibration_max_samples
    )
    return TaskData(
        train=random_subset(train, task.max_train_samples, seed),
        calibration=calibration,
        evals={
            name: random_subset(raw[name], task.max_eval_samples, EVAL_SUBSET_SEED)
            for name in task.eval_splits
        },
    )


def load_splits(task: TaskConfig) -> dict[str, Split]:
    """Every split the task names (train_split, then eval_splits), whole and labelled."""
    tables = _local_tables(task) if task.data_dir else _hub_tables(task)
    return {
        name: table_to_split(name, columns, task, source, lines)
        for name, (columns, source, lines) in tables.items()
    }


def _needed_splits(task: TaskConfig) -> list[str]:
    return list(dict.fromkeys([task.train_split, *task.eval_splits]))


def _needed_columns(task: TaskConfig) -> list[str]:
    return [*task.text_columns, task.label_column]


# ----------------------------------------------------------------------------------------- local files


# a split's columns, where it came from (a file, or a hub split), and each row's line in that file (None: hub)
Table = tuple[dict[str, list[Any]], str, list[int] | None]


def _local_tables(task: TaskConfig) -> dict[str, Table]:
    data_dir = Path(os.path.expanduser(str(task.data_dir)))
    if not data_dir.is_dir():
        raise UserError(
            f"task.data_dir={task.data_dir} is not a folder; point it to the folder holding "
            f"{_stems_hint(task)} with columns {', '.join(_needed_columns(task))}"
        )
    tables: dict[str, Table] = {}
    for split in _needed_splits(task):
        if split not in task.local_files:
            raise UserError(
                f"task.local_files has no file stem for split {split!r} (it has {dict(task.local_files)}); "
                f"add task.local_files.{split}=STEM"
            )
        path = find_split_file(data_dir, task.local_files[split], split)
        frame, lines = read_table_with_lines(path)
        tables[split] = (
            {name: frame[name].tolist() for name in _checked_columns(task, frame.columns, path)},
            str(path),
            lines,
        )
    return tables


def find_split_file(data_dir: Path, stem: str, split: str) -> Path:
    """<data_dir>/<stem>.tsv, .csv or .jsonl, the first that exists in that order."""
    for extension in EXTENSIONS:
        path = data_dir / f"{stem}{extension}"
        if path.is_file():
            return path
    looked_for = ", ".join(f"{stem}{extension}" for extension in EXTENSIONS)
    raise UserError(
        f"no file for split {split!r} in {data_dir}: looked for {looked_for}; "
        f"add one or change task.local_files.{split}"
    )


def read_table(path: Path) -> pd.DataFrame:
    """All cells as strings, nothing read as NaN (a sentence "NA" is a sentence, not a missing value)."""
    return read_table_with_lines(path)[0]


def read_table_with_lines(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The table of a .tsv, .csv or .jsonl file, and the line in the file where each of its rows starts."""
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        return _read_delimited(path)
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: {_not_utf8(path)}; save it as UTF-8 text") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def _not_utf8(path: Path) -> str:
    """Where the file stops being UTF-8 (the decoder's own offset is within a chunk: decode it whole)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:offset].count(b"\n") + 1
        return f"line {line} is not UTF-8 text (byte 0x{data[offset]:02x})"
    return "it is not UTF-8 text"


def _read_delimited(path: Path) -> tuple[pd.DataFrame, list[int]]:
    # GLUE TSVs are not quoted and their sentences hold quote characters: quoting must be off.
    tsv = path.suffix == ".tsv"
    separator = "tab" if tsv else "comma"
    rows: list[list[str]] = []
    lines: list[int] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if tsv:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(handle, delimiter=",", quoting=csv.QUOTE_MINIMAL)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise UserError(f"cannot read {path}: line {reader.line_num}: {error}") from None
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if header is None:
                header = row
                duplicated = sorted({name for name in row if row.count(name) > 1})
                if duplicated:
                    raise UserError(
                        f"{path}: the header names column(s) {', '.join(duplicated)} more than once; "
                        "give every column its own name"
                    )
                continue
            if len(row) != len(header):
                cause = f"a {separator} inside a text" if len(row) > len(header) else f"a missing {separator}"
                raise UserError(
                    f"{path} line {start} has {len(row)} field(s) but the header has {len(header)} "
                    f"({', '.join(header)}): fix that line ({cause}?)"
                )
            rows.append(row)
            lines.append(start)
    if header is None:
        raise UserError(f"{path} is empty: it needs a header row naming the columns, then a row per example")
    if not rows:
        raise UserError(f"{path} has a header but no rows: add the examples, one per line")
    return pd.DataFrame(rows, columns=header, dtype=str), lines


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    records = []
    lines = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"cannot read {path}: line {line_number} is not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"cannot read {path}: line {line_number} is not a JSON object")
            records.append(record)
            lines.append(line_number)
    if not records:
        raise UserError(f"{path} is empty: it needs one JSON object per line, one per example")
    return pd.DataFrame.from_records(records), lines


def _checked_columns(task: TaskConfig, found: Sequence[str], source: str | Path) -> list[str]:
    needed = _needed_columns(task)
    missing = [name for name in needed if name not in found]
    if missing:
        raise UserError(
            f"{source} lacks column(s) {', '.join(missing)}: expected {', '.join(needed)}, "
            f"found {', '.join(map(str, found)) or 'none'}; rename the columns or set "
            "task.text_columns / task.label_column"
        )
    return needed


def _stems_hint(task: TaskConfig) -> str:
    stems = [task.local_files.get(split, split) for split in _needed_splits(task)]
    return ", ".join(f"{stem}.tsv|csv|jsonl" for stem in stems)


# ---------------------------------------------------------------------------------------------- hub


def _hub_tables(task: TaskConfig) -> dict[str, Table]:
    import datasets  # slow to import (about 1 s): only when the hub is used

    name = task.dataset if task.subset is None else f"{task.dataset}/{task.subset}"
    offline = _offline_by_env() or not _hub_reachable()
    try:
        # Offline, `datasets` still finds a copy in its cache; it only needs to be told not to retry
        # the network (its retries take about 20 s before failing).
        with _forced_offline(offline):
            dataset_dict = datasets.load_dataset(task.dataset, task.subset)
    except (ConnectionError, TimeoutError) as error:
        raise UserError(_offline_message(task, name)) from error
    except FileNotFoundError as error:
        if offline:
            raise UserError(_offline_message(task, name)) from error
        raise UserError(f"dataset {task.dataset} is not on the hub ({error}); check task.dataset") from None
    except ValueError as error:  # e.g. an unknown config name; the message lists the valid ones
        raise UserError(f"cannot load {name} from the hub: {error}; check task.subset") from None

    tables: dict[str, Table] = {}
    for split in _needed_splits(task):
        if split not in dataset_dict:
            raise UserError(
                f"{name} has no split {split!r} (it has {', '.join(dataset_dict)}); "
                "fix task.train_split / task.eval_splits"
            )
        part = dataset_dict[split]
        source = f"{name} split {split}"
        columns = _checked_columns(task, part.column_names, source)
        tables[split] = (part.select_columns(columns).to_dict(), source, None)
    return tables


def _offline_message(task: TaskConfig, name: str) -> str:
    return (
        f"cannot load {name} from the hub (offline?); set task.data_dir=DIR holding "
        f"{_stems_hint(task)} with columns {', '.join(_needed_columns(task))}"
    )


def _offline_by_env() -> bool:
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in names)


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """A quick TCP connect to the hub endpoint, so that no network fails in seconds, not retries."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxy: let `datasets` try
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    if endpoint.hostname is None:
        return True
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _forced_offline(offline: bool) -> Iterator[None]:
    """Offline mode for `datasets` and `huggingface_hub` during one call.

    Both libraries read HF_HUB_OFFLINE once at import; these module flags are what they consult on
    each request, so setting them covers an environment changed after import or an unreachable hub."""
    if not offline:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


# ----------------------------------------------------------------------------------- table -> Split


def table_to_split(
    name: str,
    columns: Mapping[str, Sequence[Any]],
    task: TaskConfig,
    source: str,
    lines: Sequence[int] | None = None,
) -> Split:
    """Texts and checked labels; rows labelled -1 (GLUE: unlabelled) are dropped. `lines`: the line of each
    row in the file `source`, for the error messages (None: rows are named by their index)."""
    labels = _parse_labels(columns[task.label_column], task, source, lines)
    if task.num_labels > 1:
        keep = labels != UNLABELLED
        labels = labels[keep].astype(np.int64)
    else:
        # Regression targets may legitimately be negative: keep every row.
        keep = np.ones(len(labels), dtype=bool)
        labels = labels.astype(np.float32)
    text_columns = [_texts(columns[column]) for column in task.text_columns]
    rows = np.flatnonzero(keep)
    texts = [tuple(column[i] for column in text_columns) for i in rows]
    return Split(name=name, texts=texts, labels=labels)


def _texts(values: Sequence[Any]) -> list[str]:
    return [
        "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
        for value in values
    ]


UNLABELLED = -1  # GLUE's label of a row without one (its test splits)


def _parse_labels(
    values: Sequence[Any], task: TaskConfig, source: str, lines: Sequence[int] | None = None
) -> np.ndarray:
    """float64 labels: names in task.label_names map to their index, the rest must be numbers; class ids
    within 0..num_labels-1, or -1 (unlabelled). The first bad row is named by its line (or index)."""
    raw = pd.Series(list(values), dtype=object)
    as_text = raw.map(_label_text)
    # A label name wins over a number that looks the same: names are what the task declares.
    by_name = as_text.map({label: index for index, label in enumerate(task.label_names)})
    as_number = pd.to_numeric(as_text.where(by_name.isna()), errors="coerce")
    parsed = by_name.astype(float).fillna(as_number).to_numpy(dtype=np.float64)

    column = task.label_column
    names = f" or a label name ({', '.join(task.label_names)})" if task.label_names else ""
    if task.num_labels == 1:
        problems = [(~np.isfinite(parsed), "is not a number", "fix the file")]
    else:
        ids = f"0..{task.num_labels - 1}"
        problems = [
            (np.isnan(parsed), f"is not a class id {ids}{names}", "fix the file or task.label_names"),
            (
                np.isinf(parsed) | (parsed != np.floor(parsed)),
                f"is not a whole number: class ids are {ids}",
                "fix the file",
            ),
            (
                (parsed < 0) & (parsed != UNLABELLED),
                f"is negative: class ids are {ids}, and -1 marks an unlabelled row",
                "fix the file",
            ),
            (
                parsed >= task.num_labels,
                f"is outside the class ids {ids} (task.num_labels={task.num_labels})",
                "fix the file or task.num_labels",
            ),
        ]
    bad = np.zeros(len(parsed), dtype=bool)
    for mask, _, _ in problems:
        bad |= mask
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        problem, fix = next((problem, fix) for mask, problem, fix in problems if mask[first])
        where = f"{source} line {lines[first]}" if lines is not None else f"{source}, row index {first}"
        more = f" (and {int(bad.sum()) - 1} more bad row(s))" if bad.sum() > 1 else ""
        raise UserError(f"{where}: label {as_text.iloc[first]!r} in column {column} {problem}{more}; {fix}")
    return parsed


def _label_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""  # a missing cell (a JSONL record without the label)
    return str(value).strip()
