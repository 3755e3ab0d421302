"""Task data: local files in every format, the hub path offline, splits, encoding and batching."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import NEGATIVE_CUES, POSITIVE_CUES, write_synthetic_task
from tiny_models import tiny_tokenizer

from elastic_cli.config import TaskConfig
from elastic_cli.data import Split, batches, encode, encoding, load_splits, load_task_data, loading
from elastic_cli.errors import UserError

# ../shared/assets/data beside the repo (as in CI's clean clone); ELASTIC_DATA overrides it
REAL_DATA = Path(
    os.environ.get("ELASTIC_DATA", Path(__file__).resolve().parents[2] / "shared" / "assets" / "data")
)


def sst2_like(data_dir: Path | str | None, **overrides) -> TaskConfig:
    fields = dict(name="sst2", dataset="nyu-mll/glue", subset="sst2", label_names=["negative", "positive"])
    fields.update(overrides)
    return TaskConfig(data_dir=None if data_dir is None else str(data_dir), **fields)


def rte_like(data_dir: Path | str, **overrides) -> TaskConfig:
    return sst2_like(data_dir, name="rte", subset="rte", text_columns=["sentence1", "sentence2"], **overrides)


def write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def numbered_task(folder: Path, n_train: int, n_dev: int = 10, **overrides) -> TaskConfig:
    """Sentences 'row i' with unique texts, so rows can be followed through carving and subsetting."""
    write_tsv(folder / "train.tsv", ["sentence", "label"], [[f"row {i}", i % 2] for i in range(n_train)])
    write_tsv(folder / "dev.tsv", ["sentence", "label"], [[f"dev {i}", i % 2] for i in range(n_dev)])
    return sst2_like(folder, **overrides)


def texts_of(split: Split) -> list[str]:
    return [texts[0] for texts in split.texts]


# ------------------------------------------------------------------------------------ local formats


@pytest.mark.parametrize("pair", [False, True])
def test_tsv_csv_and_jsonl_hold_the_same_examples(tmp_path: Path, pair: bool) -> None:
    make_task = rte_like if pair else sst2_like
    loaded = {}
    for fmt in ("tsv", "csv", "jsonl"):
        folder = write_synthetic_task(tmp_path / fmt, n_train=60, n_dev=20, seed=3, fmt=fmt, pair=pair)
        assert (folder / f"train.{fmt}").is_file() and (folder / f"dev.{fmt}").is_file()
        loaded[fmt] = load_splits(make_task(folder))
    reference = loaded["tsv"]
    assert len(reference["train"]) == 60 and len(reference["validation"]) == 20
    assert all(len(texts) == (2 if pair else 1) for texts in reference["train"].texts)
    assert reference["train"].labels.dtype == np.int64
    for fmt in ("csv", "jsonl"):
        for split in ("train", "validation"):
            assert loaded[fmt][split].texts == reference[split].texts
            np.testing.assert_array_equal(loaded[fmt][split].labels, reference[split].labels)


def test_unquoted_tsv_keeps_quote_characters_and_na_words(tmp_path: Path) -> None:
    sentences = ['he said "hello', 'a "quoted" word', '"', "it 's fine", "NA", "null", "", "#hash"]
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [[s, i % 2] for i, s in enumerate(sentences)])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [['"open', 1]])
    raw = load_splits(sst2_like(tmp_path))
    assert texts_of(raw["train"]) == sentences
    assert texts_of(raw["validation"]) == ['"open']
    assert raw["train"].labels.tolist() == [i % 2 for i in range(len(sentences))]


def test_jsonl_missing_text_reads_as_empty_and_label_names_map_to_ids(tmp_path: Path) -> None:
    records = [
        {"sentence": "fine", "label": "positive"},
        {"sentence": None, "label": "negative"},
        {"label": 1, "idx": 7},
        {"sentence": "unlabelled", "label": -1},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"sentence": "x", "label": "1"}) + "\n")
    raw = load_splits(sst2_like(tmp_path))
    assert raw["train"].texts == [("fine",), ("",), ("",)]
    assert raw["train"].labels.tolist() == [1, 0, 1]
    assert raw["validation"].labels.tolist() == [1]


def test_negative_labels_are_dropped_and_regression_labels_are_float(tmp_path: Path) -> None:
    rows = [["a", "b", 1], ["c", "d", -1], ["e", "f", 0]]
    write_tsv(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"], rows)
    write_tsv(tmp_path / "dev.tsv", ["sentence1", "sentence2", "label"], rows)
    classified = load_splits(rte_like(tmp_path))["train"]
    assert classified.texts == [("a", "b"), ("e", "f")]
    assert classified.labels.tolist() == [1, 0]

    regression_rows = [["a", "b", "4.2"], ["c", "d", "-0.5"], ["e", "f", "0"]]
    write_tsv(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"], regression_rows)
    regression = load_splits(rte_like(tmp_path, num_labels=1, label_names=[], metric="pearson_spearman"))[
        "train"
    ]
    assert regression.labels.dtype == np.float32
    np.testing.assert_allclose(regression.labels, [4.2, -0.5, 0.0], rtol=1e-6)


def test_eval_splits_follow_the_task_order_with_their_own_files(tmp_path: Path) -> None:
    header = ["premise", "hypothesis", "label"]
    write_tsv(tmp_path / "train.tsv", header, [[f"p{i}", "h", i % 3] for i in range(30)])
    write_tsv(tmp_path / "dev_matched.tsv", header, [["m", "h", "neutral"]] * 4)
    write_tsv(tmp_path / "dev_mismatched.tsv", header, [["mm", "h", "contradiction"]] * 5)
    task = TaskConfig(
        name="mnli",
        dataset="nyu-mll/glue",
        subset="mnli",
        text_columns=["premise", "hypothesis"],
        num_labels=3,
        label_names=["entailment", "neutral", "contradiction"],
        eval_splits=["validation_matched", "validation_mismatched"],
        local_files={
            "train": "train",
            "validation_matched": "dev_matched",
            "validation_mismatched": "dev_mismatched",
        },
        data_dir=str(tmp_path),
    )
    data = load_task_data(task, seed=0)
    assert list(data.evals) == ["validation_matched", "validation_mismatched"]
    assert data.evals["validation_matched"].labels.tolist() == [1] * 4
    assert data.evals["validation_mismatched"].labels.tolist() == [2] * 5
    assert data.evals["validation_mismatched"].texts[0] == ("mm", "h")


# ------------------------------------------------------------------------------------- real GLUE files


@pytest.mark.skipif(not (REAL_DATA / "sst2").is_dir(), reason="the real GLUE files are absent")
def test_real_sst2_counts_and_calibration_size() -> None:
    task = sst2_like(REAL_DATA / "sst2")
    raw = load_splits(task)
    assert len(raw["train"]) == 67_349
    assert len(raw["validation"]) == 872
    assert raw["train"].texts[0] == ("hide new secretions from the parental units",)
    assert set(raw["train"].labels.tolist()) == {0, 1}
    data = load_task_data(task, seed=1)
    assert len(data.calibration) == 2000  # min(round(0.1 * 67,349), calibration_max_samples=2000)
    assert len(data.train) == 67_349 - 2000


@pytest.mark.skipif(not (REAL_DATA / "rte").is_dir(), reason="the real GLUE files are absent")
def test_real_rte_counts() -> None:
    raw = load_splits(rte_like(REAL_DATA / "rte", label_names=["entailment", "not_entailment"]))
    assert len(raw["train"]) == 2490
    assert len(raw["validation"]) == 277
    assert raw["train"].texts[0] == (
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons of Mass Destruction Found in Iraq.",
    )


# ---------------------------------------------------------------------------------------------- splits


def test_calibration_is_disjoint_from_train_and_the_same_for_every_seed(tmp_path: Path) -> None:
    task = numbered_task(tmp_path, n_train=200, calibration_fraction=0.1)
    by_seed = [load_task_data(task, seed=seed) for seed in (0, 1, 2)]
    calibration = texts_of(by_seed[0].calibration)
    train = texts_of(by_seed[0].train)
    assert len(calibration) == 20 and len(train) == 180
    assert not set(calibration) & set(train)
    assert set(calibration) | set(train) == {f"row {i}" for i in range(200)}
    assert calibration != [f"row {i}" for i in range(20)]  # random, not the head of the file
    assert calibration == sorted(calibration, key=lambda text: int(text.split()[1]))  # file order kept
    for other in by_seed[1:]:
        assert texts_of(other.calibration) == calibration
        assert texts_of(other.train) == train
    assert by_seed[0].calibration.name == "calibration"


def test_calibration_size_is_capped_and_at_least_one(tmp_path: Path) -> None:
    capped = load_task_data(numbered_task(tmp_path / "a", 300, calibration_max_samples=7), seed=0)
    assert len(capped.calibration) == 7 and len(capped.train) == 293
    tiny = load_task_data(numbered_task(tmp_path / "b", 4, calibration_fraction=0.01), seed=0)
    assert len(tiny.calibration) == 1 and len(tiny.train) == 3


def test_max_train_samples_is_a_seeded_random_subset_of_the_remaining_train(tmp_path: Path) -> None:
    task = numbered_task(tmp_path, n_train=500, max_train_samples=50)
    first = load_task_data(task, seed=5)
    again = load_task_data(task, seed=5)
    other_seed = load_task_data(task, seed=6)
    full_train = set(texts_of(load_task_data(numbered_task(tmp_path, n_train=500), seed=5).train))

    assert len(first.train) == 50
    assert texts_of(first.train) == texts_of(again.train)
    np.testing.assert_array_equal(first.train.labels, again.train.labels)
    assert texts_of(first.train) != texts_of(other_seed.train)
    assert set(texts_of(first.train)) <= full_train  # never a calibration example
    head = [text for text in texts_of(load_task_data(numbered_task(tmp_path, 500), seed=5).train)][:50]
    assert texts_of(first.train) != head
    assert texts_of(first.calibration) == texts_of(other_seed.calibration)


def test_max_eval_samples_is_a_fixed_random_subset_in_file_order(tmp_path: Path) -> None:
    task = numbered_task(tmp_path, n_train=50, n_dev=100, max_eval_samples=10)
    subsets = [texts_of(load_task_data(task, seed=seed).evals["validation"]) for seed in (0, 1)]
    assert subsets[0] == subsets[1]
    assert len(subsets[0]) == 10
    assert subsets[0] != [f"dev {i}" for i in range(10)]
    assert subsets[0] == sorted(subsets[0], key=lambda text: int(text.split()[1]))


# ---------------------------------------------------------------------------------------------- errors


def test_missing_data_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task.data_dir=.*nowhere is not a folder.*train.tsv\|csv\|jsonl"):
        load_task_data(sst2_like(tmp_path / "nowhere"), seed=0)


def test_missing_split_file_names_the_stems_and_extensions(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [["a", 0], ["b", 1]])
    with pytest.raises(UserError, match=r"no file for split 'validation'.*dev\.tsv, dev\.csv, dev\.jsonl"):
        load_task_data(sst2_like(tmp_path), seed=0)


def test_split_without_a_file_stem_is_a_user_error(tmp_path: Path) -> None:
    numbered_task(tmp_path, 10)
    with pytest.raises(UserError, match=r"task.local_files has no file stem for split 'test'"):
        load_task_data(sst2_like(tmp_path, eval_splits=["test"]), seed=0)


def test_wrong_columns_name_the_file_and_both_column_lists(tmp_path: Path) -> None:
    write_tsv(tmp_path / "train.tsv", ["text", "label"], [["a", 0], ["b", 1]])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["a", 0]])
    with pytest.raises(UserError) as caught:
        load_task_data(sst2_like(tmp_path), seed=0)
    message = str(caught.value)
    assert "train.tsv lacks column(s) sentence" in message
    assert "expected sentence, label" in message and "found text, label" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("2", "label '2' in column label is outside the class ids 0..1 (task.num_labels=2)"),
        ("0.5", "label '0.5' in column label is not a whole number: class ids are 0..1"),
        ("-2", "label '-2' in column label is negative: class ids are 0..1, and -1 marks an unlabelled row"),
        ("maybe", "label 'maybe' in column label is not a class id 0..1 or a label name (negative, positive"),
        ("", "label '' in column label is not a class id 0..1 or a label name (negative, positive)"),
        ("inf", "label 'inf' in column label is not a whole number"),
    ],
)
def test_a_bad_label_names_the_file_and_line(tmp_path: Path, label: str, message: str) -> None:
    # line 1 is the header, line 3 is blank (skipped, but counted as an editor counts it)
    (tmp_path / "train.tsv").write_text(f"sentence\tlabel\na\t0\n\nb\t{label}\nc\t1\nd\t{label}\n")
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["c", 0]])
    with pytest.raises(UserError) as caught:
        load_task_data(sst2_like(tmp_path), seed=0)
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'train.tsv'} line 4: {message}"), text
    assert "(and 1 more bad row(s))" in text and "\n" not in text


def test_a_bad_label_in_csv_and_jsonl_names_the_line_where_its_row_starts(tmp_path: Path) -> None:
    # a quoted CSV field spanning two lines: the next row starts on line 4
    (tmp_path / "train.csv").write_text('sentence,label\n"two\nlines",1\nok,7\n')
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["c", 0]])
    with pytest.raises(UserError, match=r"train\.csv line 4: label '7' in column label is outside"):
        load_task_data(sst2_like(tmp_path), seed=0)
    (tmp_path / "train.csv").unlink()
    rows = ['{"sentence": "a", "label": 1}', "", '{"sentence": "b"}']
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl line 3: label '' in column label is not a class id"):
        load_task_data(sst2_like(tmp_path), seed=0)


def test_a_regression_label_must_be_a_finite_number(tmp_path: Path) -> None:
    header = ["sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "train.tsv", header, [["a", "b", "-1.5"], ["c", "d", "high"]])
    write_tsv(tmp_path / "dev.tsv", header, [["a", "b", "1"]])
    task = rte_like(tmp_path, num_labels=1, label_names=[], metric="pearson_spearman")
    with pytest.raises(UserError, match=r"train\.tsv line 3: label 'high' in column label is not a number"):
        load_splits(task)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "train.tsv is empty: it needs a header row naming the columns"),
        (b"\n\n", "train.tsv is empty"),
        (b"sentence\tlabel\n", "train.tsv has a header but no rows"),
        (b"sentence\tlabel\na\t0\nb\t1\textra\n", "train.tsv line 3 has 3 field(s) but the header has 2"),
        (
            b"sentence\tlabel\na\t0\nno label here\n",
            "train.tsv line 3 has 1 field(s) but the header has 2 (sentence, label): fix that line "
            "(a missing tab?)",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "train.tsv: line 1 is not UTF-8 text (byte 0x89)"),
        (b"sentence\tlabel\n" + b"a\t0\n" * 9999 + b"\xe9\t1\n", "train.tsv: line 10001 is not UTF-8"),
        (b"label\tsentence\tlabel\n0\ta\t0\n", "train.tsv: the header names column(s) label more than once"),
        (b"sentence\tlabels\na\t0\n", "train.tsv lacks column(s) label: expected sentence, label, found"),
    ],
)
def test_a_corrupt_file_is_one_error_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "train.tsv").write_bytes(content)
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["c", 0]])
    with pytest.raises(UserError) as caught:
        load_task_data(sst2_like(tmp_path), seed=0)
    assert message in str(caught.value) and str(tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_empty_jsonl_file_and_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("\n  \n")
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["c", 0]])
    with pytest.raises(UserError, match=r"train\.jsonl is empty: it needs one JSON object per line"):
        load_task_data(sst2_like(tmp_path), seed=0)
    # a spreadsheet's UTF-8 export starts with a byte-order mark: not part of the first column's name
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.csv").write_bytes("\ufeffsentence,label\na,0\nb,1\nc,0\n".encode())
    assert load_splits(sst2_like(tmp_path))["train"].labels.tolist() == [0, 1, 0]


def test_malformed_jsonl_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"sentence": "a", "label": 0}\n{"sentence": \n')
    (tmp_path / "dev.jsonl").write_text('{"sentence": "a", "label": 0}\n')
    with pytest.raises(UserError, match=r"train\.jsonl: line 2 is not JSON"):
        load_task_data(sst2_like(tmp_path), seed=0)


def test_an_eval_split_without_labels_is_a_user_error(tmp_path: Path) -> None:
    numbered_task(tmp_path, 10)
    write_tsv(tmp_path / "test.tsv", ["sentence", "label"], [["hidden", -1], ["labels", -1]])
    task = sst2_like(tmp_path, eval_splits=["test"], local_files={"train": "train", "test": "test"})
    with pytest.raises(UserError, match=r"evaluation split 'test' has no labelled examples"):
        load_task_data(task, seed=0)


def test_non_positive_max_train_samples_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"task.max_train_samples=0 must be a positive number"):
        load_task_data(numbered_task(tmp_path, 10, max_train_samples=0), seed=0)


def test_a_train_split_too_small_to_carve_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"training split has 1 labelled example"):
        load_task_data(numbered_task(tmp_path, 1), seed=0)


# ------------------------------------------------------------------------------------------------- hub


def test_hub_offline_by_environment_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        load_task_data(sst2_like(None), seed=0)
    assert time.perf_counter() - start < 10.0  # datasets' own retries take about 20 s
    message = str(caught.value)
    assert message.startswith("cannot load nyu-mll/glue/sst2 from the hub (offline?)")
    assert (
        "set task.data_dir=DIR holding train.tsv|csv|jsonl, dev.tsv|csv|jsonl with columns sentence, label"
        in message
    )


def test_unreachable_hub_fails_fast_without_offline_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets_config = pytest.importorskip("datasets.config")
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # as if the libraries were imported online: only the probe says that the hub is unreachable
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot load stanfordnlp/imdb from the hub \(offline\?\)"):
        load_task_data(sst2_like(None, dataset="stanfordnlp/imdb", subset=None), seed=0)
    assert time.perf_counter() - start < 10.0  # offline mode was forced: no network retries
    assert datasets_config.HF_HUB_OFFLINE is False and constants.HF_HUB_OFFLINE is False  # restored


def test_hub_tables_become_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {
                    "sentence": [f"s{i}" for i in range(20)],
                    "label": [i % 2 for i in range(19)] + [-1],
                    "idx": list(range(20)),
                }
            ),
            "validation": datasets.Dataset.from_dict({"sentence": ["v0", "v1"], "label": [1, 0]}),
            "test": datasets.Dataset.from_dict({"sentence": ["t"], "label": [-1]}),
        }
    )
    calls = []
    monkeypatch.setattr(loading, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or fake)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)

    data = load_task_data(sst2_like(None), seed=0)
    assert calls == [("nyu-mll/glue", "sst2")]
    assert len(data.train) + len(data.calibration) == 19  # the -1 row is dropped
    assert data.evals["validation"].texts == [("v0",), ("v1",)]
    with pytest.raises(
        UserError, match=r"nyu-mll/glue/sst2 has no split 'dev' \(it has train, validation, test\)"
    ):
        load_task_data(sst2_like(None, eval_splits=["dev"]), seed=0)
    with pytest.raises(UserError, match=r"nyu-mll/glue/sst2 split train lacks column\(s\) premise"):
        load_task_data(sst2_like(None, text_columns=["premise"]), seed=0)


def test_a_bad_hub_label_names_the_split_and_row_index(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"sentence": list("abcde"), "label": [0, 1, -1, 5, 0]}),
            "validation": datasets.Dataset.from_dict({"sentence": ["v"], "label": [1]}),
        }
    )
    monkeypatch.setattr(loading, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        UserError,
        match=r"^nyu-mll/glue/sst2 split train, row index 3: label '5' in column label is outside the",
    ):
        load_task_data(sst2_like(None), seed=0)


# -------------------------------------------------------------------------------- encoding and batches


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(["the movie was good", "a bad film and a dull plot", "great story", "fine"] * 5)


def test_encode_single_texts_without_token_types(tokenizer) -> None:
    split = Split("s", [("the movie was good",), ("fine",), ("",)], np.array([1, 0, 1]))
    enc = encode(split, tokenizer, max_length=32)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert enc.token_type_ids is None
    assert enc.input_ids[2] == [cls, sep]
    assert enc.input_ids[0][0] == cls and enc.input_ids[0][-1] == sep
    assert enc.lengths.tolist() == [len(ids) for ids in enc.input_ids]
    assert enc.lengths[0] == 6  # [CLS] the movie was good [SEP]
    np.testing.assert_array_equal(enc.labels, [1, 0, 1])


def test_encode_pairs_get_token_types_and_longest_first_truncation(tokenizer) -> None:
    long_text = " ".join(["the movie was good"] * 10)
    split = Split("p", [("great story", "fine"), (long_text, "a bad film")], np.array([0, 1]))
    enc = encode(split, tokenizer, max_length=12)
    assert enc.token_type_ids is not None
    assert enc.token_type_ids[0] == [0, 0, 0, 0, 1, 1]  # [CLS] great story [SEP] fine [SEP]
    assert enc.lengths.tolist() == [6, 12]
    # longest_first: the long first text is cut, the short second text survives whole
    second_segment = [t for t, kind in zip(enc.input_ids[1], enc.token_type_ids[1], strict=True) if kind == 1]
    assert tokenizer.decode(second_segment, skip_special_tokens=True) == "a bad film"


def test_pairs_get_no_token_types_from_a_tokenizer_without_them() -> None:
    mpnet_like = tiny_tokenizer(["great story", "fine film"] * 5, family="mpnet")
    enc = encode(Split("p", [("great story", "fine")], np.array([1])), mpnet_like, max_length=16)
    assert enc.token_type_ids is None
    (batch,) = list(batches(enc, 4, pad_id=mpnet_like.pad_token_id))
    assert batch.token_type_ids is None


def test_encode_tokenizes_in_batched_chunks(tokenizer, monkeypatch) -> None:
    """Batched calls of at most _TOKENIZE_CHUNK examples (a call's Rust-side encodings cost memory until
    it returns), never one per example; chunking changes no id."""

    class Counting:
        def __init__(self) -> None:
            self.calls = 0
            self.model_input_names = ["input_ids", "token_type_ids"]

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return tokenizer(*args, **kwargs)

    counting = Counting()
    split = Split("s", [("the movie was good",)] * 5000, np.zeros(5000, dtype=np.int64))
    enc = encode(split, counting, max_length=16)
    assert counting.calls == math.ceil(5000 / encoding._TOKENIZE_CHUNK) and len(enc.input_ids) == 5000
    pairs = Split("p", [(f"premise {i} here", f"a hypothesis {i % 7}") for i in range(50)], np.zeros(50))
    whole = encode(pairs, counting, max_length=12)
    monkeypatch.setattr(encoding, "_TOKENIZE_CHUNK", 7)
    chunked = encode(pairs, counting, max_length=12)
    assert chunked.input_ids == whole.input_ids and chunked.token_type_ids == whole.token_type_ids
    assert whole.token_type_ids is not None and len(whole.token_type_ids) == 50


def test_batches_pad_to_the_longest_row_with_a_mask(tokenizer) -> None:
    texts = [("fine",), ("the movie was good",), ("great story",), ("a bad film and a dull plot",), ("",)]
    split = Split("s", texts, np.array([0, 1, 1, 0, 1]))
    enc = encode(split, tokenizer, max_length=32)
    pad = tokenizer.pad_token_id
    produced = list(batches(enc, 2, pad_id=pad))
    assert [batch.index.tolist() for batch in produced] == [[0, 1], [2, 3], [4]]
    first = produced[0]
    assert first.input_ids.shape == (2, max(enc.lengths[:2]))
    assert first.attention_mask.sum(dim=1).tolist() == enc.lengths[:2].tolist()
    assert first.input_ids[0, enc.lengths[0] :].eq(pad).all()
    assert first.input_ids[0, : enc.lengths[0]].tolist() == enc.input_ids[0]
    assert first.token_type_ids is None
    assert first.labels.dtype == torch.long and first.labels.tolist() == [0, 1]
    assert produced[2].input_ids.shape == (1, 2)


def test_batches_shuffle_by_seed_and_follow_indices(tokenizer) -> None:
    split = Split("s", [(f"the movie {'good ' * i}",) for i in range(10)], np.arange(10) % 2)
    enc = encode(split, tokenizer, max_length=32)

    def order(**kwargs) -> list[int]:
        return [i for batch in batches(enc, 3, pad_id=0, **kwargs) for i in batch.index.tolist()]

    assert order() == list(range(10))
    shuffled = order(shuffle=True, seed=1)
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert order(shuffle=True, seed=1) == shuffled
    assert order(shuffle=True, seed=2) != shuffled
    assert order(indices=[7, 2, 5]) == [7, 2, 5]
    single = list(batches(enc, 1, pad_id=0, indices=[4]))
    assert len(single) == 1 and single[0].input_ids.shape == (1, enc.lengths[4])
    assert single[0].attention_mask.all()


def test_batches_of_pairs_pad_token_types_and_move_to_a_device(tokenizer) -> None:
    split = Split(
        "p", [("great story", "fine"), ("fine", "the movie was good")], np.array([0.5, 1.5], dtype=np.float32)
    )
    enc = encode(split, tokenizer, max_length=32)
    (batch,) = list(batches(enc, 8, pad_id=tokenizer.pad_token_id))
    assert batch.token_type_ids is not None
    assert batch.token_type_ids.shape == batch.input_ids.shape
    assert batch.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]  # padded with type 0
    assert batch.labels.dtype == torch.float32
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and torch.equal(
        moved.token_type_ids, batch.token_type_ids
    )


@pytest.mark.real
@pytest.mark.skipif(not os.environ.get("ELASTIC_MODELS"), reason="ELASTIC_MODELS is unset")
@pytest.mark.skipif(not (REAL_DATA / "rte").is_dir(), reason="the real GLUE files are absent")
def test_real_tokenizer_on_real_rte() -> None:
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained(Path(os.environ["ELASTIC_MODELS"]) / "minilm-l6")
    raw = load_splits(rte_like(REAL_DATA / "rte"))
    start = time.perf_counter()
    enc = encode(raw["train"], real, max_length=128)
    assert time.perf_counter() - start < 10.0
    assert len(enc.input_ids) == 2490 and enc.lengths.max() == 128
    assert enc.token_type_ids is not None and all(ids[0] == real.cls_token_id for ids in enc.input_ids)


# ---------------------------------------------------------------------------------------- synthetic task


def test_synthetic_task_is_deterministic_and_its_label_follows_the_cues(tmp_path: Path) -> None:
    first = write_synthetic_task(tmp_path / "a", n_train=300, n_dev=50, seed=4)
    again = write_synthetic_task(tmp_path / "b", n_train=300, n_dev=50, seed=4)
    other = write_synthetic_task(tmp_path / "c", n_train=300, n_dev=50, seed=5)
    assert (first / "train.tsv").read_text() == (again / "train.tsv").read_text()
    assert (first / "train.tsv").read_text() != (other / "train.tsv").read_text()
    assert json.loads((first / "labels.json").read_text()) == {"0": "negative", "1": "positive"}

    train = load_splits(sst2_like(first))["train"]
    assert len(train) == 300
    assert 0.35 < train.labels.mean() < 0.65
    positive, negative = set(POSITIVE_CUES), set(NEGATIVE_CUES)
    single_cue = 0
    for (text,), label in zip(train.texts, train.labels, strict=True):
        words = text.split()
        assert 5 <= len(words) <= 12
        n_pos = sum(w in positive for w in words)
        n_neg = sum(w in negative for w in words)
        assert n_pos != n_neg and label == int(n_pos > n_neg)
        single_cue += n_pos + n_neg == 1
    assert 0.15 < single_cue / len(train) < 0.45  # hard examples exist, but most are easier


def test_synthetic_pair_task_has_rte_columns(tmp_path: Path) -> None:
    folder = write_synthetic_task(tmp_path, n_train=40, n_dev=10, pair=True, fmt="csv")
    raw = load_splits(rte_like(folder))
    assert all(len(texts) == 2 and texts[0] and texts[1] for texts in raw["train"].texts)
    assert json.loads((folder / "labels.json").read_text()) == {"0": "entailment", "1": "not_entailment"}
