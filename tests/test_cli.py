"""End to end through the `elastic` console script, as a user runs it: train -> calibrate -> evaluate
on a tiny random model and a synthetic task, then a threshold multirun; MLflow is read back and
the logged values are checked. Bad input ends in one line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import write_synthetic_task

pytestmark = pytest.mark.slow

TINY = [
    "method=early_exit",
    "backbone=tiny-bert",
    "task=sst2",
    "train.lr=2e-3",
    "train.epochs=6",
    "train.batch_size=32",
    "train.warmup_ratio=0.0",
    "task.max_seq_length=32",
    "evaluate.latency_samples=24",
    "evaluate.latency_warmup=2",
    "evaluate.throughput_batches=2",
    "device.throughput_batch_size=8",
    "device.threads=1",
]


def elastic(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    # a user's MLFLOW_TRACKING_URI must not leak in: the tests read the default sqlite store back
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**base, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "elastic_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    write_synthetic_task(root / "data", n_train=900, n_dev=240, seed=0)
    return root


# calibrate and evaluate without the training settings: their runs must still log the checkpoint's
TINY_STAGE = [arg for arg in TINY if not arg.startswith("train.")]


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    data = f"task.data_dir={workdir / 'data'}"
    for stage, args in (("train", TINY), ("calibrate", TINY_STAGE), ("evaluate", TINY_STAGE)):
        proc = ok(elastic(stage, *args, data, cwd=workdir))
        (workdir / f"{stage}.stderr").write_text(proc.stderr)
    return workdir


def _runs(workdir: Path, experiment: str = "sst2"):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def test_pipeline_writes_checkpoint_and_calibration(trained: Path):
    ckpt = trained / "outputs" / "checkpoints" / "sst2" / "early_exit" / "tiny-bert" / "seed42"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.yaml").is_file()
    assert (ckpt / "backbone" / "config.json").is_file()
    calib = json.loads((ckpt / "calibration.json").read_text())
    assert calib["rule"] == "maxprob" and 0.0 <= calib["threshold"] <= 1.0
    assert len(calib["temperatures"]) == 4 and all(t > 0 for t in calib["temperatures"])
    # the calibrated threshold keeps accuracy within a point of the final exit, on the calibration split
    if calib["target_met"]:
        assert calib["score"] >= calib["reference_score"] - 0.01 - 1e-9


def test_mlflow_holds_every_stage_and_the_metrics(trained: Path):
    runs = _runs(trained)
    stages = sorted(runs["tags.elastic.stage"].tolist())
    assert stages == ["calibrate", "evaluate", "train"]
    assert set(runs["status"]) == {"FINISHED"}
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    assert ev["tags.elastic.method"] == "early_exit" and ev["tags.elastic.backbone"] == "tiny-bert"
    # a learnable task: the tiny model clearly beats chance (0.5)
    assert ev["metrics.accuracy"] > 0.7
    assert ev["metrics.validation/accuracy"] == ev["metrics.accuracy"]
    for key in [
        "layer_speedup",
        "flops_speedup",
        "mean_exit_layer",
        "latency_static_p50_ms",
        "latency_adaptive_p50_ms",
        "latency_static_p90_ms",
        "latency_speedup_mean",
        "throughput_static",
        "throughput_adaptive",
        "exit_accuracy_L1",
        "exit_accuracy_L4",
    ]:
        assert f"metrics.{key}" in runs.columns and ev[f"metrics.{key}"] == ev[f"metrics.{key}"], key
    assert 1.0 <= ev["metrics.layer_speedup"] <= 4.0
    # the latency speed-up beside the FLOPs one is the ratio of the means (of totals, as FLOPs' is)
    assert ev["metrics.latency_speedup_mean"] == pytest.approx(
        ev["metrics.latency_static_mean_ms"] / ev["metrics.latency_adaptive_mean_ms"]
    )
    assert 1.0 <= ev["metrics.mean_exit_layer"] <= 4.0
    # the real early-exit path agrees with the simulation on cached logits
    assert ev["metrics.adaptive_agreement"] == 1.0
    # the oracles: the consistent one keeps full depth's accuracy, the correct one beats every exit
    assert ev["metrics.oracle_consistency_accuracy"] == ev["metrics.exit_accuracy_L4"]
    assert ev["metrics.oracle_correct_accuracy"] >= max(
        ev[f"metrics.exit_accuracy_L{k}"] for k in range(1, 5)
    )
    assert ev["metrics.oracle_consistency_flops_speedup"] >= 1.0
    # (the rule may lose up to 1 point, the consistency oracle none: the ratio can pass 1)
    assert ev["metrics.oracle_room_ratio"] > 0
    tr = runs[runs["tags.elastic.stage"] == "train"].iloc[0]
    assert tr["params.seed"] == "42" and tr["metrics.train/loss"] == tr["metrics.train/loss"]
    # the optimizer steps' rate, without the epochs' calibration scoring: a few hundred examples/s here
    assert 1 < tr["metrics.train/examples_per_second"] < 1e6


def test_evaluate_run_says_what_it_evaluated(trained: Path):
    """Its params are the checkpoint's training config (not the evaluate command's defaults: lr 2e-5,
    epochs 3), its own settings are exit.*, data.*, evaluate.*, and it links the train run."""
    from mlflow import MlflowClient

    from elastic_cli import run_record, tracking

    runs = _runs(trained)
    by_stage = {row["tags.elastic.stage"]: row for _, row in runs.iterrows()}
    ev, cal, tr = by_stage["evaluate"], by_stage["calibrate"], by_stage["train"]
    ckpt = (trained / "outputs" / "checkpoints" / "sst2" / "early_exit" / "tiny-bert" / "seed42").resolve()
    saved = run_record.read_saved_config(ckpt)
    assert saved is not None and saved["train"]["lr"] == 2e-3
    model = tracking.flatten(run_record.model_params(saved))
    for run in (ev, cal):
        logged = {k.removeprefix("params."): v for k, v in run.items() if k.startswith("params.")}
        assert {k: logged.get(k) for k in model} == model
        assert logged["train.lr"] == "0.002" and float(logged["train.epochs"]) == 6  # evaluate: 3
        assert logged["checkpoint.path"] == str(ckpt)
        meta = json.loads((ckpt / "meta.json").read_text())
        assert logged["checkpoint.weights"] == meta["weights"]
        assert logged["exit.name"] == "maxprob" and logged["data.data_dir"] == str(trained / "data")
        assert run["tags.elastic.train_run_id"] == tr["run_id"] == meta["train_run_id"]
        link = f"(#/experiments/{tr['experiment_id']}/runs/{tr['run_id']})"
        assert link in run["tags.mlflow.note.content"]
    assert "params.evaluate.latency_samples" in ev and ev["params.evaluate.latency_samples"] == "24"
    calib = json.loads((ckpt / "calibration.json").read_text())
    assert float(ev["params.exit.threshold"]) == pytest.approx(calib["threshold"], abs=1e-12)
    assert ev["params.exit.threshold_source"] == "calibration"
    # names that say what differs, and an experiment that opens on its runs
    assert tr["tags.mlflow.runName"] == "train early_exit tiny-bert"
    assert cal["tags.mlflow.runName"] == "calibrate early_exit tiny-bert maxprob"
    threshold = run_record.threshold_text(calib["threshold"])
    assert ev["tags.mlflow.runName"] == f"evaluate early_exit tiny-bert maxprob t={threshold}"
    experiment = MlflowClient().get_experiment_by_name("sst2")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "sst2" in experiment.tags["mlflow.note.content"]
    # every stage ends with its run id and where the UI shows it; Hydra's job log holds the same lines
    for stage, run in (("train", tr), ("calibrate", cal), ("evaluate", ev)):
        stderr = (trained / f"{stage}.stderr").read_text()
        link = f"{stage} run {run['run_id']}: http://127.0.0.1:5000/#/experiments/{run['experiment_id']}"
        assert link in stderr
        (job_log,) = (trained / "outputs" / "runs").glob(f"*_{stage}_sst2_early_exit/{stage}.log")
        assert link in job_log.read_text()
    assert "accuracy" in job_log.read_text() and "FLOPs speed-up" in job_log.read_text()


def test_exit_histogram_and_predictions_are_logged(trained: Path):
    import mlflow
    from mlflow.tracking import MlflowClient

    runs = _runs(trained)
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    client = MlflowClient()
    hist = client.get_metric_history(ev["run_id"], "exit_count")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]
    assert sum(m.value for m in hist) == 240
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=ev["run_id"], tracking_uri=mlflow.get_tracking_uri())
    )
    names = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert "validation/predictions.csv" in names and "validation/exit_histogram.png" in names
    assert "exit_histogram.png" not in names  # the split's files once, not again at the top
    import pandas as pd

    preds = pd.read_csv(local / "validation" / "predictions.csv")
    assert len(preds) == 240 and set(preds["exit_layer"]) <= {1, 2, 3, 4}
    # the logged accuracy is the accuracy of the logged predictions
    assert abs((preds["prediction"] == preds["label"]).mean() - ev["metrics.accuracy"]) < 1e-9


def test_threshold_sweep_is_one_parent_with_children(trained: Path):
    data = f"task.data_dir={trained / 'data'}"
    proc = ok(
        elastic("evaluate", *TINY_STAGE, data, "sweep=thresholds", "evaluate.latency=false", cwd=trained)
    )
    runs = _runs(trained)
    parents = runs[runs["tags.elastic.sweep"] == "true"] if "tags.elastic.sweep" in runs else runs.iloc[0:0]
    assert len(parents) == 1
    parent_id = parents.iloc[0]["run_id"]
    children = runs[runs.get("tags.mlflow.parentRunId") == parent_id]
    assert len(children) == 8
    thresholds = sorted(float(t) for t in children["params.exit.threshold"])
    assert thresholds == [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99]
    # a higher threshold never exits earlier on average
    by_t = children.assign(t=children["params.exit.threshold"].astype(float)).sort_values("t")
    assert by_t["metrics.mean_exit_layer"].is_monotonic_increasing
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(run_id=parent_id, tracking_uri=mlflow.get_tracking_uri())
    )
    assert (local / "summary.csv").is_file() and (local / "pareto.png").is_file()
    parent = parents.iloc[0]
    assert parent["status"] == "FINISHED"
    # the parent is named and tagged like its children, with their shared params (the checkpoint's)
    assert parent["tags.mlflow.runName"] == "sweep evaluate early_exit tiny-bert maxprob over exit.threshold"
    assert parent["tags.elastic.method"] == "early_exit" and parent["tags.elastic.backbone"] == "tiny-bert"
    assert parent["params.train.lr"] == "0.002" and parent["params.exit.name"] == "maxprob"
    assert (
        "params.exit.threshold" not in parent
        or parent["params.exit.threshold"] != parent["params.exit.threshold"]
    )
    assert sorted(children["tags.mlflow.runName"])[0] == "evaluate early_exit tiny-bert maxprob t=0.50"
    # the terminal's summary: one table of every child, the parent's link, the files written
    lines = proc.stderr.splitlines()
    assert "sweep: 8 finished runs" in proc.stderr
    table = lines[next(i for i, line in enumerate(lines) if "sweep: 8 finished runs" in line) :]
    rows = [line for line in table if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == [
        "0.5",
        "0.6",
        "0.7",
        "0.8",
        "0.85",
        "0.9",
        "0.95",
        "0.99",
    ]
    assert f"sweep parent run {parent_id} (FINISHED): http://127.0.0.1:5000/#/experiments/" in proc.stderr
    written = [Path(line.strip()) for line in lines if line.strip().endswith(("summary.csv", "pareto.png"))]
    assert [p.name for p in written] == ["summary.csv", "pareto.png"]
    assert (trained / written[0]).read_text() == (local / "summary.csv").read_text()


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["method=nope"], ["method/nope", "early_exit"]),
        (["train.batch_size=big"], ["train.batch_size", "big"]),
        (["method.exit.threshold=1.5"], ["outside [0.0, 1.0]"]),
        (["task.data_dir=/no/such/folder"], ["/no/such/folder"]),
        (["-m", "seed=1,2", "--cfg", "job"], ["drop -m"]),  # Hydra's own answer is a traceback
    ],
)
def test_bad_input_is_one_line_exit_2(workdir: Path, args, needles):
    _one_line_error(elastic("train", *TINY, *args, cwd=workdir), *needles)


def test_int8_of_a_half_precision_model_is_refused_before_loading(trained: Path):
    args = ("device.quantize=int8", "device.dtype=float16", f"task.data_dir={trained / 'data'}")
    _one_line_error(elastic("evaluate", *TINY_STAGE, *args, cwd=trained), "drop device.dtype=float16")


def test_missing_checkpoint(workdir: Path):
    data = f"task.data_dir={workdir / 'data'}"
    _one_line_error(
        elastic("evaluate", *TINY, data, "seed=999", cwd=workdir), "no checkpoint", "elastic train"
    )


def test_hub_id_while_offline_says_use_a_local_folder(workdir: Path):
    data = f"task.data_dir={workdir / 'data'}"
    proc = elastic("train", "backbone=bert-base-uncased", data, "task.max_train_samples=10", cwd=workdir)
    _one_line_error(proc, "bert-base-uncased", "backbone.path")


def test_unreachable_tracking_server(workdir: Path):
    data = f"task.data_dir={workdir / 'data'}"
    proc = elastic("train", *TINY, data, cwd=workdir, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    _one_line_error(proc, "unreachable")


def test_exit_layer_beyond_depth_fails_and_marks_the_run_failed(tmp_path: Path, workdir: Path):
    data = f"task.data_dir={workdir / 'data'}"
    proc = elastic(
        "train", *TINY, data, "method.exit_layers=[2,9]", f"outputs={tmp_path / 'out'}", cwd=workdir
    )
    _one_line_error(proc, "beyond the backbone's 4 layers")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sst2"])
    assert runs["status"].tolist() == ["FAILED"]
    assert not (tmp_path / "out" / "checkpoints").exists() or not any(
        (tmp_path / "out" / "checkpoints").rglob("*.safetensors")
    )


def test_help_lists_the_stages(workdir: Path):
    out = ok(elastic("--help", cwd=workdir)).stdout
    for stage in ("train", "calibrate", "evaluate"):
        assert stage in out
    cfg = ok(elastic("evaluate", "--cfg", "job", "method=static", cwd=workdir)).stdout
    assert "name: static" in cfg


def _pipeline(workdir: Path, *args: str) -> None:
    for stage in ("train", "calibrate", "evaluate"):
        ok(elastic(stage, *args, cwd=workdir))


@pytest.mark.parametrize(
    "method",
    # CI runs a two-stage method end to end; the others' objectives and rules have their unit tests, and
    # `pytest -m ""` runs them all end to end (ELBERT's also checks its calibrated window is enforced)
    [
        *(pytest.param(m, marks=pytest.mark.extended) for m in ("static", "sweet", "pabee")),
        "deebert",
        *(pytest.param(m, marks=pytest.mark.extended) for m in ("fastbert", "elasticbert", "elbert")),
        pytest.param("berxit", marks=pytest.mark.extended),
    ],
)
def test_every_method_runs_the_pipeline(workdir: Path, tmp_path: Path, method: str):
    out = tmp_path / "out"
    args = [a for a in TINY if not a.startswith("method=")]
    extra = ["method.exit.window=2"] if method == "elbert" else []
    common = [f"method={method}", *args, f"task.data_dir={workdir / 'data'}", f"outputs={out}"]
    _pipeline(workdir, *common, *extra, "train.epochs=4", "evaluate.latency_samples=8")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sst2"])
    assert sorted(runs["tags.elastic.stage"]) == ["calibrate", "evaluate", "train"]
    assert set(runs["status"]) == {"FINISHED"}
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    assert ev["tags.elastic.method"] == method
    assert ev["metrics.accuracy"] > 0.6  # every method learns the synthetic task
    assert ev["metrics.adaptive_agreement"] == 1.0
    if method == "elbert":  # a threshold calibrated with one window is not applied under another
        _one_line_error(
            elastic("evaluate", *common, "method.exit.window=3", cwd=workdir),
            "method.exit.window=2 there, 3 here",
            "elastic calibrate",
        )


def _write_regression_task(folder: Path, n_train: int = 600, n_dev: int = 150) -> None:
    """An STS-B-like pair task: the score (0-5) is how many "plus" words the two sentences hold."""
    import random

    rng = random.Random(0)
    filler = [f"word{i}" for i in range(30)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        lines = ["sentence1\tsentence2\tlabel"]
        for _ in range(n):
            score = rng.randint(0, 5)
            words = ["plus"] * score + rng.sample(filler, 10 - score)
            rng.shuffle(words)
            lines.append(f"{' '.join(words[:5])}\t{' '.join(words[5:])}\t{score:.1f}")
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("method", ["pabee", pytest.param("berxit", marks=pytest.mark.extended)])
def test_regression_task_with_patience_and_lte(tmp_path: Path, method: str):
    data = tmp_path / "stsb"
    _write_regression_task(data)
    args = [a for a in TINY if not a.startswith(("method=", "task="))]
    out = tmp_path / method
    _pipeline(
        tmp_path,
        f"method={method}",
        "task=stsb",
        *args,
        f"task.data_dir={data}",
        f"outputs={out}",
        "train.epochs=8",
        "evaluate.latency_samples=8",
    )
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stsb"])
    ev = runs[runs["tags.elastic.stage"] == "evaluate"].iloc[0]
    assert ev["metrics.pearson"] > 0.5, method  # the exits learn the score
    assert "metrics.exit_pearson_L4" in runs.columns
    assert ev["metrics.adaptive_agreement"] == 1.0


@pytest.mark.extended  # check_applicable's refusals: tests/test_exits.py
def test_regression_rejects_probability_rules(tmp_path: Path):
    data = tmp_path / "stsb"
    _write_regression_task(data, n_train=40, n_dev=10)
    args = [a for a in TINY if not a.startswith(("method=", "task="))]
    proc = elastic("train", "method=early_exit", "task=stsb", *args, f"task.data_dir={data}", cwd=tmp_path)
    _one_line_error(proc, "regression", "patience")
    # the static baseline never applies its rule: it trains on a regression task as it is
    ok(elastic("train", "method=static", "task=stsb", *args, f"task.data_dir={data}", cwd=tmp_path))


def test_int8_evaluate_measures_itself_against_float32(trained: Path, tmp_path: Path):
    """device.quantize=int8: the evaluate run is named so, scores the float32 model beside it at the same
    threshold (equal to the float32 run's accuracy), times the float32 static model in the same loop,
    and caches its outputs apart from float32's."""
    ckpt = trained / "outputs" / "checkpoints" / "sst2" / "early_exit" / "tiny-bert" / "seed42"
    cached_before = set((ckpt / "cache").iterdir())
    data = f"task.data_dir={trained / 'data'}"
    proc = ok(
        elastic(
            "evaluate",
            *TINY_STAGE,
            data,
            f"ckpt={ckpt}",
            f"outputs={tmp_path}",
            "device.quantize=int8",
            cwd=trained,
        )
    )
    assert "int8 against float32: accuracy" in proc.stderr
    assert "this precision's static" in proc.stderr
    evaluated = _runs(trained)
    # the fixture's evaluate run: float32 at the calibrated threshold (a sweep's children set theirs)
    (float_run,) = [
        r for _, r in evaluated.iterrows() if r.get("params.exit.threshold_source") == "calibration"
    ]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [r for _, r in mlflow.search_runs(experiment_names=["sst2"], output_format="pandas").iterrows()]
    assert run["tags.mlflow.runName"].endswith(" int8")
    assert run["params.device.quantize"] == "int8"
    assert run["metrics.float32_task_metric"] == float_run["metrics.task_metric"]
    assert abs(run["metrics.task_metric"] - run["metrics.float32_task_metric"]) <= 0.1
    # full depth: the last exit's score, the float32 run's own for the float32 model
    assert run["metrics.full_depth_task_metric"] == run["metrics.exit_accuracy_L4"]
    assert run["metrics.float32_full_depth_task_metric"] == float_run["metrics.exit_accuracy_L4"]
    m = {k[len("metrics.") :]: v for k, v in run.items() if k.startswith("metrics.")}
    assert m["latency_static_float32_mean_ms"] > 0
    assert m["latency_precision_speedup_mean"] == pytest.approx(
        m["latency_static_float32_mean_ms"] / m["latency_static_mean_ms"]
    )
    assert m["latency_combined_speedup_mean"] == pytest.approx(
        m["latency_static_float32_mean_ms"] / m["latency_adaptive_mean_ms"]
    )
    new = set((ckpt / "cache").iterdir()) - cached_before
    assert len(new) == 1  # the int8 outputs; float32's were already there and were reused


def test_a_certified_consistency_target_is_measured_and_said_at_evaluate(trained: Path, tmp_path: Path):
    """calibrate.target=consistency on a copy of the trained checkpoint, then evaluate: the run logs the
    achieved consistency beside the target (1 - epsilon) and the terminal says whether it held."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(
        trained / "outputs" / "checkpoints" / "sst2" / "early_exit" / "tiny-bert" / "seed42", ckpt
    )
    common = [*TINY_STAGE, f"task.data_dir={trained / 'data'}", f"ckpt={ckpt}", f"outputs={tmp_path / 'out'}"]
    certify = ["calibrate.target=consistency", "calibrate.epsilon=0.2", "calibrate.delta=0.2"]
    calibrated = ok(elastic("calibrate", *common, *certify, cwd=trained))
    assert "certified (probability >= 0.80) that at most" in calibrated.stderr
    calib = json.loads((ckpt / "calibration.json").read_text())
    assert calib["target"] == "consistency" and calib["epsilon"] == 0.2
    assert calib["temperatures"] == [1.0] * 4  # a certified threshold fits no temperatures
    proc = ok(elastic("evaluate", *common, "evaluate.latency=false", cwd=trained))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sst2"], output_format="pandas")
    (run,) = [r for _, r in runs.iterrows() if r["tags.mlflow.runName"].startswith("evaluate")]
    assert run["metrics.consistency_target"] == pytest.approx(0.8)
    achieved = run["metrics.consistency"]
    assert 0.0 <= achieved <= 1.0
    verdict = "held" if achieved >= 0.8 else "missed"
    assert (
        f"consistency: {100 * achieved:.1f}% of validation examples keep the final exit's prediction; "
        f"calibrate.target=consistency certified >= 80.0% on data like the calibration split's: {verdict} here"
    ) in " ".join(proc.stderr.split())
