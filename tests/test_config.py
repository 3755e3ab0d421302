"""Every YAML of every group composes against its schema; typos and wrong types fail at composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from elastic_cli.checks import to_root
from elastic_cli.config import ReportAxis, ReportRootConfig, RootConfig, parse_exit_layers, to_report_config
from elastic_cli.errors import UserError
from elastic_cli.plugins import register_configs

CONF = Path(__file__).resolve().parent.parent / "conf"

GROUPS = ["method", "backbone", "task", "device"]
STAGES = ["train", "calibrate", "evaluate"]


@pytest.fixture(autouse=True)
def hydra_ctx(monkeypatch):
    monkeypatch.setenv("ELASTIC_MODELS", "/models")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_config_composes_with_defaults(stage):
    cfg = compose(config_name=stage)
    root = to_root(cfg)
    assert isinstance(root, RootConfig)
    assert root.stage == stage
    assert root.method.name == "early_exit" and root.backbone.name == "bert-base-uncased"
    assert root.task.name == "sst2"


def test_report_composes_its_own_schema_with_the_task_group():
    report = to_report_config(compose(config_name="report", overrides=["task=mrpc", "report.x=latency"]))
    assert isinstance(report, ReportRootConfig)
    assert report.task.name == "mrpc" and report.report.x == ReportAxis.latency
    assert report.report.speedups == [1.5, 2.0, 3.0, 4.0] and report.report.reference == "elasticbert"
    assert not hasattr(report, "method")  # a report reads runs: no model, device or training settings


def test_bad_report_settings_fail_at_composition():
    with pytest.raises(UserError, match=r"report.speedups=0.5 must be >= 1"):
        to_report_config(compose(config_name="report", overrides=["report.speedups=[2,0.5]"]))
    with pytest.raises(HydraException, match="report.x=speed") as bad_axis:
        compose(config_name="report", overrides=["report.x=speed"])
    assert "expected one of [flops, layers, latency]" in str(bad_axis.value.__cause__)
    with pytest.raises(HydraException):
        compose(config_name="report", overrides=["method=sweet"])  # not a group of the report


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose(config_name="train", overrides=[f"{group}={option}"])
    root = to_root(cfg)
    section = getattr(root, group)
    # the option's file name is its name (device files name the device)
    assert section.name == option


def test_groups_are_not_empty():
    assert "static" in options("method") and "early_exit" in options("method")
    assert {"sst2", "mnli", "qnli", "rte", "mrpc", "qqp", "cola", "stsb", "imdb", "agnews", "snli"} <= set(
        options("task")
    )
    assert {"minilm-l3", "minilm-l6", "mpnet-base", "tiny-bert", "tiny-mpnet", "bert-base-uncased"} <= set(
        options("backbone")
    )


def test_local_backbone_path_reads_elastic_models():
    root = to_root(compose(config_name="train", overrides=["backbone=minilm-l6"]))
    assert root.backbone.path == "/models/minilm-l6"


def test_task_table_values():
    mnli = to_root(compose(config_name="train", overrides=["task=mnli"])).task
    assert mnli.eval_splits == ["validation_matched", "validation_mismatched"]
    assert mnli.num_labels == 3 and mnli.text_columns == ["premise", "hypothesis"]
    stsb = to_root(compose(config_name="train", overrides=["task=stsb"])).task
    assert stsb.num_labels == 1 and stsb.metric == "pearson_spearman"
    assert to_root(compose(config_name="train", overrides=["task=mrpc"])).task.metric == "f1"
    assert to_root(compose(config_name="train", overrides=["task=cola"])).task.metric == "matthews"


def test_sweep_thresholds_is_a_multirun():
    cfg = compose(config_name="evaluate", overrides=["sweep=thresholds"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert "method.exit.threshold" in cfg.hydra.sweeper.params


def test_typo_in_key_fails_at_composition():
    with pytest.raises(Exception) as err:
        compose(config_name="train", overrides=["method.exit.treshold=0.9"])
    assert "treshold" in str(err.value)


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception) as err:
        compose(config_name="train", overrides=["train.batch_size=big"])
    assert isinstance(err.value.__cause__, ValidationError) or "big" in str(err.value)


def test_threshold_out_of_range_is_a_user_error():
    cfg = compose(config_name="evaluate", overrides=["method.exit.threshold=1.5"])
    with pytest.raises(UserError, match="outside"):
        to_root(cfg)


def test_unknown_enum_value_is_a_user_error():
    # a fixed choice is an Enum in the schema: refused at composition, before `to_root`
    with pytest.raises(HydraException, match="backbone.pooling") as err:
        to_root(compose(config_name="train", overrides=["backbone.pooling=max"]))
    assert "expected one of [cls, mean]" in str(err.value.__cause__)


def test_schema_rejects_unknown_key_in_yaml_node():
    cfg = compose(config_name="train")
    with pytest.raises((ConfigKeyError, ConfigAttributeError)):
        OmegaConf.update(cfg, "task.not_a_field", 1, merge=False)


@pytest.mark.parametrize(
    "spec,layers,expected",
    [("all", 4, [1, 2, 3, 4]), ("last", 6, [6]), ([2, 4], 6, [2, 4, 6]), ([4, 2, 2, 6], 6, [2, 4, 6])],
)
def test_parse_exit_layers(spec, layers, expected):
    assert parse_exit_layers(spec, layers) == expected


def test_exit_layer_beyond_depth_is_a_user_error():
    with pytest.raises(UserError, match="beyond the backbone's 4 layers"):
        parse_exit_layers([2, 7], 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], r"method\.exit_layers=\[\] names no exit"),
        ([4, 2.5], r"method\.exit_layers=\[4, 2\.5\] holds 2\.5, neither a layer number"),
        ([0, 4], r"holds 0, neither a layer number \(1, 2, \.\.\.\) nor a fraction of the depth in \(0, 1\]"),
        ([-1], r"holds -1, neither"),
        ([True], r"holds True, neither"),
        (["4"], r"holds '4', neither"),
        ("first", r"method\.exit_layers='first': use all, last, or a list"),
    ],
)
def test_bad_exit_layers_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_exit_layers(spec, 12)


def test_fractions_and_layer_numbers_mix():
    assert parse_exit_layers([1.0], 12) == [12]  # 1.0 is the whole depth, 1 is the first layer
    assert parse_exit_layers([1, 0.5], 12) == [1, 6, 12]


def test_training_state_settings_default_to_resumable():
    train = to_root(compose(config_name="train")).train
    assert train.save_every == 500 and train.resume is True
    overrides = ["train.save_every=0", "train.resume=false"]
    train = to_root(compose(config_name="train", overrides=overrides)).train
    assert train.save_every == 0 and train.resume is False


def _slurm_launcher(overrides: list[str]):
    cfg = compose(
        config_name="evaluate", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True
    )
    return cfg.hydra.launcher


def test_slurm_settings_come_from_the_environment_else_their_defaults(monkeypatch):
    for name in ("MEM_GB", "CPUS_PER_TASK", "GPUS_PER_NODE", "TIMEOUT_MIN"):
        monkeypatch.delenv(f"ELASTIC_SLURM_{name}", raising=False)
    launcher = _slurm_launcher([])
    assert (launcher.mem_gb, launcher.cpus_per_task, launcher.timeout_min) == (32, 4, 720)
    assert launcher.gpus_per_node is None  # device=cpu asks for no GPU
    assert _slurm_launcher(["device=cuda"]).gpus_per_node == 1
    monkeypatch.setenv("ELASTIC_SLURM_MEM_GB", "64")
    monkeypatch.setenv("ELASTIC_SLURM_GPUS_PER_NODE", "0")
    launcher = _slurm_launcher(["device=cuda"])
    assert (launcher.mem_gb, launcher.gpus_per_node) == (64, 0)


@pytest.mark.parametrize("value", ["abc", "-1", "2.5"])
def test_a_slurm_setting_that_is_not_a_whole_number_names_its_variable(monkeypatch, capsys, value):
    from elastic_cli.errors import fail

    monkeypatch.setenv("ELASTIC_SLURM_MEM_GB", value)
    with pytest.raises(Exception) as caught:
        _slurm_launcher([]).mem_gb  # noqa: B018 (resolving it is the test)
    with pytest.raises(SystemExit) as stopped:
        fail(caught.value)  # how the CLI says it: the resolver's line, not OmegaConf's wrapping
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: ELASTIC_SLURM_MEM_GB='{value}' is not a whole number: set it to one (e.g. ELASTIC_SLURM_MEM_GB=32) or unset it\n"
    )
