"""AdapLeR through the CLI on the tiny config: train (fine-tuning, saliency, predictors) -> calibrate ->
evaluate -> a sweep of the eta multiplier, read back from MLflow; and the inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic, ok

pytestmark = pytest.mark.slow

ARGS = [a for a in TINY if not a.startswith(("method=", "train.epochs="))] + [
    "method=adapler",
    "train.epochs=3",
    # the predictors' stage: 2 epochs here (AdapLeR's 5 in conf/method/adapler.yaml)
    "method.stages=[{objective: final_only, trainable: all, keep_best: 3},{objective: adapler, epochs: 2}]",
    "method.exit.sweep=0,1,3",
    "calibrate.grid_size=5",  # token_drop's grid: 0, 0.5, 1, 1.5, 3 (each point a pass)
    "evaluate.grid_size=5",
]


@pytest.fixture(scope="module")
def adapler(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("adapler")
    write_synthetic_task(root / "data", n_train=450, n_dev=120, seed=0)
    args = [*ARGS, f"task.data_dir={root / 'data'}", f"outputs={root / 'out'}"]
    ok(elastic("train", *args, cwd=root))
    ok(elastic("calibrate", *args, cwd=root))
    ok(elastic("evaluate", *args, cwd=root))
    return root, args


def _runs(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'out' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["sst2"], output_format="pandas")


def _ckpt(root: Path) -> Path:
    return root / "out" / "checkpoints" / "sst2" / "adapler" / "tiny-bert" / "seed42"


def test_train_keeps_the_saliency_targets_and_a_length_reducing_checkpoint(adapler):
    root, _ = adapler
    ckpt = _ckpt(root)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["shape"] == "length_reducing" and meta["shape_settings"] == {"predictor_width": 32}
    assert meta["exit_layers"] == [4]
    assert (ckpt / "saliency.safetensors").is_file()
    assert not ckpt.with_name("seed42.saliency.safetensors").exists()  # moved into the checkpoint
    train = _runs(root).query("`tags.elastic.stage` == 'train'").iloc[0]
    assert train["params.saliency_sources"] == "3"  # the 3 best fine-tuning epochs
    assert 0.01 <= train["metrics.train/eta_L1"] <= 1.0
    assert train["metrics.calibration/flops_speedup"] > 0


@pytest.mark.extended  # (in CI: tests/test_adapler.py, the reuse and the replaceable folder, in-process)
def test_training_again_replaces_the_checkpoint_and_reuses_its_saliency_targets(adapler, tmp_path):
    root, args = adapler
    out = tmp_path / "out"
    import shutil

    shutil.copytree(
        root / "out" / "checkpoints", out / "checkpoints"
    )  # the fixture's checkpoint, not touched
    proc = ok(elastic("train", *args, f"outputs={out}", "method.gamma=0.01", cwd=root))
    said = " ".join(proc.stderr.split())
    assert "saliency targets from" in said and "replaced the adapler checkpoint" in said
    meta = json.loads(
        (out / "checkpoints" / "sst2" / "adapler" / "tiny-bert" / "seed42" / "meta.json").read_text()
    )
    assert meta["shape"] == "length_reducing"


def test_calibrate_chooses_an_eta_multiplier(adapler):
    root, _ = adapler
    calib = json.loads((_ckpt(root) / "calibration.json").read_text())
    assert calib["rule"] == "token_drop" and calib["speed_column"] == "flops_speedup"
    assert calib["threshold"] in [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
    if calib["target_met"]:
        assert calib["score"] >= calib["reference_score"] - 0.01 - 1e-9


def test_evaluate_logs_tokens_per_layer_flops_and_latency(adapler):
    import mlflow

    root, _ = adapler
    runs = _runs(root)
    ev = runs.query("`tags.elastic.stage` == 'evaluate'").iloc[0]
    assert ev["status"] == "FINISHED" and ev["params.exit.threshold_source"] == "calibration"
    assert ev["metrics.adaptive_agreement"] == 1.0  # timed batches drop the same tokens, same predictions
    for key in ("flops_speedup", "latency_speedup_p50", "throughput_speedup", "mean_tokens_last_layer"):
        assert ev[f"metrics.{key}"] == ev[f"metrics.{key}"], key
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(ev["run_id"], "tokens_kept")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    kept = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert all(a >= b for a, b in zip(kept, kept[1:], strict=False))  # tokens only leave
    assert kept[-1] == pytest.approx(ev["metrics.mean_tokens_last_layer"])
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=ev["run_id"], tracking_uri=mlflow.get_tracking_uri())
    )
    assert (local / "validation" / "layer_tokens.png").is_file() and (
        local / "validation" / "threshold_curve.csv"
    ).is_file()
    import pandas as pd

    curve = pd.read_csv(local / "validation" / "threshold_curve.csv")
    # every point a real pass: scale 0 keeps every token, a larger one keeps fewer
    assert curve["mean_tokens_last_layer"].is_monotonic_decreasing
    assert curve.iloc[0]["threshold"] == 0.0 and curve.iloc[0]["flops_speedup"] < 1.0  # predictors cost


@pytest.mark.extended  # CI runs a threshold sweep in test_cli.py
def test_the_eta_multiplier_sweep_is_one_parent_with_a_child_per_point(adapler):
    root, args = adapler
    ok(
        elastic(
            "evaluate", *args, "sweep=thresholds", "evaluate.latency=false", "evaluate.grid=false", cwd=root
        )
    )
    runs = _runs(root)
    parents = runs[runs["tags.elastic.sweep"] == "true"]
    assert len(parents) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[0]["run_id"]]
    by_t = children.assign(t=children["params.exit.threshold"].astype(float)).sort_values("t")
    assert by_t["t"].tolist() == [0.0, 1.0, 3.0]
    assert by_t["metrics.flops_speedup"].is_monotonic_increasing


@pytest.mark.extended  # (the same check in-process: tests/test_bad_input_config.py)
def test_a_backbone_that_cannot_drop_tokens_is_a_one_line_error(tmp_path):
    # (the other settings AdapLeR refuses are checked at composition: tests/test_bad_input_config.py)
    args = [a for a in ARGS if not a.startswith("backbone=")]
    proc = elastic("train", *args, "backbone=tiny-deberta", f"outputs={tmp_path}", cwd=tmp_path)
    _one_line_error(proc, "backbone.family=deberta", "albert, bert, distilbert, mpnet families")
