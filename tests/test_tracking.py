"""MLflow tracking: stage runs, their failure status, the exit histogram, and the sweep parent run.

Offline: every store is a SQLite file under pytest's tmp folder. One store serves the whole module
(creating a store runs MLflow's migrations, about 1.5 s); each test writes to its own experiment.
"""

from __future__ import annotations

import io
import socket
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

from elastic_cli import hydra_callbacks, tracking
from elastic_cli.config import RootConfig
from elastic_cli.errors import UserError
from elastic_cli.plots import pareto_mask


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_config(store: Path, task: str, **overrides) -> tuple[RootConfig, DictConfig]:
    raw = OmegaConf.merge(
        OmegaConf.structured(RootConfig),
        {
            "stage": "evaluate",
            "outputs": str(store / "outputs"),
            "method": {"name": "early_exit", "exit": {"threshold": 0.9}},
            "backbone": {"name": "tiny-bert", "family": "bert", "path": "none"},
            "task": {"name": task, "dataset": "local"},
            "tracking": {"uri": f"sqlite:///{store / 'mlflow.db'}"},
        },
        overrides,
    )
    assert isinstance(raw, DictConfig)
    cfg = OmegaConf.to_object(raw)
    assert isinstance(cfg, RootConfig)
    return cfg, raw


def client_for(store: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{store / 'mlflow.db'}")


def runs_of(store: Path, experiment: str):
    client = client_for(store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifact_text(store: Path, run_id: str, path: str) -> str:
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(
        run_id=run_id, artifact_path=path, tracking_uri=f"sqlite:///{store / 'mlflow.db'}"
    )
    return Path(local).read_text()


def test_stage_run_records_params_tags_and_config(store: Path):
    cfg, raw = make_config(store, "params_task")
    with tracking.stage_run(cfg, raw) as run:
        assert tracking.active()
        tracking.log_metrics({"accuracy": 0.75})
        tracking.log_dict({"threshold": 0.9, "layers": [1, 2]}, "calibration.json")
    assert not tracking.active()

    [logged] = runs_of(store, "params_task")
    assert logged.info.run_id == run.info.run_id
    assert logged.info.status == "FINISHED"
    params, tags = logged.data.params, logged.data.tags
    assert params["method.exit.threshold"] == "0.9"
    assert params["method.name"] == "early_exit" and params["backbone.name"] == "tiny-bert"
    assert params["task.text_columns"] == "['sentence']"
    assert params["backbone.tiny"] == "None"
    assert tags["elastic.stage"] == "evaluate" and tags["elastic.method"] == "early_exit"
    assert tags["elastic.backbone"] == "tiny-bert" and tags["elastic.task"] == "params_task"
    assert tags["elastic.seed"] == "42"
    assert "mlflow.parentRunId" not in tags  # a single run is top-level
    assert logged.data.metrics["accuracy"] == 0.75
    # the artifacts live under <outputs>/mlartifacts, and config.yaml is the resolved config
    assert logged.info.artifact_uri.startswith((store / "outputs" / "mlartifacts").as_uri())
    config = OmegaConf.create(artifact_text(store, run.info.run_id, "config.yaml"))
    assert config.task.name == "params_task" and config.method.exit.threshold == 0.9
    assert '"layers": [' in artifact_text(store, run.info.run_id, "calibration.json")


@pytest.mark.parametrize(
    "error,status",
    [
        (ValueError("boom"), "FAILED"),
        (SystemExit(2), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (SystemExit(0), "FINISHED"),
    ],
    ids=["exception", "exit-2", "interrupt", "exit-0"],
)
def test_stage_run_status_when_the_stage_raises(store: Path, error: BaseException, status: str):
    task = f"raise_{type(error).__name__}_{getattr(error, 'code', '')}"
    cfg, raw = make_config(store, task)
    with pytest.raises(type(error)), tracking.stage_run(cfg, raw):
        raise error
    assert not tracking.active()
    [logged] = runs_of(store, task)
    assert logged.info.status == status


def test_disabled_tracking_logs_nothing(tmp_path: Path):
    cfg, raw = make_config(tmp_path, "disabled_task", tracking={"enabled": False, "uri": None})
    with tracking.stage_run(cfg, raw) as run:
        assert run is None and not tracking.active()
        tracking.log_metrics({"accuracy": 1.0})
        tracking.log_exit_histogram([1, 2], [1, 2])
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_exit_histogram_is_a_metric_per_layer_a_table_and_a_figure(store: Path):
    cfg, raw = make_config(store, "histogram_task")
    with tracking.stage_run(cfg, raw) as run:
        tracking.log_exit_histogram([6, 0, 3, 1], [2, 4, 6, 8], prefix="validation/")
    history = client_for(store).get_metric_history(run.info.run_id, "validation/exit_count")
    assert sorted((m.step, m.value) for m in history) == [(2, 6.0), (4, 0.0), (6, 3.0), (8, 1.0)]
    table = pd.read_csv(io.StringIO(artifact_text(store, run.info.run_id, "validation/exit_histogram.csv")))
    assert table["layer"].tolist() == [2, 4, 6, 8] and table["count"].tolist() == [6, 0, 3, 1]
    assert table["fraction"].tolist() == pytest.approx([0.6, 0.0, 0.3, 0.1])
    artifacts = {a.path for a in client_for(store).list_artifacts(run.info.run_id, "validation")}
    assert "validation/exit_histogram.png" in artifacts


def test_resolve_uri_prefers_config_then_environment_then_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cfg, _ = make_config(tmp_path, "uri_task", tracking={"uri": None}, outputs=str(tmp_path / "out"))
    assert tracking.resolve_uri(cfg) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert (tmp_path / "out").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.resolve_uri(cfg) == "http://tracking.example:5000"
    cfg.tracking.uri = "sqlite:///elsewhere.db"
    assert tracking.resolve_uri(cfg) == "sqlite:///elsewhere.db"


def test_unreachable_server_is_a_user_error_within_seconds():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UserError, match=f"http://127.0.0.1:{port} is unreachable"):
        tracking.ensure_reachable(f"http://127.0.0.1:{port}")
    assert time.monotonic() - start < 5


def test_sqlite_folder_that_cannot_exist_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the folder"):
        tracking.ensure_reachable(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    with pytest.raises(UserError, match="file store"):
        tracking.ensure_reachable(str(tmp_path / "mlruns"))


def sweep_config(store: Path, task: str, sweep_dir: Path) -> DictConfig:
    """The master config a multirun hands its callbacks: the root fields plus the `hydra` node."""
    _, raw = make_config(store, task)
    hydra_node = {
        "hydra": {
            "sweep": {"dir": str(sweep_dir)},
            "overrides": {"task": ["method.exit.threshold=0.5,0.9", "seed=1"]},
            "sweeper": {"params": None},
        }
    }
    merged = OmegaConf.merge(OmegaConf.to_container(raw), hydra_node)
    assert isinstance(merged, DictConfig)
    return merged


def job_overrides(config: DictConfig) -> dict:
    """The config a job of this multirun gets from the overrides the callback left (the parent's id)."""
    [parent] = [o for o in config.hydra.overrides.task if o.startswith("tracking.parent_run_id=")]
    return {"tracking": {"parent_run_id": parent.split("=", 1)[1]}}


def run_child(store: Path, task: str, threshold: float, accuracy: float, speedup: float, job: dict) -> str:
    cfg, raw = make_config(store, task, method={"exit": {"threshold": threshold}}, **job)
    with tracking.stage_run(cfg, raw) as run:
        tracking.log_metrics({"accuracy": accuracy, "flops_speedup": speedup})
        tracking.log_exit_histogram([3, 1], [1, 2])
    return run.info.run_id


def test_sweep_parent_gets_children_summary_and_pareto(store: Path, tmp_path: Path):
    task, sweep_dir = "sweep_task", tmp_path / "multirun"
    callback = hydra_callbacks.MlflowSweepCallback()
    config = sweep_config(store, task, sweep_dir)
    callback.on_multirun_start(config)
    parent_id = tracking.parent_run_id(sweep_dir)
    assert parent_id is not None
    assert not tracking.active()  # the parent is never the job process's active run
    # its id travels in every job's config (to jobs on other nodes too), not only in the sweep folder
    job = job_overrides(config)
    assert job["tracking"]["parent_run_id"] == parent_id
    assert list(config.hydra.overrides.task)[:2] == ["method.exit.threshold=0.5,0.9", "seed=1"]

    child_ids = [run_child(store, task, 0.5, 0.80, 2.5, job), run_child(store, task, 0.9, 0.86, 1.5, job)]
    callback.on_multirun_end(config)

    client = client_for(store)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep evaluate early_exit tiny-bert maxprob over exit.threshold"
    assert (
        parent.data.tags["elastic.method"] == "early_exit"
        and parent.data.tags["elastic.backbone"] == "tiny-bert"
    )
    # the children's params it shares (no checkpoint here: the config's), the swept one left out
    assert parent.data.params["method.name"] == "early_exit" and parent.data.params["seed"] == "42"
    assert "method.exit.threshold" not in parent.data.params and "exit.threshold" not in parent.data.params
    assert parent.data.tags["elastic.sweep"] == "true" and parent.data.tags["elastic.task"] == task
    assert parent.data.tags[hydra_callbacks.SWEEP_KEYS_TAG] == "method.exit.threshold"
    children = runs_of(store, task)[1:]
    assert [c.info.run_id for c in children] == child_ids
    assert all(c.data.tags["mlflow.parentRunId"] == parent_id for c in children)

    summary = pd.read_csv(io.StringIO(artifact_text(store, parent_id, "summary.csv")))
    assert summary["run_id"].tolist() == child_ids
    assert summary["method.exit.threshold"].tolist() == [0.5, 0.9]
    assert summary["accuracy"].tolist() == [0.80, 0.86] and summary["flops_speedup"].tolist() == [2.5, 1.5]
    assert "exit_count" not in summary  # a per-layer series, not a run summary
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"summary.csv", "summary.json", "pareto.png"} <= artifacts
    metrics = parent.data.metrics
    assert metrics["best_accuracy"] == 0.86 and metrics["best_accuracy_flops_speedup"] == 1.5
    assert metrics["max_flops_speedup"] == 2.5 and metrics["max_flops_speedup_accuracy"] == 0.80
    assert metrics["children"] == 2 and metrics["failed_children"] == 0
    assert parent.data.tags["elastic.best_accuracy_run_id"] == child_ids[1]


def test_sweep_parent_fails_when_a_child_fails_or_none_ran(store: Path, tmp_path: Path):
    task = "sweep_failing_task"
    callback = hydra_callbacks.MlflowSweepCallback()
    config = sweep_config(store, task, tmp_path / "one")
    callback.on_multirun_start(config)
    job = job_overrides(config)
    run_child(store, task, 0.5, 0.8, 2.0, job)
    cfg, raw = make_config(store, task, **job)
    with pytest.raises(RuntimeError), tracking.stage_run(cfg, raw):
        raise RuntimeError("a job crashed")
    callback.on_multirun_end(config)
    parent = client_for(store).get_run(tracking.parent_run_id(tmp_path / "one"))
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["children"] == 2 and parent.data.metrics["failed_children"] == 1
    # the failed child is counted, not summarised: summary.csv (MLflow's and the sweep folder's) skips it
    summary = pd.read_csv(io.StringIO(artifact_text(store, parent.info.run_id, "summary.csv")))
    assert summary["status"].tolist() == ["FINISHED"]
    assert (tmp_path / "one" / "summary.csv").read_text() == summary.to_csv(index=False)

    empty = sweep_config(store, task, tmp_path / "empty")
    callback.on_multirun_start(empty)
    callback.on_multirun_end(empty)
    assert client_for(store).get_run(tracking.parent_run_id(tmp_path / "empty")).info.status == "FAILED"


def test_sweep_callback_does_nothing_when_tracking_is_disabled(tmp_path: Path):
    config = sweep_config(tmp_path, "off_task", tmp_path / "multirun")
    config.tracking.enabled = False
    callback = hydra_callbacks.MlflowSweepCallback()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()


def test_swept_keys_are_the_overrides_with_several_values():
    overrides = [
        "method.exit.threshold=0.5,0.9",
        "seed=1",
        "backbone=tiny-bert,tiny-mpnet",
        "task.x=range(1,3)",
    ]
    assert hydra_callbacks.swept_keys(overrides) == ["method.exit.threshold", "backbone", "task.x"]


def fake_child(run_id: str, params: dict[str, str], metrics: dict[str, float], status: str = "FINISHED"):
    """What summarize reads of an MLflow child run."""
    from types import SimpleNamespace

    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name=f"run {run_id}", status=status),
        data=SimpleNamespace(params=params, metrics=metrics),
    )


def test_sweep_summary_of_a_classification_task_is_ranked_by_accuracy():
    children = [
        fake_child(
            "a",
            {"task.metric": "accuracy", "method.exit.threshold": "0.5"},
            {"accuracy": 0.80, "flops_speedup": 2.5},
        ),
        fake_child(
            "b",
            {"task.metric": "accuracy", "method.exit.threshold": "0.9"},
            {"accuracy": 0.86, "flops_speedup": 1.5},
        ),
    ]
    sweep = hydra_callbacks.summarize(children, ["method.exit.threshold"])
    assert sweep.metric == "accuracy" and sweep.label_cols == ["method.exit.threshold"]
    assert sweep.table["accuracy"].tolist() == [0.80, 0.86]
    assert sweep.numbers == {
        "children": 2.0,
        "failed_children": 0.0,
        "best_accuracy": 0.86,
        "best_accuracy_flops_speedup": 1.5,
        "max_flops_speedup": 2.5,
        "max_flops_speedup_accuracy": 0.80,
    }
    assert sweep.best_run_id == "b" and sweep.best_run_tag == "elastic.best_accuracy_run_id"
    assert sweep.points is not None and sweep.points["label"].tolist() == ["0.5", "0.9"]


def test_sweep_summary_of_a_regression_task_is_ranked_by_its_metric():
    """task=stsb (metric pearson_spearman) logs pearson and spearman, no accuracy."""
    params = {"task.metric": "pearson_spearman"}
    children = [
        fake_child(
            run_id,
            {**params, "method.exit.threshold": threshold},
            {"pearson": r, "spearman": r - 0.01, "task_metric": r, "flops_speedup": speedup},
        )
        for run_id, threshold, r, speedup in (("a", "0.1", 0.70, 2.0), ("b", "0.3", 0.85, 1.2))
    ]
    children.append(fake_child("c", {**params, "method.exit.threshold": "0.5"}, {}, status="FAILED"))
    sweep = hydra_callbacks.summarize(children, ["method.exit.threshold"])
    assert sweep.metric == "pearson"
    assert "accuracy" not in sweep.table and sweep.table["pearson"].tolist()[:2] == [0.70, 0.85]
    assert sweep.numbers == {
        "children": 3.0,
        "failed_children": 1.0,
        "best_pearson": 0.85,
        "best_pearson_flops_speedup": 1.2,
        "max_flops_speedup": 2.0,
        "max_flops_speedup_pearson": 0.70,
    }
    assert sweep.best_run_id == "b" and sweep.best_run_tag == "elastic.best_pearson_run_id"
    assert sweep.points is not None and sweep.points["label"].tolist() == ["0.1", "0.3"]


def test_sweep_summary_metric_follows_task_metric():
    def metric_of(*task_metrics: str | None) -> str:
        children = [
            fake_child(str(i), {} if m is None else {"task.metric": m}, {})
            for i, m in enumerate(task_metrics)
        ]
        return hydra_callbacks.headline_metric(children)

    assert metric_of("f1", "f1") == "f1" and metric_of("matthews") == "matthews"
    assert metric_of("accuracy", "pearson_spearman") == "task_metric"  # a sweep over tasks of both kinds
    assert metric_of(None) == "accuracy" and metric_of() == "accuracy"


def test_split_scores_keep_evaluates_mlflow_metric_names():
    from elastic_cli.stages.evaluate import SplitScores

    scores = SplitScores(
        split="validation",
        score_name="accuracy",
        task_scores={"accuracy": 0.75, "f1": 0.5},
        task_metric=0.5,
        threshold=0.9,
        mean_exit_layer=1.5,
        layer_speedup=4 / 3,
        flops_speedup=1.25,
        static_gflops_per_example=2.0,
        adaptive_gflops_per_example=1.6,
        exit_names=["L1", "L2"],
        exit_counts=[3, 1],
        exit_scores=[0.5, 0.75],
        predictions=pd.DataFrame({"row": [0, 1, 2, 3]}),
    )
    assert scores.metrics() == {
        "accuracy": 0.75,
        "f1": 0.5,
        "task_metric": 0.5,
        "threshold": 0.9,
        "mean_exit_layer": 1.5,
        "layer_speedup": 4 / 3,
        "flops_speedup": 1.25,
        "static_gflops_per_example": 2.0,
        "adaptive_gflops_per_example": 1.6,
        "n_examples": 4.0,
        "super_fraction": 0.25,
        "exit_fraction_L1": 0.75,
        "exit_fraction_L2": 0.25,
        "exit_accuracy_L1": 0.5,
        "exit_accuracy_L2": 0.75,
    }


def test_pareto_front_keeps_the_points_nothing_beats():
    speedup = [1.0, 2.0, 1.5, float("nan"), 2.0]
    accuracy = [0.90, 0.80, 0.70, 0.99, 0.80]
    assert pareto_mask(speedup, accuracy) == [True, True, False, False, True]


@pytest.fixture
def hydra_app_dir(store: Path, tmp_path: Path):
    """A minimal Hydra app config using the real callback; HydraConfig is reset afterwards so later tests
    do not believe they run inside this multirun."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from elastic_cli.plugins import register_configs

    register_configs()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.yaml").write_text(
        f"""
defaults:
  - schema_root
  - override hydra/job_logging: disabled
  - override hydra/hydra_logging: disabled
  - _self_
stage: evaluate
outputs: {store / "outputs"}
method: {{name: early_exit}}
backbone: {{name: tiny-bert, family: bert, path: none}}
task: {{name: hydra_task, dataset: local}}
tracking: {{uri: "sqlite:///{store / "mlflow.db"}"}}
hydra:
  job: {{chdir: false}}
  output_subdir: null
  sweep: {{dir: "{tmp_path / "multiruns"}/${{now:%H-%M-%S}}", subdir: "${{hydra.job.num}}"}}
  callbacks:
    mlflow_sweep: {{_target_: elastic_cli.hydra_callbacks.MlflowSweepCallback}}
"""
    )
    yield conf
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()


def test_real_hydra_multirun_in_one_process(
    store: Path, hydra_app_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Hydra's basic launcher runs the jobs in this process: each job still becomes a child of the parent."""
    import hydra

    @hydra.main(config_path=str(hydra_app_dir), config_name="app", version_base="1.3")
    def app(raw: DictConfig) -> None:
        cfg = OmegaConf.to_object(raw)
        with tracking.stage_run(cfg, raw):
            t = cfg.method.exit.threshold
            tracking.log_metrics({"accuracy": 1.0 - t / 2, "flops_speedup": 1.0 + t})

    monkeypatch.setattr(sys, "argv", ["app", "-m", "method.exit.threshold=0.2,0.6"])
    app()
    runs = runs_of(store, "hydra_task")
    parents = [r for r in runs if r.data.tags.get("elastic.sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.data.params["method.exit.threshold"] for c in children) == ["0.2", "0.6"]
    assert {a.path for a in client_for(store).list_artifacts(parents[0].info.run_id)} >= {
        "summary.csv",
        "pareto.png",
    }


def test_experiments_open_on_their_runs_and_say_what_they_hold(store: Path):
    """MLflow 3 opens an experiment without `mlflow.experimentKind` on GenAI traces: elastic's are tagged
    when created, and an existing one (made by hand, or by an older elastic) when first used."""
    client = client_for(store)
    old_id = client.create_experiment("made_by_hand", tags={"mlflow.note.content": "my notes"})
    cfg, raw = make_config(store, "made_by_hand")
    with tracking.stage_run(cfg, raw):
        pass
    tags = client.get_experiment(old_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "my notes"  # a user's description is kept
    cfg, raw = make_config(store, "fresh_kind_task")
    with tracking.stage_run(cfg, raw):
        pass
    fresh = client.get_experiment_by_name("fresh_kind_task")
    assert fresh.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "fresh_kind_task" in fresh.tags["mlflow.note.content"]


def test_a_checkpoint_that_does_not_name_its_train_run_is_linked_by_its_folder(store: Path, tmp_path: Path):
    """Checkpoints written before meta.json recorded train_run_id: the last finished train run of the
    folder is linked; a run id from another store is tagged, and said to be elsewhere."""
    from elastic_cli import run_record

    folder = tmp_path / "ckpt"
    cfg, raw = make_config(store, "link_task", stage="train")
    with tracking.stage_run(cfg, raw, checkpoint=folder) as train_run:
        pass
    cfg, raw = make_config(store, "link_task")
    record = run_record.CheckpointRecord(folder.resolve(), "sha256:00", "", None)
    with tracking.stage_run(cfg, raw, checkpoint=folder, record=record) as run:
        pass
    tags = client_for(store).get_run(run.info.run_id).data.tags
    assert tags["elastic.train_run_id"] == train_run.info.run_id
    assert f"/runs/{train_run.info.run_id})" in tags["mlflow.note.content"]
    elsewhere = run_record.CheckpointRecord(folder.resolve(), "sha256:00", "0123abcd", None)
    with tracking.stage_run(cfg, raw, checkpoint=folder, record=elsewhere) as run:
        pass
    tags = client_for(store).get_run(run.info.run_id).data.tags
    assert (
        tags["elastic.train_run_id"] == "0123abcd"
        and "not in this tracking store" in tags["mlflow.note.content"]
    )
