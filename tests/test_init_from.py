"""`train.init_from`: DeeBERT's second stage started from a fine-tuned method=static checkpoint.

The run must keep the checkpoint's backbone and classifier as its last exit (stage 2 freezes them),
skip stage 1, train the off-ramps, and refuse a checkpoint that does not stand for stage 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic, ok

pytestmark = pytest.mark.slow

BASE = [a for a in TINY if not a.startswith("method=")] + ["train.epochs=3"]


@pytest.fixture(scope="module")
def static(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("init_from")
    write_synthetic_task(root / "data", n_train=600, n_dev=120, seed=0)
    args = [*BASE, f"task.data_dir={root / 'data'}", f"outputs={root / 'out'}"]
    ok(elastic("train", "method=static", *args, cwd=root))
    return root, args


def _folder(root: Path, method: str) -> Path:
    return root / "out" / "checkpoints" / "sst2" / method / "tiny-bert" / "seed42"


def test_deebert_stage_two_starts_from_the_static_checkpoint(static):
    root, args = static
    source = _folder(root, "static")
    proc = ok(elastic("train", "method=deebert", *args, f"train.init_from={source}", cwd=root))
    printed = proc.stdout + proc.stderr
    assert "stage 1 done: backbone and final classifier from" in printed
    assert "train stage 2 (sum_intermediate)" in printed and "train stage 1" not in printed
    ours, theirs = (
        load_file(str(_folder(root, "deebert") / "model.safetensors")),
        load_file(str(source / "model.safetensors")),
    )
    backbone = [k for k in theirs if k.startswith("backbone.")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    last = 3  # tiny-bert: 4 layers, an exit at each
    for module in ("poolers", "classifiers"):
        for part in ("weight", "bias"):
            key = f"heads.{module}.0.dense.{part}" if module == "poolers" else f"heads.{module}.0.{part}"
            assert torch.equal(ours[key.replace(".0.", f".{last}.")], theirs[key])
    meta = json.loads((_folder(root, "deebert") / "meta.json").read_text())
    before = json.loads((source / "meta.json").read_text())
    # same weights, same calibration split: the last exit scores exactly what the static model did
    assert meta["train_metrics"]["calibration_exit_scores"][-1] == pytest.approx(
        before["train_metrics"]["calibration_exit_scores"][-1], abs=1e-12
    )
    assert meta["train_metrics"]["init_from"] == str(source)
    assert len(meta["train_metrics"]["calibration_exit_scores"]) == 4


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["method=sweet"], ["train.init_from", "method=deebert"]),
        (["method=deebert", "seed=7"], ["other data", "seed (42 vs 7)"]),
        (["method=deebert", "task.max_train_samples=300"], ["task.max_train_samples"]),
        (["method=fastbert"], ["pooler head", "method.head=fastbert"]),
        (["method=static"], ["nothing to train"]),
    ],
)
def test_a_checkpoint_that_is_not_stage_one_is_refused(static, extra, needles):
    root, args = static
    proc = elastic("train", *args, *extra, f"train.init_from={_folder(root, 'static')}", cwd=root)
    _one_line_error(proc, *needles)


def test_a_missing_checkpoint_is_refused(static, tmp_path: Path):
    root, args = static
    proc = elastic("train", "method=deebert", *args, f"train.init_from={tmp_path / 'nothing'}", cwd=root)
    _one_line_error(proc, "no checkpoint in")
