"""A method defined outside the package (tests/plugins/toy_method.py and its YAML) registers its schema and
objective, and trains, calibrates and evaluates through the CLI like the package's own methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from synthetic import write_synthetic_task
from test_cli import TINY, elastic, ok

from elastic_cli.methods import METHODS, build_method
from elastic_cli.methods.objectives import per_exit_losses
from elastic_cli.signals import ExitSignals

PLUGINS = Path(__file__).resolve().parent / "plugins"
ENV = {"ELASTIC_PLUGINS": "toy_method", "PYTHONPATH": str(PLUGINS)}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    import toy_method

    return toy_method


def test_the_plugin_registers_its_method_schema_and_objective(toy):
    assert METHODS.get("toy") is toy.Toy
    method = build_method(toy.ToyConfig(name="toy", objective="final_heavy", final_weight=3.0))
    assert method.cfg.final_weight == 3.0  # typed over its own schema: no downcast
    logits, labels = torch.randn(5, 3, 2), torch.tensor([0, 1, 1, 0, 1])
    stage = method.stages()[0]
    value = method.loss(method.objective(stage, [1, 2, 3]), ExitSignals(logits), labels, 0)
    per_exit = per_exit_losses(logits, labels)
    torch.testing.assert_close(value, per_exit[0] + per_exit[1] + 3.0 * per_exit[2])


@pytest.mark.slow
def test_a_method_outside_the_package_runs_the_pipeline(tmp_path: Path):
    write_synthetic_task(tmp_path / "data", n_train=600, n_dev=160, seed=0)
    args = [
        "method=toy",
        "method.final_weight=3.0",
        *(a for a in TINY if not a.startswith("method=")),
        f"task.data_dir={tmp_path / 'data'}",
        "train.epochs=4",
        "evaluate.latency_samples=8",
    ]
    for stage in ("train", "calibrate", "evaluate"):
        ok(elastic(stage, *args, cwd=tmp_path, env=ENV))
    ckpt = tmp_path / "outputs" / "checkpoints" / "sst2" / "toy" / "tiny-bert" / "seed42"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["method"] == "toy" and meta["exit_layers"] == [1, 2, 3, 4]
    assert "final_weight: 3.0" in (ckpt / "config.yaml").read_text()
    assert (ckpt / "calibration.json").is_file()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sst2"])
    assert sorted(runs["tags.elastic.stage"]) == ["calibrate", "evaluate", "train"]
    assert set(runs["status"]) == {"FINISHED"}
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    assert ev["params.method.final_weight"] == "3.0"
    assert ev["metrics.accuracy"] > 0.6
    assert ev["metrics.adaptive_agreement"] == 1.0
    # the plug-in's own range and schema hold as the package's do
    bad = elastic("train", *args, "method.final_weight=-1", cwd=tmp_path, env=ENV)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: method.final_weight=-1.0 must be > 0 (the weight of the final exit's loss)"
    ]


@pytest.mark.slow
def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path: Path):
    proc = elastic("train", "method=toy", cwd=tmp_path, env={"ELASTIC_PLUGINS": "no_such_plugin"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ELASTIC_PLUGINS names 'no_such_plugin'" in lines[0], proc.stderr
