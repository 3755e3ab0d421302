"""`method.exit=NAME` and `method.swift=NAME` pick config-group options (one, or a multirun list);
`method.exit.sweep=a,b` is one grid for `sweep=thresholds`; anything else passes through untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from elastic_cli import cli
from elastic_cli.cli import _exit_group_shorthand


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("method.exit=patience", "method/exit=patience"),
        ("method.exit=maxprob,energy", "method/exit=maxprob,energy"),
        ("method.swift=minilm-l6", "backbone@method.swift=minilm-l6"),
        ("method.swift=minilm-l3,minilm-l6", "backbone@method.swift=minilm-l3,minilm-l6"),
        # values of the nodes' fields are ordinary overrides
        ("method.exit.threshold=0.9", "method.exit.threshold=0.9"),
        ("method.swift.path=/models/x", "method.swift.path=/models/x"),
        ("method.swift_ckpt=/ckpt", "method.swift_ckpt=/ckpt"),
        ("method.exit=", "method.exit="),
        # a threshold grid is one value of method.exit.sweep (quoted), not a multirun over it
        ("method.exit.sweep=0.6,0.9", "method.exit.sweep='0.6,0.9'"),
        ("method.exit.sweep=[0.6, 0.9]", "method.exit.sweep='0.6,0.9'"),
        ("method.exit.sweep=[2]", "method.exit.sweep='2'"),
        ("method.exit.sweep=-1,1e-3,+2", "method.exit.sweep='-1,1e-3,+2'"),
        ("method.exit.sweep=0.6,abc", "method.exit.sweep='0.6,abc'"),  # validate names the bad item
        ("method.exit.sweep=range(1,4)", "method.exit.sweep='range(1,4)'"),  # ... and refuses this one
        ("method.exit.sweep=[]", "method.exit.sweep=''"),
        ("method.exit.sweep=0.9", "method.exit.sweep=0.9"),
        ("method.exit.sweep='0.6,0.9'", "method.exit.sweep='0.6,0.9'"),
        ("method.exit.threshold=0.6,0.9", "method.exit.threshold=0.6,0.9"),  # a multirun, as Hydra reads it
        # a report's list settings given bare are one list, not a multirun of reports
        ("report.methods=sweet", "report.methods=[sweet]"),
        ("report.methods=sweet,pabee", "report.methods=[sweet,pabee]"),
        ("report.speedups=2,3", "report.speedups=[2,3]"),
        ("report.methods=[sweet]", "report.methods=[sweet]"),
        ("report.backbone=mpnet-base", "report.backbone=mpnet-base"),
    ],
)
def test_shorthands(arg: str, expected: str) -> None:
    assert _exit_group_shorthand(arg) == expected


@pytest.mark.parametrize(
    ("args", "thresholds"),
    [
        (["method.exit.sweep=0.6,0.9"], [0.6, 0.9]),
        (["method.exit=patience", "method.exit.sweep=[2,3,5]"], [2, 3, 5]),
    ],
)
def test_a_custom_threshold_grid_is_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], thresholds: list[float]
) -> None:
    """`elastic evaluate sweep=thresholds method.exit.sweep=0.6,0.9` launches exactly one job per threshold
    of the given grid: the real command line through Hydra's sweeper and launcher, with the stage itself
    replaced by a recorder."""
    jobs: list[tuple[float | None, str]] = []

    def record(stage: str, cfg: DictConfig) -> None:
        jobs.append((cfg.method.exit.threshold, cfg.method.exit.sweep))

    monkeypatch.setattr(cli, "_run_stage", record)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main sets both for Hydra
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("ELASTIC_MODELS", "/models")
    GlobalHydra.instance().clear()
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none", "~hydra.callbacks.mlflow_sweep"]
    cli.main(["evaluate", "sweep=thresholds", *args, f"outputs={tmp_path}", *quiet])
    GlobalHydra.instance().clear()
    assert [threshold for threshold, _ in jobs] == thresholds
    grids = {grid for _, grid in jobs}
    assert len(grids) == 1 and [float(t) for t in grids.pop().split(",")] == thresholds
