"""Every bad setting ends in one line `error: ...` that names the setting, its value and what is allowed
(exit code 2, no traceback). Most cases are composed in-process as the CLI composes them (its shorthands,
Hydra's compose API, `to_root`) and printed by the CLI's own `fail`; a few run the real command."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from elastic_cli.checks import to_root
from elastic_cli.cli import _exit_group_shorthand, _user_errors, fail
from elastic_cli.config import RANGES, RootConfig
from elastic_cli.errors import UserError
from elastic_cli.plugins import register_configs

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture
def hydra_ctx(monkeypatch):
    monkeypatch.setenv("ELASTIC_MODELS", "/models")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


GROUPS = ("method", "backbone", "task", "device", "sweep")
_COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def compose_root(*args: str, stage: str = "train") -> RootConfig:
    """`to_root` of the config that `elastic STAGE ARGS...` composes. Hydra's compose takes about 0.4 s, so
    the config groups are composed once per choice and the plain values are merged into a copy, through the
    same schema (a wrong type still fails)."""
    args = tuple(_exit_group_shorthand(a) for a in args)
    groups = tuple(a for a in args if _is_group_choice(a.split("=", 1)[0]))
    if (stage, *groups) not in _COMPOSED:
        _COMPOSED[(stage, *groups)] = compose(config_name=stage, overrides=list(groups))
    cfg = copy.deepcopy(_COMPOSED[(stage, *groups)])
    for override in OverridesParser.create().parse_overrides([a for a in args if a not in groups]):
        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
    return to_root(cfg)


def _is_group_choice(key: str) -> bool:
    return key in GROUPS or "/" in key or "@" in key  # method=..., method/exit=..., backbone@method.swift=...


def error_line(
    capsys: pytest.CaptureFixture[str], *args: str, stage: str = "train", hydra: bool = False
) -> str:
    """What `elastic STAGE ARGS...` prints for a bad config: its one stderr line (`hydra`: compose every
    override with Hydra, as the CLI does, for the messages of Hydra's own override parsing)."""
    try:
        if hydra:
            to_root(compose(config_name=stage, overrides=[_exit_group_shorthand(a) for a in args]))
        else:
            compose_root(*args, stage=stage)
    except _user_errors() as err:
        with pytest.raises(SystemExit) as exited:
            fail(err)
        assert exited.value.code == 2
    else:
        raise AssertionError(f"{args} composed without an error")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# (overrides, the exact error line)
BAD = [
    # learning rates, epochs, steps
    (["train.lr=-1"], "train.lr=-1.0 must be > 0 (the learning rate)"),
    (["train.lr=0"], "train.lr=0.0 must be > 0 (the learning rate)"),
    (["train.lr=inf"], "train.lr=inf must be a finite number > 0 (the learning rate)"),
    (["train.lr=nan"], "train.lr=nan must be a finite number > 0 (the learning rate)"),
    (["train.head_lr=0"], "train.head_lr=0.0 must be > 0 (the exit heads' learning rate; null: train.lr)"),
    (
        ["method=elbert", "method.w_lr=-0.01"],
        "method.w_lr=-0.01 must be > 0 (the learning rate of ELBERT's exit weights)",
    ),
    (["train.epochs=0"], "train.epochs=0.0 must be > 0 (passes over the training split, may be fractional)"),
    (
        ["train.warmup_ratio=1"],
        "train.warmup_ratio=1.0 must be in [0, 1) (the fraction of the steps spent warming up)",
    ),
    (["train.weight_decay=-0.1"], "train.weight_decay=-0.1 must be >= 0 (AdamW's weight decay)"),
    (["train.max_grad_norm=0"], "train.max_grad_norm=0.0 must be > 0 (the gradient clipping norm)"),
    (["train.log_every=0"], "train.log_every=0 must be >= 1 (optimizer steps between progress updates)"),
    (
        ["train.save_every=-1"],
        "train.save_every=-1 must be >= 0 (optimizer steps between training states; 0: each epoch's end)",
    ),
    (["train.batch_size=0"], "train.batch_size=0 must be >= 1 (examples per optimizer step)"),
    (
        ["method=fastbert", "method.stages.1.lr_scale=0"],
        "method.stages[1].lr_scale=0.0 must be > 0 (this stage's lr / train.lr)",
    ),
    (
        ["method=deebert", "method.stages.0.epochs=-1"],
        "method.stages[0].epochs=-1.0 must be > 0 (this stage's epochs; null: train.epochs)",
    ),
    # grids, samples, threads, batch sizes
    (["calibrate.grid_size=1"], "calibrate.grid_size=1 must be >= 2 (thresholds tried)"),
    (["evaluate.grid_size=1"], "evaluate.grid_size=1 must be >= 2 (points of the threshold curve)"),
    (
        ["task.max_train_samples=0"],
        "task.max_train_samples=0 must be >= 1 (training examples to keep; null: all)",
    ),
    (
        ["task.max_eval_samples=-5"],
        "task.max_eval_samples=-5 must be >= 1 (evaluation examples to keep; null: all)",
    ),
    (
        ["task.calibration_max_samples=0"],
        "task.calibration_max_samples=0 must be >= 1 (the cap on the calibration split; null: none)",
    ),
    (
        ["task.calibration_fraction=1"],
        "task.calibration_fraction=1.0 must be in (0, 1) (the part of train held out for calibration)",
    ),
    (["task.max_seq_length=4"], "task.max_seq_length=4 must be >= 8 (tokens per input)"),
    (["task.num_labels=0"], "task.num_labels=0 must be >= 1 (the number of classes; 1: regression)"),
    (
        ["task.label_names=[a,b,c]"],
        "task.label_names=['a', 'b', 'c'] has 3 names but task.num_labels=2: give one name per class",
    ),
    (["evaluate.latency_samples=0"], "evaluate.latency_samples=0 must be >= 1 (examples timed at batch 1)"),
    (["evaluate.latency_warmup=-1"], "evaluate.latency_warmup=-1 must be >= 0 (untimed warm-up examples)"),
    (
        ["evaluate.throughput_batches=0"],
        "evaluate.throughput_batches=0 must be >= 1 (batches timed for throughput)",
    ),
    (["device.threads=0"], "device.threads=0 must be >= 1 (torch's CPU threads; null: torch's default)"),
    (["device.eval_batch_size=0"], "device.eval_batch_size=0 must be >= 1 (examples per evaluation batch)"),
    (
        ["device.throughput_batch_size=0"],
        "device.throughput_batch_size=0 must be >= 1 (examples per throughput batch)",
    ),
    (["calibrate.speedup=0.5"], "calibrate.speedup=0.5 must be >= 1 (the speed-up the threshold must reach)"),
    (
        ["calibrate.tolerance=-0.1"],
        "calibrate.tolerance=-0.1 must be >= 0 (the accuracy a threshold may lose)",
    ),
    (
        ["calibrate.super_fraction=2"],
        "calibrate.super_fraction=2.0 must be in [0, 1] (the fraction of examples the last exit may get)",
    ),
    (["seed=-1"], "seed=-1 must be >= 0 (the random seed)"),
    # method and head settings
    (
        ["method.lte_weight=-1"],
        "method.lte_weight=-1.0 must be >= 0 (the weight of the learning-to-exit loss)",
    ),
    (
        ["method.head_dropout=1"],
        "method.head_dropout=1.0 must be in [0, 1) (the dropout before every exit classifier)",
    ),
    (
        ["method=fastbert", "method.head_hidden=0"],
        "method.head_hidden=0 must be >= 1 (the width of FastBERT's student classifier)",
    ),
    (
        ["method=fastbert", "method.head_attention_heads=0"],
        "method.head_attention_heads=0 must be >= 1 (the attention heads of FastBERT's student classifier)",
    ),
    (
        ["method=fastbert", "method.distil_temperature=0"],
        "method.distil_temperature=0.0 must be > 0 (FastBERT's distillation temperature)",
    ),
    (
        ["backbone=tiny-bert", "backbone.tiny.num_layers=0"],
        "backbone.tiny.num_layers=0 must be >= 1 (the tiny model's layers)",
    ),
    (
        ["backbone=tiny-bert", "backbone.tiny.num_heads=3"],
        "backbone.tiny.hidden_size=32 must be a multiple of backbone.tiny.num_heads=3",
    ),
    (
        ["method=elang", "method.swift=tiny-bert", "method.swift.tiny.hidden_size=0"],
        "method.swift.tiny.hidden_size=0 must be >= 1 (the tiny model's width)",
    ),
    # exit rules' own settings
    (
        ["method.exit=energy", "method.exit.temperature=0"],
        "method.exit.temperature=0.0 must be > 0 (the energy rule's temperature T)",
    ),
    (
        ["method.exit=elbert", "method.exit.window=0"],
        "method.exit.window=0 must be >= 1 (the exits in ELBERT's window)",
    ),
    (
        ["method.exit=elbert", "method.exit.margin=1"],
        "method.exit.margin=1.0 must be in [0, 1) (ELBERT's margin above 1/C)",
    ),
    (
        ["method.exit=elbert", "method.exit.range=0"],
        "method.exit.range=0.0 must be > 0 (ELBERT's bias_3 spread)",
    ),
    (
        ["method.exit=patience", "method.exit.regression_threshold=0"],
        "method.exit.regression_threshold=0.0 must be > 0 (the change below which regression exits agree)",
    ),
    # thresholds, for every rule
    (["method.exit.threshold=1.5"], "method.exit.threshold=1.5 is outside [0.0, 1.0] for the maxprob rule"),
    (
        ["method.exit=entropy", "method.exit.threshold=0.7"],
        "method.exit.threshold=0.7 is outside [0.0, 0.6931] for the entropy rule "
        "(at most log C, C = task.num_labels = 2)",
    ),
    (
        ["task=mnli", "method.exit=entropy", "method.exit.threshold=1.2"],
        "method.exit.threshold=1.2 is outside [0.0, 1.0986] for the entropy rule "
        "(at most log C, C = task.num_labels = 3)",
    ),
    (
        ["method.exit=entropy", "method.exit.threshold=-0.1"],
        "method.exit.threshold=-0.1 is outside [0.0, 0.6931] for the entropy rule "
        "(at most log C, C = task.num_labels = 2)",
    ),
    (
        ["method.exit=norm_entropy", "method.exit.threshold=-0.1"],
        "method.exit.threshold=-0.1 is outside [0.0, 1.0] for the norm_entropy rule",
    ),
    (
        ["method.exit=patience", "method.exit.threshold=1.5"],
        "method.exit.threshold=1.5 must be a whole number of agreeing exits (1, 2, ...) "
        "for the patience rule",
    ),
    (
        ["method.exit=patience", "method.exit.threshold=0"],
        "method.exit.threshold=0.0 is outside [1.0, 1000.0] for the patience rule",
    ),
    (
        ["method.exit=elbert", "method.exit.threshold=1.1"],
        "method.exit.threshold=1.1 is outside [0.0, 1.0] for the elbert rule",
    ),
    (
        ["method.exit=lte", "method.exit.threshold=2"],
        "method.exit.threshold=2.0 is outside [0.0, 1.0] for the lte rule",
    ),
    (
        ["method.exit=energy", "method.exit.threshold=1e7"],
        "method.exit.threshold=10000000.0 is outside [-1000000.0, 1000000.0] for the energy rule",
    ),
    (
        ["method.exit.threshold=nan"],
        "method.exit.threshold=nan is outside [0.0, 1.0] for the maxprob rule",
    ),
    # the sweep grid
    (
        ["method.exit.sweep=0.6,1.5"],
        "method.exit.sweep='0.6,1.5' holds 1.5, which is outside [0.0, 1.0] for the maxprob rule",
    ),
    (
        ["method.exit.sweep=[0.6,abc]"],
        "method.exit.sweep='0.6,abc' must be thresholds separated by commas, e.g. method.exit.sweep=0.6,0.9",
    ),
    (
        ["method.exit.sweep=range(1,4)"],
        "method.exit.sweep='range(1,4)' must be thresholds separated by commas, "
        "e.g. method.exit.sweep=0.6,0.9",
    ),
    (
        ["method.exit.sweep=[]"],
        "method.exit.sweep='' must be thresholds separated by commas, e.g. method.exit.sweep=0.6,0.9",
    ),
    (
        ["method.exit.sweep="],
        "method.exit.sweep='' must be thresholds separated by commas, e.g. method.exit.sweep=0.6,0.9",
    ),
    (
        ["method.exit=patience", "method.exit.sweep=1,2.5"],
        "method.exit.sweep='1,2.5' holds 2.5, which must be a whole number of agreeing exits (1, 2, ...) "
        "for the patience rule",
    ),
    # exit layers (their fit to the backbone's depth is checked once the model is built)
    (
        ["method.exit_layers=[]"],
        "method.exit_layers=[] names no exit: use all, last, or a list such as [4,6,12]",
    ),
    *(
        (
            [f"method.exit_layers=[4,{text}]"],
            f"method.exit_layers=[4, {shown}] holds {shown}, neither a layer number (1, 2, ...) nor a "
            "fraction of the depth in (0, 1]: use e.g. [4,6,12] or [0.25,0.5,1.0]",
        )
        for text, shown in [
            ("2.5", "2.5"),
            ("0", "0"),
            ("-3", "-3"),
            ("0.0", "0.0"),
            ("true", "True"),
            ("x", "'x'"),
        ]
    ),
    (["method.exit_layers=first"], "method.exit_layers='first': use all, last, or a list such as [4,6,12]"),
]


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(args) for args, _ in BAD])
def test_a_bad_setting_is_one_line_naming_it(hydra_ctx, capsys, args, expected):
    assert error_line(capsys, *args) == f"error: {expected}"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train.lr=abc"], ["train.lr=abc", "'abc'", "Float"]),
        (["train.save_every=1.5"], ["train.save_every=1.5", "Integer"]),
        (["train.resume=maybe"], ["train.resume=maybe", "bool"]),
        (["method.exit_layers=[4,6"], ["'[4,6'"]),  # Hydra's grammar error: names the value
    ],
)
def test_a_wrong_type_is_one_line_from_the_schema(hydra_ctx, capsys, args, needles):
    line = error_line(capsys, *args, hydra=True)
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["train.max_steps=0"],  # 0 or less: off, train.epochs decides
        ["train.max_steps=-1"],
        ["train.max_steps=1"],
        ["train.head_lr=null", "device.threads=null", "task.max_train_samples=null"],
        ["train.warmup_ratio=0", "train.weight_decay=0", "train.save_every=0", "train.resume=false"],
        ["evaluate.latency_warmup=0", "calibrate.speedup=1", "calibrate.grid_size=2", "evaluate.grid_size=2"],
        ["method.exit=elbert", "method.exit.margin=0", "method.exit.window=1", "method.exit.threshold=0"],
        ["method.exit=entropy", "method.exit.threshold=0.6931"],  # log 2, as printed to 4 places
        ["task=mnli", "method.exit=entropy", "method.exit.threshold=1.0"],  # log 3 = 1.0986
        ["method.exit=patience", "method.exit.threshold=3"],
        ["method.exit=patience", "method.exit.sweep=2,3,4"],
        ["method.exit_layers=[0.0833,0.3333,0.5,1.0]"],
        ["method.exit_layers=[1,2,12]", "method.exit.sweep=[0.6,0.9]"],
        ["task=stsb", "method=pabee"],  # regression: no log C bound
    ],
)
def test_values_on_the_edges_are_accepted(hydra_ctx, args):
    compose_root(*args)


@pytest.mark.parametrize("rule", sorted(p.stem for p in (CONF / "method" / "exit").glob("*.yaml")))
def test_every_rule_default_grid_passes_for_any_number_of_classes(hydra_ctx, rule):
    from elastic_cli.exits import RULES

    # a rule that scales a length-reducing model (token_drop) goes with the method that trains one
    method = [] if "multi_exit" in RULES.get(rule).model_shapes else ["method=adapler"]
    for num_labels in (1, 2, 3, 4):  # stsb (regression), sst2, mnli, agnews
        root = compose_root(
            *method, f"method.exit={rule}", f"task.num_labels={num_labels}", "task.label_names=[]"
        )
        assert root.method.exit.name == rule


def test_every_row_of_the_table_names_a_real_setting(hydra_ctx):
    """A renamed field must not leave a row that silently checks nothing."""
    from elastic_cli.config import _ABSENT, _setting

    configs = [
        compose_root(*args)
        for args in (
            [],
            ["method=elbert"],
            ["method=fastbert", "method.exit=patience"],
            ["method.exit=energy", "backbone=tiny-bert"],
            ["method=elang", "method.swift=tiny-bert"],
        )
    ]
    for dotted, _, _ in RANGES:
        assert any(_setting(cfg, dotted) is not _ABSENT for cfg in configs), dotted


# ---------------------------------------------------------------------------------- the real command


def elastic(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elastic_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_bad_number_on_the_command_line_is_one_line_exit_2(tmp_path: Path):
    line = one_line_error(elastic("train", "train.lr=-1", "method.exit_layers=[4,6]", cwd=tmp_path))
    assert line == "error: train.lr=-1.0 must be > 0 (the learning rate)"
    line = one_line_error(elastic("train", "train.lr=abc", cwd=tmp_path))
    assert "train.lr=abc" in line and "Float" in line


@pytest.mark.slow
def test_a_bad_label_on_the_command_line_names_the_file_and_line(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\na\t0\nb\t1\nc\t3\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nd\t0\n")
    args = ["backbone=tiny-bert", f"task.data_dir={data}", "tracking.enabled=false", f"outputs={tmp_path}"]
    line = one_line_error(elastic("train", *args, cwd=tmp_path))
    assert line == (
        f"error: {data / 'train.tsv'} line 4: label '3' in column label is outside the class ids 0..1 "
        "(task.num_labels=2); fix the file or task.num_labels"
    )


def test_every_plugin_range_names_a_field_of_its_schema():
    """A plug-in schema's RANGES rows (a method's, an exit rule's) must name its own fields."""
    from dataclasses import fields

    from elastic_cli.config import TinyBackboneConfig
    from elastic_cli.exits import RULES
    from elastic_cli.methods import METHODS

    schemas = {cls.schema for _, cls in [*METHODS.items(), *RULES.items()]} | {TinyBackboneConfig}
    assert {"ElbertConfig", "FastbertConfig", "PatienceExitConfig", "EnergyExitConfig"} <= {
        s.__name__ for s in schemas
    }
    for schema in schemas:
        names = {f.name for f in fields(schema)}
        for key, _, _ in schema.RANGES:
            assert key in names, (schema.__name__, key)


def test_a_fastbert_head_whose_width_does_not_split_into_its_heads_is_refused(hydra_ctx):
    # before, nn.MultiheadAttention's assertion ended the run in a traceback once training began
    with pytest.raises(UserError, match="method.head=fastbert: a fastbert head of width 10 cannot have 3"):
        compose_root("method=fastbert", "method.head_hidden=10", "method.head_attention_heads=3")
    compose_root("method=fastbert", "method.head_hidden=12", "method.head_attention_heads=3")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["method=adapler", "method/exit=maxprob"], "method.exit=maxprob does not apply to method adapler"),
        (["method=sweet", "method/exit=token_drop"], "method.exit=token_drop does not apply to method sweet"),
        (
            ["method=adapler", "backbone=tiny-deberta"],
            "backbone.family=deberta: AdapLeR's soft token removal",
        ),
        (["method=adapler", "method.gamma=-1"], "method.gamma"),
        (["method=adapler", "method.eta_init=2"], "method.eta_init"),
    ],
)
def test_adapler_settings_that_cannot_work_are_refused(hydra_ctx, args, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        compose_root(*args)
