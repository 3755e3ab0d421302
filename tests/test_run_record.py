"""What a stage run says about itself (elastic_cli.run_record): names, params, links."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic_cli import run_record
from elastic_cli.tracking import flatten


@pytest.mark.parametrize(
    ("threshold", "text"), [(0.9, "0.90"), (0.95, "0.95"), (0.875, "0.875"), (3.0, "3"), (1.5, "1.50")]
)
def test_threshold_text(threshold: float, text: str):
    assert run_record.threshold_text(threshold) == text


def test_run_names_say_what_differs():
    assert run_record.run_name("evaluate", "sweet", "mpnet-base", "maxprob", 0.9) == (
        "evaluate sweet mpnet-base maxprob t=0.90"
    )
    assert run_record.run_name("evaluate", "pabee", "minilm-l6", "patience", 3) == (
        "evaluate pabee minilm-l6 patience t=3"
    )
    assert run_record.run_name("calibrate", "sweet", "mpnet-base", "maxprob", None) == (
        "calibrate sweet mpnet-base maxprob"
    )
    assert run_record.run_name("train", "sweet", "mpnet-base", "maxprob", 0.9) == "train sweet mpnet-base"


TRAINED = {
    "stage": "train",
    "seed": 7,
    "outputs": "outputs",
    "ckpt": None,
    "method": {"name": "sweet", "exit": {"name": "maxprob", "threshold": None}},
    "train": {"lr": 3e-5},
    "task": {"name": "sst2", "max_train_samples": 2000, "data_dir": "/data/sst2"},
    "evaluate": {"latency_samples": 200},
    "device": {"name": "cuda"},
    "tracking": {"enabled": True},
}
EVALUATE = {
    **TRAINED,
    "stage": "evaluate",
    "seed": 7,
    "method": {"name": "sweet", "exit": {"name": "entropy", "threshold": 0.3}},
    "train": {"lr": 2e-5},
    "task": {"name": "sst2", "max_train_samples": None, "data_dir": "/other/sst2"},
    "evaluate": {"latency_samples": 50},
    "device": {"name": "cpu"},
}


def test_evaluate_params_are_the_checkpoint_beside_the_stage_settings(tmp_path: Path):
    record = run_record.CheckpointRecord(tmp_path, "sha256:abc", "run1", TRAINED)
    params = flatten(run_record.run_params(EVALUATE, record))
    # what the model is: the checkpoint's training config, not the evaluate command's
    assert params["train.lr"] == "3e-05" and params["task.max_train_samples"] == "2000"
    assert params["seed"] == "7" and params["method.name"] == "sweet"
    assert "method.exit.name" not in params and "tracking.enabled" not in params
    # what was measured: the stage's own settings under their own names
    assert params["exit.name"] == "entropy" and params["exit.threshold"] == "0.3"
    assert params["data.data_dir"] == "/other/sst2" and params["data.max_train_samples"] == "None"
    assert params["evaluate.latency_samples"] == "50" and params["device.name"] == "cpu"
    assert params["checkpoint.path"] == str(tmp_path) and params["checkpoint.weights"] == "sha256:abc"
    assert params["stage"] == "evaluate"


def test_an_unset_threshold_is_not_logged_as_none(tmp_path: Path):
    calibrated = {**EVALUATE, "method": {"name": "sweet", "exit": {"name": "maxprob", "threshold": None}}}
    params = flatten(
        run_record.run_params(calibrated, run_record.CheckpointRecord(tmp_path, "", "", TRAINED))
    )
    assert "exit.threshold" not in params and params["exit.name"] == "maxprob"


def test_train_params_are_its_config():
    params = flatten(run_record.run_params(TRAINED, None))
    assert params["method.exit.name"] == "maxprob" and params["train.lr"] == "3e-05"
    assert "checkpoint.path" not in params


def test_without_a_saved_config_the_stage_config_stands_in(tmp_path: Path):
    params = flatten(run_record.run_params(EVALUATE, run_record.CheckpointRecord(tmp_path, "w", "", None)))
    assert params["train.lr"] == "2e-05" and params["exit.name"] == "entropy"


def test_sweep_keys_map_to_the_logged_names():
    assert run_record.logged_name("method.exit.threshold") == "exit.threshold"
    assert run_record.logged_name("task.max_eval_samples") == "data.max_eval_samples"
    assert run_record.logged_name("train.lr") == "train.lr"


def test_links_point_at_the_ui_of_the_store():
    assert run_record.run_link("sqlite:////x/mlflow.db", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    )
    assert run_record.run_link("http://mlflow.lab:8080/", "3", "abc") == (
        "http://mlflow.lab:8080/#/experiments/3/runs/abc"
    )
    assert run_record.ui_command("http://mlflow.lab:8080") == ""
    assert run_record.run_link("sqlite:////x/mlflow.db", "3", "abc", "http://gpu-box:8080/") == (
        "http://gpu-box:8080/#/experiments/3/runs/abc"
    )
    note = run_record.train_run_note(
        run_record.CheckpointRecord(Path("/c"), "sha256:0123456789abcdef", "r9", None), "2"
    )
    assert "[r9](#/experiments/2/runs/r9)" in note and "0123456789ab" in note


def test_saved_config_that_is_missing_or_damaged_is_none(tmp_path: Path):
    assert run_record.read_saved_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("train: [unclosed")
    assert run_record.read_saved_config(tmp_path) is None
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.1\n")
    assert run_record.read_saved_config(tmp_path) == {"train": {"lr": 0.1}}
