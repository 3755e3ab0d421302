"""What the terminal (or a log file) shows: tables at full width off a terminal, the training loss said for
what it adds up, a line per epoch of calibration scores, transformers' load report said in a line, and
exit-rule settings that can never act warned of."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file, save_file
from tiny_models import SAMPLE_TEXTS, random_texts, tiny_backbone, tiny_backbone_config
from transformers import BertModel

from elastic_cli import exits, progress
from elastic_cli.config import BackboneConfig, ExitRuleConfig, MethodConfig, TrainConfig, TrainStageConfig
from elastic_cli.data import Encoded
from elastic_cli.exits import ElbertExitConfig, PatienceExitConfig
from elastic_cli.methods import build_method
from elastic_cli.methods.objectives import OBJECTIVES
from elastic_cli.models import loading
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.stages.train_loop import Best, epoch_scores_line, loss_label, train_stage


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the stages print to the shared console, a string per call."""
    lines: list[str] = []
    monkeypatch.setattr(progress.console, "print", lambda text, *a, **k: lines.append(str(text)))
    return lines


# ---------------------------------------------------------------- width off a terminal


def _wide_table() -> Table:
    table = Table(title="sweep")
    for i in range(12):
        table.add_column(f"exit column {i}")
    table.add_row(*(f"{i}.0000" for i in range(12)))
    return table


def test_a_console_off_a_terminal_prints_a_wide_table_on_whole_lines() -> None:
    console = progress.fit_width(Console(file=io.StringIO(), soft_wrap=True), environ={})
    assert console.width == progress.WIDTH_OFF_A_TERMINAL
    console.print(_wide_table())
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 + 5  # title; top border, header, rule, row, bottom border
    assert all(f"exit column {i}" in lines[2] for i in range(12))  # no header squeezed into two lines
    assert len({len(line) for line in lines[1:]}) == 1 and len(lines[1]) > 80


def test_columns_is_the_width_off_a_terminal_and_a_terminal_keeps_its_own() -> None:
    piped = progress.fit_width(Console(file=io.StringIO()), environ={"COLUMNS": "123"})
    assert piped.width == 123
    terminal = progress.fit_width(Console(file=io.StringIO(), force_terminal=True, width=93), environ={})
    assert terminal.width == 93


def test_the_shared_console_piped_does_not_wrap_a_table() -> None:
    # the module's own console, in a process whose stderr is a pipe
    code = (
        "from rich.table import Table\n"
        "from elastic_cli.progress import console\n"
        "table = Table(title='sweep')\n"
        "for i in range(12):\n"
        "    table.add_column(f'exit column {i}')\n"
        "table.add_row(*(f'{i}.0000' for i in range(12)))\n"
        "console.print(table)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120
    )
    lines = done.stderr.splitlines()
    assert all(f"exit column {i}" in lines[2] for i in range(12)), done.stderr
    assert len({len(line) for line in lines[1:]}) == 1


# ---------------------------------------------------------------- the loss on the progress line


def test_the_loss_label_says_what_the_loss_adds_up() -> None:
    six = [1, 2, 3, 4, 5, 6]
    assert loss_label(OBJECTIVES.get("sum")(six), 0, False) == "loss (sum over 6 exits)"
    assert loss_label(OBJECTIVES.get("sum")([6]), 0, False) == "loss"
    assert loss_label(OBJECTIVES.get("final_only")([6]), 0, False) == "loss"
    assert loss_label(OBJECTIVES.get("final_only")(six), 0, False) == "loss (final exit)"
    assert loss_label(OBJECTIVES.get("sum_intermediate")(six), 0, False) == "loss (sum over 5 exits)"
    assert (
        loss_label(OBJECTIVES.get("layer_weighted")(six), 0, False)
        == "loss (layer-weighted mean over 6 exits)"
    )
    assert loss_label(OBJECTIVES.get("dyn_weights")(six), 0, False) == "loss (weighted sum over 6 exits)"
    assert loss_label(OBJECTIVES.get("self_distil")(six), 0, False) == "loss (distillation, sum over 5 exits)"
    alternate = OBJECTIVES.get("alternate")(six)
    assert loss_label(alternate, 0, True) == "loss (final exit + LTE)"
    assert loss_label(alternate, 1, True) == "loss (sum over 6 exits + LTE)"


def _encoded(texts: list[str], tokenizer, seed: int) -> Encoded:
    ids = tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    labels = np.random.default_rng(seed).integers(0, 2, len(texts))
    return Encoded(input_ids=ids, token_type_ids=None, labels=labels)


def test_training_prints_its_loss_and_a_line_of_calibration_scores_per_epoch(printed: list[str]) -> None:
    texts = random_texts(24, seed=3)
    torch.manual_seed(0)
    backbone, tokenizer = tiny_backbone("bert", 3, texts)
    model = MultiExitModel(backbone, [1, 2, 3], 2, use_pretrained_pooler=False)
    method = build_method(MethodConfig(name="early_exit"))
    train = TrainConfig(epochs=2, batch_size=8, save_every=0, lr=1e-3)
    train_stage(
        train,
        0,
        TrainStageConfig(objective="sum"),
        method,
        model,
        _encoded(texts[:16], tokenizer, 0),
        _encoded(texts[16:], tokenizer, 1),
        tokenizer.pad_token_id,
        torch.device("cpu"),
        0,
        Best(),
        seed=0,
        eval_batch_size=8,
    )
    assert any("epoch 1 loss (sum over 3 exits) " in line for line in printed), printed
    epochs = [line for line in printed if line.startswith("epoch ") and ": calibration" in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1", "epoch 2"]
    assert epochs[0].startswith("epoch 1: calibration accuracy per exit L1 0.")
    assert " L3 " in epochs[0] and "(mean 0." in epochs[0]


def test_the_epoch_line_of_a_final_only_stage_and_of_a_length_reducing_model() -> None:
    scores = np.array([0.5, 0.625, 0.75])
    assert epoch_scores_line([2, 4, 6], scores, "accuracy", True, None) == "calibration accuracy L6 0.7500"
    assert epoch_scores_line([12], np.array([0.9]), "pearson", False, 1.5) == (
        "calibration pearson L12 0.9000, FLOPs speed-up 1.50x"
    )


# ---------------------------------------------------------------- transformers' load report


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def transformers_log():
    handler = _Records()
    logger = logging.getLogger("transformers")
    # transformers' loggers as a fresh process has them: a Hydra app run in-process earlier in the session
    # (tests/test_tracking.py) configures logging with disable_existing_loggers, which silences them
    disabled = {
        name: existing.disabled
        for name, existing in logging.root.manager.loggerDict.items()
        if name.startswith("transformers") and isinstance(existing, logging.Logger)
    }
    for name in disabled:
        logging.getLogger(name).disabled = False
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    for name, was in disabled.items():
        logging.getLogger(name).disabled = was


def _reports(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.funcName == "log_state_dict_report"]


def _save_without_pooler(folder: Path) -> None:
    adapter, tokenizer = build_backbone(tiny_backbone_config("bert", num_layers=2), SAMPLE_TEXTS, seed=7)
    model = BertModel(adapter.hf_config, add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_checkpoint_without_pooler_weights_is_a_one_line_note(
    tmp_path: Path, printed: list[str], transformers_log: list[logging.LogRecord]
) -> None:
    _save_without_pooler(tmp_path)
    # transformers reports the missing pooler (so holding its report back is what the loader does) ...
    BertModel.from_pretrained(tmp_path)
    assert _reports(transformers_log)
    transformers_log.clear()
    # ... which the loader says in a line
    adapter, _ = build_backbone(BackboneConfig(name="local", family="bert", path=str(tmp_path)))
    assert adapter.pretrained_pooler() is None
    assert not _reports(transformers_log)
    assert printed == [
        f"note: {tmp_path} has no pooler weights (pooler.dense.*): the exit heads cannot start from a "
        "pretrained pooler"
    ]


def test_other_missing_or_unexpected_weights_are_still_a_warning(
    tmp_path: Path, printed: list[str], transformers_log: list[logging.LogRecord]
) -> None:
    _save_without_pooler(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["encoder.layer.1.output.dense.bias"]
    weights["extra.dense.weight"] = torch.zeros(2, 2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    build_backbone(BackboneConfig(name="local", family="bert", path=str(tmp_path)))
    assert not _reports(transformers_log)
    warnings = [line for line in printed if line.startswith("[yellow]warning:[/] ")]
    assert len(printed) == 3 and len(warnings) == 2, printed
    assert (
        "1 backbone weights are missing" in warnings[0] and "encoder.layer.1.output.dense.bias" in warnings[0]
    )
    assert "weights this backbone does not use: extra.dense.weight" in warnings[1]


def test_unused_pooler_weights_are_a_note(printed: list[str]) -> None:
    loading.report_keys("/models/m", [], ["pooler.dense.bias", "pooler.dense.weight"])
    assert printed == [
        "note: the checkpoint's pooler weights (pooler.dense.*) are not used by this backbone config"
    ]


# ---------------------------------------------------------------- rule settings that never act


def test_elbert_window_longer_than_the_exits_is_warned_of(printed: list[str]) -> None:
    rule = exits.build_rule(ElbertExitConfig(window=8))
    exits.check_applicable(rule, num_labels=2, has_lte=False, num_exits=6)
    assert printed == [
        "[yellow]warning:[/] method.exit.window=8: the window never completes on this model's 6 exits, so the "
        "rule is ELBERT's entropy test alone (mode=bias_1 never acts)"
    ]
    # a window of all the exits completes only at the last, where every example stops anyway
    assert "completes only at the last exit" in rule.inert_settings(8)[0]
    assert rule.inert_settings(9) == []
    assert exits.build_rule(ElbertExitConfig(window=8, mode="entropy")).inert_settings(6) == []


def test_patience_that_no_example_reaches_before_the_last_exit_is_warned_of() -> None:
    assert exits.build_rule(PatienceExitConfig(threshold=4)).inert_settings(6) == []
    assert exits.build_rule(PatienceExitConfig(threshold=5)).inert_settings(6) == [
        "method.exit.threshold=5: a patience of 5 is reached at exit 6 at the earliest, the last of this "
        "model's 6 exits: no example exits early"
    ]
    assert "past the last" in exits.build_rule(PatienceExitConfig(threshold=9)).inert_settings(6)[0]
    assert exits.build_rule(PatienceExitConfig()).inert_settings(2) == []  # no threshold set: calibrate's


@pytest.mark.parametrize("name", ["entropy", "norm_entropy", "lte"])
def test_a_strict_below_rule_at_threshold_zero_never_fires(name: str) -> None:
    rule = exits.build_rule(ExitRuleConfig(name=name, threshold=0.0))
    assert rule.inert_settings(6) == [rule.inert_settings(6)[0]]
    assert rule.inert_settings(6)[0].endswith("is never below 0, so no example exits early")
    assert exits.build_rule(ExitRuleConfig(name=name, threshold=0.01)).inert_settings(6) == []


def test_no_warning_where_the_rule_never_runs_or_acts(printed: list[str]) -> None:
    elbert = exits.build_rule(ElbertExitConfig(window=8))
    exits.check_applicable(elbert, num_labels=2, has_lte=False, num_exits=1)  # the static model
    exits.check_applicable(elbert, num_labels=2, has_lte=False)  # train: exits not known yet
    exits.check_applicable(
        exits.build_rule(ElbertExitConfig(window=4)), num_labels=2, has_lte=False, num_exits=6
    )
    for name in ("maxprob", "energy", "patience"):
        exits.check_applicable(exits.build_rule(ExitRuleConfig(name=name)), 2, False, num_exits=6)
    assert printed == []
