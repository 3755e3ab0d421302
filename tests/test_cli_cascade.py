"""Cascades through the CLI as a user runs them: E-LANG's swift/super pair with different tokenizers,
reuse of a trained static checkpoint, SWEET's multi-model baseline, the swift/super split in MLflow
(runs and a sweep's summary), and bad input to a cascade as a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, _pipeline, elastic, ok

pytestmark = pytest.mark.slow

BASE = [a for a in TINY if not a.startswith("method=")] + ["train.epochs=4", "evaluate.latency_samples=8"]
# swift: a 2-layer MPNet with its own vocabulary and special tokens; super: the 4-layer tiny BERT
ELANG = ["method=elang", "method.swift=tiny-mpnet", "method.swift.tiny.num_layers=2",
         "method.swift.tiny.vocab_size=300"]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cascade")
    write_synthetic_task(root / "data", n_train=900, n_dev=240, seed=0)
    return root


def _runs(out: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["sst2"])


@pytest.fixture(scope="module")
def elang_run(workdir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("elang") / "out"
    _pipeline(workdir, *ELANG, *BASE, f"task.data_dir={workdir / 'data'}", f"outputs={out}")
    return out


def test_elang_trains_both_models_and_reports_the_split(elang_run: Path):
    folder = elang_run / "checkpoints" / "sst2" / "elang" / "tiny-bert" / "seed42"
    meta = json.loads((folder / "cascade.json").read_text())
    assert [m["name"] for m in meta["members"]] == ["swift", "super"]
    swift = json.loads((folder / "members" / "swift" / "meta.json").read_text())
    sup = json.loads((folder / "members" / "super" / "meta.json").read_text())
    assert (swift["family"], swift["exit_layers"]) == ("mpnet", [2])
    assert (sup["family"], sup["exit_layers"]) == ("bert", [4])
    # each model keeps its own tokenizer: the vocabularies differ
    vocab = {
        name: json.loads((folder / "members" / name / "backbone" / "tokenizer.json").read_text())["model"][
            "vocab"
        ]
        for name in ("swift", "super")
    }
    # same tokens, other ids (MPNet puts [PAD] at 1, BERT at 0): one tokenisation could not serve both
    assert vocab["swift"]["[PAD]"] != vocab["super"]["[PAD]"]

    calib = json.loads((folder / "calibration.json").read_text())
    assert calib["rule"] == "energy" and calib["exits"] == ["swift", "super"]
    assert calib["exit_layers"] == [2, 6]  # layers run: swift alone, swift + super

    runs = _runs(elang_run)
    assert set(runs["status"]) == {"FINISHED"}
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    swift_f, super_f = ev["metrics.exit_fraction_swift"], ev["metrics.exit_fraction_super"]
    assert swift_f + super_f == pytest.approx(1.0)
    assert ev["metrics.super_fraction"] == pytest.approx(super_f)
    for name in ("swift", "super"):  # each model alone on the same examples
        assert 0.5 < ev[f"metrics.exit_accuracy_{name}"] <= 1.0
    assert ev["metrics.accuracy"] > 0.6
    assert ev["metrics.adaptive_agreement"] == 1.0
    assert ev["metrics.latency_static_p50_ms"] > 0 and ev["metrics.latency_adaptive_p50_ms"] > 0
    # FLOPs: the swift model on every example, the super model on the routed ones, against the super alone
    assert ev["metrics.flops_speedup"] > 0
    train = runs[runs["tags.elastic.stage"] == "train"].iloc[0]
    assert train["metrics.swift/best_accuracy"] > 0.5 and train["metrics.super/best_accuracy"] > 0.5


def test_elang_split_matches_the_energy_rule_on_the_predictions(elang_run: Path):
    """The logged split is the rule's: at the calibrated threshold, the swift fraction is the fraction
    of examples whose swift energy reaches it (checked from the logged predictions' exit column)."""
    import mlflow

    runs = _runs(elang_run)
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    path = mlflow.artifacts.download_artifacts(
        run_id=ev["run_id"], artifact_path="validation/predictions.csv"
    )
    import pandas as pd

    preds = pd.read_csv(path)
    assert set(preds["exit"]) <= {"swift", "super"}
    assert (preds["exit"] == "swift").mean() == pytest.approx(ev["metrics.exit_fraction_swift"])
    # histogram per model: model 1 (swift), model 2 (super)
    client = mlflow.tracking.MlflowClient()
    hist = {m.step: m.value for m in client.get_metric_history(ev["run_id"], "exit_count")}
    assert hist == {1: (preds["exit"] == "swift").sum(), 2: (preds["exit"] == "super").sum()}


@pytest.mark.extended  # a second cascade trained end to end; the content check: test_cascade.py
def test_elang_reuses_a_static_checkpoint_as_super(workdir: Path, tmp_path: Path):
    out = tmp_path / "out"
    data = f"task.data_dir={workdir / 'data'}"
    ok(elastic("train", "method=static", *BASE, data, f"outputs={out}", cwd=workdir))
    static = out / "checkpoints" / "sst2" / "static" / "tiny-bert" / "seed42"
    reuse = [
        *ELANG,
        f"method.super_ckpt={static}",
        "calibrate.target=super_fraction",
        "calibrate.super_fraction=0.3",
    ]
    _pipeline(workdir, *reuse, *BASE, data, f"outputs={out}")
    folder = out / "checkpoints" / "sst2" / "elang" / "tiny-bert" / "seed42"
    meta = json.loads((folder / "cascade.json").read_text())
    assert meta["members"][1]["folder"] == str(static.resolve())
    assert not (folder / "members" / "super").exists()  # referenced, not copied or retrained
    calib = json.loads((folder / "calibration.json").read_text())
    assert calib["target"] == "super_fraction" and calib["super_fraction"] <= 0.3

    # the reused checkpoint is retrained afterwards, with another lr: the cascade refuses to run on changed
    # weights (retrained with the same settings it gets the same weights, bit for bit, and is accepted:
    # the cascade checks the weights' content hash)
    ok(elastic("train", "method=static", *BASE, data, f"outputs={out}", "train.lr=1e-3", cwd=workdir))
    proc = elastic("evaluate", *reuse, *BASE, data, f"outputs={out}", cwd=workdir)
    _one_line_error(proc, "rewritten", "elastic train")


@pytest.mark.extended  # a cascade runs end to end in CI with E-LANG
def test_multi_model_counts_every_model_that_ran(workdir: Path, tmp_path: Path):
    out = tmp_path / "out"
    _pipeline(
        workdir,
        "method=multi_model",
        "method.exit_layers=[1,2,4]",
        *BASE,
        f"task.data_dir={workdir / 'data'}",
        f"outputs={out}",
    )
    folder = out / "checkpoints" / "sst2" / "multi_model" / "tiny-bert" / "seed42"
    members = json.loads((folder / "cascade.json").read_text())["members"]
    assert [m["name"] for m in members] == ["L1", "L2", "L4"]
    for m, depth in zip(members, (1, 2, 4)):
        config = json.loads((folder / m["folder"] / "backbone" / "config.json").read_text())
        assert config["num_hidden_layers"] == depth  # the backbone's first k layers, saved as such
    ev = _runs(out)
    ev = ev[ev["tags.elastic.stage"] == "evaluate"].iloc[0]
    fractions = [ev[f"metrics.exit_fraction_L{k}"] for k in (1, 2, 4)]
    assert sum(fractions) == pytest.approx(1.0)
    # nothing is reused: leaving at model 2 costs 1 + 2 layers, at model 3 costs 1 + 2 + 4
    expected_layers = fractions[0] * 1 + fractions[1] * 3 + fractions[2] * 7
    assert ev["metrics.mean_exit_layer"] == pytest.approx(expected_layers)
    assert ev["metrics.layer_speedup"] == pytest.approx(4 / expected_layers)
    assert ev["metrics.adaptive_agreement"] == 1.0
    assert ev["metrics.accuracy"] > 0.6


@pytest.mark.extended  # CI runs a threshold sweep in test_cli.py
def test_sweep_summary_holds_the_split(elang_run: Path, workdir: Path):
    proc = elastic(
        "evaluate",
        "-m",
        *ELANG,
        *BASE,
        f"task.data_dir={workdir / 'data'}",
        f"outputs={elang_run}",
        "evaluate.latency=false",
        "method.exit.threshold=-100,100",
        cwd=workdir,
    )
    ok(proc)
    import mlflow
    import pandas as pd

    runs = _runs(elang_run)
    parent = runs[runs.get("tags.elastic.sweep") == "true"].iloc[0]
    summary = pd.read_csv(
        Path(mlflow.artifacts.download_artifacts(run_id=parent["run_id"], artifact_path="summary.csv"))
    ).sort_values("method.exit.threshold")
    # t = -100: everything stays with the swift model; t = 100: everything goes on to the super model
    assert summary["exit_fraction_swift"].tolist() == [1.0, 0.0]
    assert summary["super_fraction"].tolist() == [0.0, 1.0]


def test_bad_cascade_input_is_one_line(workdir: Path, tmp_path: Path):
    data = f"task.data_dir={workdir / 'data'}"
    out = f"outputs={tmp_path}"
    _one_line_error(elastic("train", *ELANG, *BASE, data, out, "method.swift=nope", cwd=workdir), "nope")
    missing = tmp_path / "nowhere"
    _one_line_error(
        elastic("train", *ELANG, *BASE, data, out, f"method.swift_ckpt={missing}", cwd=workdir),
        "no checkpoint",
    )


@pytest.mark.extended  # (one-line errors of a cascade in CI: the two above; the suite's 20 minutes)
def test_more_bad_cascade_input_is_one_line(workdir: Path, tmp_path: Path):
    data = f"task.data_dir={workdir / 'data'}"
    out = f"outputs={tmp_path}"
    _one_line_error(
        elastic("train", "method=elang", *BASE, data, out, "method.exit.temperature=0", cwd=workdir),
        "temperature",
    )
    _one_line_error(
        elastic("train", "method=multi_model", *BASE, data, out, "+method.member_ckpts.L9=x", cwd=workdir),
        "member_ckpts",
    )


@pytest.mark.real
def test_real_swift_and_super_with_different_tokenizers(tmp_path: Path):
    """minilm-l3 (BERT WordPiece) routes to mpnet-base (MPNet's vocabulary) on real SST-2 sentences: a
    few training steps only, enough to check that each model reads its own tokenisation and that the
    real cascade path agrees with the simulation."""
    from conftest import REPO

    data = REPO.parent / "shared" / "assets" / "data" / "sst2"
    if not (data / "dev.tsv").is_file():
        pytest.skip(f"no SST-2 files in {data}")
    args = [
        "method=elang",
        "backbone=mpnet-base",
        "method.swift=minilm-l3",
        "task=sst2",
        f"task.data_dir={data}",
        "task.max_train_samples=200",
        "task.max_eval_samples=96",
        "task.max_seq_length=48",
        "train.max_steps=4",
        "train.batch_size=8",
        "method.exit.threshold=2.5",
        "evaluate.latency_samples=16",
        "evaluate.latency_warmup=1",
        "evaluate.throughput_batches=1",
        "device.throughput_batch_size=8",
        f"outputs={tmp_path}",
    ]
    ok(elastic("train", *args, cwd=tmp_path))
    ok(elastic("evaluate", *args, cwd=tmp_path))
    ev = _runs(tmp_path)
    ev = ev[ev["tags.elastic.stage"] == "evaluate"].iloc[0]
    assert ev["metrics.adaptive_agreement"] == 1.0
    assert ev["metrics.exit_fraction_swift"] + ev["metrics.exit_fraction_super"] == pytest.approx(1.0)
    # mpnet-base is ~12x the FLOPs of minilm-l3: the cascade's cost follows its split
    assert (
        ev["metrics.adaptive_gflops_per_example"]
        > ev["metrics.static_gflops_per_example"] * (ev["metrics.exit_fraction_super"])
    )
