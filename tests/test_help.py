"""`elastic STAGE --help` lists the user's config groups and every option of the composed config with its
description from the schema; `elastic` alone is a usage error. In-process (cli.main), but for the one
check that needs a fresh interpreter: that help imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from elastic_cli import cli
from elastic_cli.config import TrainConfig
from elastic_cli.help import field_comments

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(autouse=True)
def _cli_state(monkeypatch):
    # cli.main sets both for the Hydra app it runs; keep them from leaking into other tests
    monkeypatch.setattr(sys, "argv", ["elastic"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("ELASTIC_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "100")


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def entry(text: str, head: str) -> str:
    """The help's line that starts with `head` (after the indent), with its wrapped continuation lines,
    its runs of spaces made one."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {head}"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("   "):
        end += 1
    return " ".join(" ".join(lines[start:end]).split())


def group_line(text: str, group: str) -> str:
    """The group's line in the help: `group  option, option*, ...`."""
    return entry(text, f"{group} ")


def option_line(text: str, key: str) -> str:
    """The option's line: `key=value description`."""
    return entry(text, f"{key}=")


def test_stage_help_lists_the_user_groups_with_their_options(capsys):
    code, out, err = run(capsys, "train", "--help")
    assert code == 0 and not err
    assert "schema/" not in out and "schema " not in out
    assert "sweet" in group_line(out, "method") and "early_exit*" in group_line(out, "method")
    assert "minilm-l6" in group_line(out, "backbone")
    assert "sst2*" in group_line(out, "task")
    assert "patience" in group_line(out, "method/exit")
    assert "thresholds" in group_line(out, "sweep")
    assert "cuda" in group_line(out, "device")


def test_every_option_has_a_line_with_its_description_from_the_schema(capsys):
    code, out, _ = run(capsys, "train", "-h")
    assert code == 0
    # no comment on the field: the description of its range in config.RANGES, and the range itself
    assert option_line(out, "train.lr") == "train.lr=2e-05 the learning rate (> 0)"
    # the field's comment in config.py
    assert "lr of exit heads; null: same as lr" in field_comments(TrainConfig)["head_lr"]
    assert field_comments(TrainConfig)["head_lr"] in option_line(out, "train.head_lr")
    # a comment block above the field
    assert "take the threshold chosen by `calibrate`" in option_line(out, "method.exit.threshold")
    # an Enum's choices, with their comments
    assert "cls: the first token's state" in option_line(out, "backbone.pooling")
    # a field with no comment and no range still has its line
    assert option_line(out, "task.label_column") == "task.label_column=label"
    assert "hydra." not in out


def test_the_options_are_those_the_overrides_compose(capsys):
    _, plain, _ = run(capsys, "train", "--help")
    assert "method.stop_gradient=false" in plain
    code, out, _ = run(capsys, "train", "method=sweet", "--help")
    assert code == 0
    assert "method.stop_gradient=true" in out and "method.head=shared_pooler" in out
    assert "sweet*" in group_line(out, "method")
    # a plug-in schema's own fields and comments, and the exit rule's (the shorthand method.exit=NAME too)
    code, out, _ = run(capsys, "evaluate", "method=adapler", "method.exit=elbert", "--help", "--cfg", "job")
    assert code == 0
    assert option_line(out, "method.gamma").startswith("method.gamma=0.005 AdapLeR's README")
    assert "ELBERT's cnt_thres (>= 1)" in option_line(out, "method.exit.window")
    assert "method.exit.window" not in plain


def test_a_tiny_backbone_shows_its_shape(capsys):
    _, out, _ = run(capsys, "train", "backbone=tiny-bert", "--help")
    assert "the tiny model's width (>= 1)" in option_line(out, "backbone.tiny.hidden_size")
    _, plain, _ = run(capsys, "train", "--help")
    assert "backbone.tiny=null" in plain


def test_outside_plugins_join_the_groups(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("ELASTIC_PLUGINS", "toy_method")
    code, out, _ = run(capsys, "train", "method=toy", "--help")
    assert code == 0
    assert "toy*" in group_line(out, "method")
    assert "the weight of the final exit's loss (> 0)" in option_line(out, "method.final_weight")


def test_a_bad_override_with_help_is_one_line_and_exit_2(capsys):
    code, out, err = run(capsys, "train", "method=nope", "--help")
    assert code == 2 and not out
    assert err.startswith("error:") and "nope" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "train", "method=sweet,pabee", "-m", "--help")
    assert code == 2 and not out and "give it one value" in err


def test_no_arguments_prints_the_usage_to_stderr_and_exits_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and not out
    assert err.startswith("usage: elastic {train,calibrate,evaluate,report}")
    code, usage, _ = run(capsys, "--help")
    assert code == 0 and usage == err


def test_hydra_help_is_still_hydra_s(capsys):
    code, out, _ = run(capsys, "train", "--hydra-help")
    assert code == 0 and "Hydra" in out and "--hydra-help" in out


def test_help_imports_no_torch():
    # a fresh interpreter: this one has torch from other tests
    probe = (
        "import sys\n"
        "from elastic_cli import cli\n"
        "cli.main(['train', 'method=sweet', '--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "method.stop_gradient=true" in proc.stdout


@pytest.mark.parametrize("method, imports_torch", [("early_exit", False), ("pabee", True)])
def test_showing_the_config_imports_torch_only_for_a_plugin_schema(method: str, imports_torch: bool):
    # `--cfg job` of the default method and rule (schemas in config.py) needs no torch (2-3 s to import);
    # pabee's patience rule has its schema beside the rule, which the same command then imports
    code = (
        "import sys; from elastic_cli.cli import main; "
        f"main(['evaluate', '--cfg', 'job', 'method={method}']); "
        "print('TORCH', 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"name: {method}" in done.stdout
    assert f"TORCH {imports_torch}" in done.stdout
