"""What the checkpoint benchmarks share: a checkpoint opened as evaluate opens it, with its calibrated
rule, the task's first evaluation split encoded, every exit's outputs on it (evaluate's cache) and what
each exit costs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from elastic_cli import checkpoint, exits
from elastic_cli.checks import to_root
from elastic_cli.cost import ExitCosts
from elastic_cli.data import load_task_data
from elastic_cli.plugins import register_configs
from elastic_cli.stages.common import CachedOutputs
from elastic_cli.stages.subjects import Subject, SubjectInfo, describe, open_subject

CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Loaded:
    info: SubjectInfo
    subject: Subject
    inputs: Any  # the split, encoded as the subject needs it
    cached: CachedOutputs
    costs: ExitCosts
    rule: exits.ExitRule
    temperatures: torch.Tensor
    threshold: float  # the calibrated one

    def flops_speedup(self, threshold: float, rows: np.ndarray) -> tuple[float, np.ndarray]:
        """The FLOPs speed-up (ratio of totals) over `rows` at `threshold`, and their exits."""
        decided = self.subject.decide(self.rule, self.cached, self.costs, threshold, self.temperatures)
        chosen = np.asarray(decided.adaptive_flops)[rows]
        return float(self.costs.reference_flops[rows].sum() / chosen.sum()), decided.exit_index[rows]

    def threshold_near(self, speedup: float, rows: np.ndarray) -> float:
        """The threshold of the rule's curve whose FLOPs speed-up over `rows` is closest to `speedup`."""
        scaled = self.cached.signals.float().scaled(self.temperatures)
        grid = self.rule.grid(self.subject.num_labels, len(self.subject.exit_names), 101, scaled)
        found = {float(t): self.flops_speedup(float(t), rows)[0] for t in grid.tolist()}
        return min(found, key=lambda t: abs(found[t] - speedup))


def load(ckpt: Path, data: Path, outputs: str, device: torch.device) -> Loaded:
    """`ckpt` (calibrated) on the first evaluation split of its task, read from `data`; `outputs` holds
    the outputs' cache when the checkpoint's own folder cannot."""
    info = describe(ckpt)
    subject = open_subject(ckpt, device)
    calib = checkpoint.CalibrationFile.load(ckpt)
    if calib is None:
        raise SystemExit(f"{ckpt} has no calibration.json: run `elastic calibrate` on it first")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = [f"task={info.task}", f"task.data_dir={data}", f"outputs={outputs}"]
        cfg = to_root(compose(config_name="evaluate", overrides=overrides))
    split_name, split = next(iter(load_task_data(cfg.task, cfg.seed).evals.items()))
    inputs = subject.encode(split)
    schema = exits.RULES.get(calib.rule).schema  # the rule's settings as calibration recorded them
    rule = exits.build_rule(schema(**{**(calib.rule_settings or {}), "name": calib.rule}))
    cached = subject.outputs(split_name, inputs, cfg, device)
    temperatures = torch.tensor(calib.temperatures)
    return Loaded(info, subject, inputs, cached, subject.costs(inputs), rule, temperatures, calib.threshold)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--data, --threshold and --threads, as every checkpoint benchmark reads them."""
    parser.add_argument("--data", type=Path, required=True, help="the task's local data folder")
    parser.add_argument("--threshold", type=float, default=None, help="default: the calibrated one")
    parser.add_argument("--threads", type=int, default=None, help="torch's threads; default: torch's")


def set_threads(threads: int | None) -> torch.device:
    """torch's CPU threads (when given); the device the benchmarks run on."""
    if threads:
        torch.set_num_threads(threads)
    return torch.device("cpu")
