"""What a stage's MLflow run says about itself: its name, its params, and what links it to the checkpoint
and the run that trained it.

A calibrate or evaluate run's params describe two things under separate names, so that two evaluations
of differently trained checkpoints never look alike:
- what the model is: the checkpoint's own training config (its config.yaml), under the config's keys
  (`train.lr`, `task.max_train_samples`, `method.name`...), without the sections only a stage reads;
- what was measured, and how: this stage's exit rule as `exit.*`, its data settings as `data.*`, its
  device as `device.*` and its own section (`evaluate.*` or `calibrate.*`), plus `checkpoint.path` and
  `checkpoint.weights` (the weights' content hash).
The train run that wrote the checkpoint is the tag `elastic.train_run_id` and a link in the run's
description (MLflow renders the description as markdown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# sections of the checkpoint's config that describe a stage, not the model: replaced by the stage's own
STAGE_SECTIONS = ("hydra", "calibrate", "evaluate", "tracking", "device", "ckpt", "outputs", "stage")
# the stage-time settings that share a key with the model's config, and the names they are logged under
STAGE_PREFIXES = {"method.exit.": "exit.", "task.": "data.", "seed": "data.seed"}
# what `mlflow ui` serves by default; a tracking server's own address is used when there is one
LOCAL_UI = "http://127.0.0.1:5000"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 opens such an experiment on its runs
TRAIN_RUN_TAG = "elastic.train_run_id"
NOTE_TAG = "mlflow.note.content"  # MLflow's description of a run or an experiment (markdown)


@dataclass(frozen=True)
class CheckpointRecord:
    """The checkpoint a calibrate or evaluate run reads."""

    path: Path
    weights: str  # content hash of the weights (a cascade's: its models', joined)
    train_run_id: str  # "" when the checkpoint does not say (written before elastic recorded it)
    config: dict[str, Any] | None  # its training config (config.yaml); None when missing or unreadable


def read_saved_config(folder: Path) -> dict[str, Any] | None:
    """The config.yaml that train saved beside the checkpoint, as plain data; None when it is missing or
    unreadable (the run then logs the stage's config alone: nothing here is worth failing a run for)."""
    try:
        data = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def model_params(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's training config without what only a stage reads (the stage logs its own), and
    without the train-time exit rule (the stage's rule is logged as exit.*)."""
    model = {key: value for key, value in saved.items() if key not in STAGE_SECTIONS}
    method = model.get("method")
    if isinstance(method, Mapping):
        model["method"] = {key: value for key, value in method.items() if key != "exit"}
    return model


def stage_params(stage_config: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """This stage's settings under their own names: exit.*, data.*, device.*, and <stage>.*."""
    params: dict[str, Any] = {"stage": stage}
    method = stage_config.get("method")
    if isinstance(method, Mapping) and isinstance(method.get("exit"), Mapping):
        # an unset threshold is evaluate's calibrated one, logged once known (exit.threshold_source says
        # which); calibrate chooses one and logs it as a metric
        params["exit"] = {k: v for k, v in method["exit"].items() if not (k == "threshold" and v is None)}
    data = dict(stage_config.get("task") or {})
    data["seed"] = stage_config.get("seed")  # it carves the calibration split and picks the timed examples
    params["data"] = data
    for section in ("device", stage):
        if isinstance(stage_config.get(section), Mapping):
            params[section] = dict(stage_config[section])
    return params


def logged_name(key: str) -> str:
    """The param a stage run logs a config key under (`method.exit.threshold` -> `exit.threshold`)."""
    for prefix, renamed in STAGE_PREFIXES.items():
        if key == prefix or key.startswith(prefix):
            return renamed + key[len(prefix) :]
    return key


def run_params(stage_config: Mapping[str, Any], record: CheckpointRecord | None) -> dict[str, Any]:
    """The params tree of a stage run: the config itself for train (and whenever the checkpoint's config
    is unknown); the model's training config beside the stage's own settings for calibrate and evaluate."""
    stage = str(stage_config.get("stage", ""))
    if record is None or record.config is None:
        plain = {k: v for k, v in stage_config.items() if k != "hydra"}
        if record is None:
            return plain
        model = model_params(plain)  # no config.yaml: the stage's config is the best guess of the model
    else:
        model = model_params(record.config)
    model.update(stage_params(stage_config, stage))
    if record is not None:
        model["checkpoint"] = {"path": str(record.path), "weights": record.weights}
    return model


def threshold_text(threshold: float | None) -> str:
    """`0.90`, `3`, `1.5`: two decimals for a probability-like threshold, whole numbers bare."""
    if threshold is None or not math.isfinite(threshold):
        return ""
    if float(threshold).is_integer():
        return f"{threshold:.0f}"
    return f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:g}"


def run_name(
    stage: str,
    method: str,
    backbone: str,
    rule: str | None = None,
    threshold: float | None = None,
    precision: str = "float32",
) -> str:
    """What tells runs apart in MLflow's tables: `evaluate sweet mpnet-base maxprob t=0.90` (and `int8`
    for a model run in another precision than float32)."""
    parts = [stage, method, backbone]
    if stage in ("calibrate", "evaluate") and rule:
        parts.append(rule)
    if stage == "evaluate" and threshold is not None:
        parts.append(f"t={threshold_text(threshold)}")
    if stage in ("calibrate", "evaluate") and precision != "float32":
        parts.append(precision)
    return " ".join(parts)


def ui_base(uri: str, ui_url: str | None = None) -> str:
    """The address of the MLflow UI: `tracking.ui_url`, else the tracking server itself, else `mlflow ui`'s
    default."""
    if ui_url:
        return ui_url.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def run_link(uri: str, experiment_id: str, run_id: str, ui_url: str | None = None) -> str:
    return f"{ui_base(uri, ui_url)}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_command(uri: str) -> str:
    """How to open the UI of a local store (empty for a server, which is its own UI)."""
    if uri.startswith(("http://", "https://")):
        return ""
    return f"mlflow ui --backend-store-uri {uri}"


def train_run_note(record: CheckpointRecord, experiment_id: str | None) -> str:
    """The run's description: the checkpoint, and a link to the train run that wrote it (a link inside
    the UI, so it works wherever the UI is served)."""
    weights = record.weights.removeprefix("sha256:")[:12]
    lines = [f"Checkpoint `{record.path}` (weights sha256 `{weights}`)."]
    if record.train_run_id and experiment_id:
        lines.append(
            f"Trained by run [{record.train_run_id}](#/experiments/{experiment_id}/runs/{record.train_run_id})."
        )
    elif record.train_run_id:
        lines.append(f"Trained by run `{record.train_run_id}` (not in this tracking store).")
    return "\n\n".join(lines)


def experiment_description(name: str) -> str:
    # plain text: the experiments list shows it unrendered
    return (
        f"elastic runs for task {name}: train, calibrate and evaluate of adaptive-inference methods "
        "(early exit, cascades, token reduction). Compare runs by the columns accuracy (or the task's "
        "metric), flops_speedup and latency_speedup_mean; a sweep is a parent run with its children. "
        "Search attributes.status = 'FINISHED' to leave failed attempts out."
    )


def exit_position(column: str) -> float:
    """Where a per-exit metric's exit (`exit_accuracy_L4`, `exit_fraction_super`) stands: L<k> at k, a
    cascade's super model last, swift first."""
    name = column.rsplit("_", 1)[-1]
    if name[:1] == "L" and name[1:].isdigit():
        return float(name[1:])
    return float("inf") if name == "super" else 0.0
