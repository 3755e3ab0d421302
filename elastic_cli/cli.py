"""`elastic STAGE [overrides...]`: pops the stage name and hands the rest to that stage's Hydra app.

Hydra's own flags work after the stage (`--cfg job`, `-m`, `--hydra-help`); `--help` there is ours
(elastic_cli/help.py): the config groups and every option with its description. Bad input of any kind
ends in one line on stderr and exit code 2; a bug still shows its traceback. Ctrl-C and SIGTERM (Slurm,
Kubernetes, `timeout`) unwind the same way: the MLflow run ends KILLED, partial files are removed, one
line, exit code 130 or 143.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from elastic_cli import launchers
from elastic_cli.errors import UserError, fail

STAGES = {
    "train": "fine-tune a method's model and write a checkpoint",
    "calibrate": "fit per-exit temperatures and choose the exit threshold on the calibration split",
    "evaluate": "accuracy, exit histogram, FLOPs and latency on the evaluation split(s)",
    "report": "compare the evaluated methods of a task: table, accuracy/speed-up figure, oracle bounds",
}


def _config_path() -> str:
    # A console script has no useful cwd-relative path: use the repo's conf/ when running from a
    # checkout (editable install), else the copy shipped inside the wheel.
    repo_conf = Path(__file__).resolve().parent.parent / "conf"
    if (repo_conf / "train.yaml").is_file():
        return str(repo_conf)
    return "pkg://elastic_cli.conf"


CONFIG_PATH = _config_path()


def _run_stage(stage: str, cfg: DictConfig) -> float | None:
    # Inside the job, exit here: Hydra would otherwise add its own "Error executing job" line.
    from elastic_cli.progress import console

    console.record = True  # what the stage prints goes into the job's log file too (_save_transcript)
    last_line = ""  # how the stage stopped, when not by returning
    try:
        root = _typed(stage, cfg)
        module = importlib.import_module(f"elastic_cli.stages.{stage}")
        return module.run(root, cfg)
    except _user_errors() as err:
        last_line = f"error: {err}"
        if launchers.job_in_own_process():
            # the error goes back to the launching process, which waits for the other jobs, ends the
            # sweep's parent FAILED and says it in one line (this job's log has it too): an exit here
            # would only kill the worker, and joblib the other jobs with it
            raise
        fail(err)
    except BaseException as err:
        last_line = f"stopped: {type(err).__name__}: {err}".rstrip(": ")
        raise
    finally:
        _save_transcript(last_line)


# the stages of a model: RootConfig, composed with the plug-ins' schemas and checked against their
# registries. `report` reads runs: its own schema, no plug-in (their modules load torch and transformers).
MODEL_STAGES = frozenset({"train", "calibrate", "evaluate"})


def _typed(stage: str, cfg: DictConfig) -> object:
    """The stage's typed config, checked."""
    if stage not in MODEL_STAGES:
        from elastic_cli.config import to_report_config

        return to_report_config(cfg)
    from elastic_cli.checks import to_root

    return to_root(cfg)


def _save_transcript(last_line: str = "") -> None:
    """Append what the stage printed (its tables and summary lines, as plain text) to Hydra's log file of
    the job, <run dir>/<stage>.log, which otherwise holds only log records: nothing, for most stages."""
    from hydra.core.hydra_config import HydraConfig

    from elastic_cli.progress import console

    text = console.export_text(clear=True)
    if last_line:
        text += last_line + "\n"
    if not text or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    path = Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"
    try:
        with path.open("a", encoding="utf-8") as log_file:
            log_file.write(text)
    except OSError:
        pass  # the log is a copy of what the terminal showed: never worth failing the stage for


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    return _run_stage("train", cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="calibrate", version_base="1.3")
def calibrate_main(cfg: DictConfig) -> float | None:
    return _run_stage("calibrate", cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
def evaluate_main(cfg: DictConfig) -> float | None:
    return _run_stage("evaluate", cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="report", version_base="1.3")
def report_main(cfg: DictConfig) -> float | None:
    return _run_stage("report", cfg)


MAINS = {"train": train_main, "calibrate": calibrate_main, "evaluate": evaluate_main, "report": report_main}

USAGE = "usage: elastic {train,calibrate,evaluate,report} [key=value ...] [--help] [--hydra-help] [--cfg job] [-m]"


def _help() -> str:
    lines = [USAGE, "", "stages:"]
    lines += [f"  {name:<10} {what}" for name, what in STAGES.items()]
    lines += [
        "",
        "config groups: method backbone task device sweep  (e.g. method=early_exit backbone=minilm-l6 task=sst2)",
        "examples:",
        "  elastic train method=early_exit backbone=minilm-l6 task=sst2 task.data_dir=path/to/sst2",
        "  elastic evaluate method=early_exit backbone=minilm-l6 task=sst2 task.data_dir=... sweep=thresholds",
        "  elastic train --help        (the stage's config groups and options)",
        "  elastic report task=sst2 report.backbone=minilm-l6  (the methods evaluated on sst2, compared)",
        "  elastic evaluate --cfg job  (print the composed config)",
    ]
    return "\n".join(lines)


def _print(text: str) -> None:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `elastic train --help | head`
        sys.stderr.close()
        sys.exit(0)


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (UserError, HydraException, OmegaConfBaseException)


# a name, or a comma-separated list of names (a multirun over the options)
_EXIT_SHORTHAND = re.compile(r"^method\.exit=([A-Za-z_][A-Za-z0-9_]*(?:,[A-Za-z_][A-Za-z0-9_]*)*)$")
_SWIFT_SHORTHAND = re.compile(
    r"^method\.swift=([A-Za-z0-9_][A-Za-z0-9_.-]*(?:,[A-Za-z0-9_][A-Za-z0-9_.-]*)*)$"
)
# a threshold grid, `a,b,c` or `[a,b,c]` (anything unquoted with a comma, a bracket or a parenthesis): one
# value of method.exit.sweep, never a multirun over it; config.validate checks its items are thresholds
_GRID_SHORTHAND = re.compile(r"^method\.exit\.sweep=([^'\"]*[,(\[][^'\"]*)$")


# a report's list setting given bare (`report.methods=sweet`, `report.methods=sweet,pabee`): one list, never
# a multirun of reports
_REPORT_LIST_SHORTHAND = re.compile(r"^report\.(methods|runs|speedups)=([^\[\]'\"()]+)$")


def _exit_group_shorthand(arg: str) -> str:
    """`method.exit=patience` means the nested config group `method/exit=patience`: the exit node
    is a config, so a bare name can only mean one of its options. Likewise `method.swift=minilm-l6`
    (E-LANG's swift model) picks a backbone config: `backbone@method.swift=minilm-l6`.

    `method.exit.sweep=0.6,0.9` (or `[0.6,0.9]`) is the grid of `sweep=thresholds`, one string: Hydra
    would read the bare comma list (or `range(...)`) as a multirun over the grid itself and sweep the
    default grid once per value, so it is quoted (`method.exit.sweep='0.6,0.9'`). A report's list settings
    given bare are lists: `report.methods=sweet,pabee` is `report.methods=[sweet,pabee]`."""
    match = _REPORT_LIST_SHORTHAND.match(arg)
    if match:
        return f"report.{match.group(1)}=[{match.group(2)}]"
    match = _GRID_SHORTHAND.match(arg)
    if match:
        grid = match.group(1).strip()
        if grid.startswith("[") and grid.endswith("]"):
            grid = grid[1:-1]
        items = ",".join(filter(None, (item.strip() for item in grid.split(","))))
        return f"method.exit.sweep='{items}'"
    match = _EXIT_SHORTHAND.match(arg)
    if match:
        return f"method/exit={match.group(1)}"
    match = _SWIFT_SHORTHAND.match(arg)
    return f"backbone@method.swift={match.group(1)}" if match else arg


# Hydra's flags that compose the config and print it (or Hydra's information) without running the stage
_SHOW_FLAGS = frozenset({"--cfg", "-c", "--info", "-i", "--resolve"})


def _show(stage: str) -> None:
    """Run the stage's Hydra app for a flag that only shows the config; when the composition names a
    schema of the package's own plug-ins, import them and compose again (nothing was printed yet)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    from elastic_cli.plugins import register_own

    try:
        MAINS[stage]()
    except MissingConfigException:
        register_own()
        GlobalHydra.instance().clear()
        MAINS[stage]()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same unwinding happens."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # One unwinding: a second SIGTERM must not cut short the cleanup of the first (SIGKILL still works).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _stopped(message: str, code: int) -> NoReturn:
    from elastic_cli import hydra_callbacks

    hydra_callbacks.mark_interrupted()  # a sweep's parent run, ended at exit, is KILLED
    print(message, file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # a usage error, like any other bad command line
        print(_help(), file=sys.stderr)
        sys.exit(2)
    if args[0] in ("-h", "--help", "help"):
        _print(_help())
        return
    stage = args.pop(0)
    if stage not in MAINS:
        print(f"error: unknown stage {stage!r}; choose one of {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    args = [_exit_group_shorthand(a) for a in args]
    if "-h" in args or "--help" in args:
        # ours, not Hydra's: Hydra's lists the schema groups and cannot say what an option means
        from elastic_cli.help import overrides_of, stage_help

        try:
            text = stage_help(stage, STAGES[stage], CONFIG_PATH, overrides_of(args))
        except _user_errors() as err:
            fail(err)
        _print(text)
        return
    from elastic_cli.plugins import register_configs, searchpath_override

    # `--cfg job` and the like only compose and print: the package's own plug-ins (torch) are imported
    # only when the composition names one of their schemas (_show, below)
    shows_only = any(arg in _SHOW_FLAGS for arg in args)
    if shows_only and ("-m" in args or "--multirun" in args):  # Hydra's own message is a traceback
        print(
            "error: --cfg and --info show one run's config, not a multirun's: drop -m and give one "
            "value per swept key (e.g. method.exit.threshold=0.5 hydra/launcher=slurm --cfg hydra)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        plugin_conf = register_configs(own=stage in MODEL_STAGES and not shows_only)
    except UserError as err:
        fail(err)
    args += searchpath_override(plugin_conf)  # the outside plug-ins' YAMLs (ELASTIC_PLUGINS)
    # Let exceptions reach us instead of Hydra's multi-line report, so bad input is one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [f"elastic {stage}", *args]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _show(stage) if shows_only else MAINS[stage]()
    except _user_errors() as err:
        fail(err)
    except launchers.job_crashes() as err:  # a job killed outside elastic (its memory, its time limit)
        fail(launchers.crashed_job_error(err))
    except Terminated:
        _stopped("terminated by SIGTERM", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        _stopped("interrupted", 128 + signal.SIGINT)
    except BrokenPipeError:  # `elastic train --help | head`
        sys.stderr.close()
        sys.exit(0)
    else:
        # kept on the ways out: a sweep parent ended at exit still ends KILLED on a SIGTERM meanwhile
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
