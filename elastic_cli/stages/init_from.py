"""`train.init_from`: start a two-stage method (DeeBERT, FastBERT) from an already fine-tuned model.

Their first stage is plain fine-tuning of the backbone and the final classifier (objective
`final_only`); a `method=static` checkpoint of the same backbone, task, data and seed is that stage
already done. Its backbone and classifier become this model's backbone and last exit, the other
exits keep the initialisation a full run gives them, and the leading `final_only` stages are
skipped. The data settings must match: with another seed or subset, the checkpoint's training data
could hold this run's calibration examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file

from elastic_cli import checkpoint
from elastic_cli.config import RootConfig, TrainStageConfig
from elastic_cli.errors import UserError
from elastic_cli.models.json_files import first_line
from elastic_cli.models.multi_exit import MultiExitModel

# what decides the training subset and the calibration split carved from it
SPLIT_SETTINGS = ("name", "data_dir", "max_train_samples", "calibration_fraction", "calibration_max_samples")


def stages_done(stages: list[TrainStageConfig]) -> int:
    """How many leading stages train the final exit alone (what a fine-tuned checkpoint stands for)."""
    n = 0
    while n < len(stages) and stages[n].objective == "final_only" and stages[n].trainable == "all":
        n += 1
    return n


@dataclass
class Start:
    """A checked `train.init_from` checkpoint and how many of the method's stages it stands for."""

    folder: Path
    meta: checkpoint.CheckpointMeta
    stages_done: int


def check_source(cfg: RootConfig, stages: list[TrainStageConfig]) -> Start:
    """Check `train.init_from` against this run (before anything is loaded): it must stand for the
    method's first stages, on the same backbone, labels and data."""
    folder = Path(str(cfg.train.init_from)).expanduser().resolve()
    skip = stages_done(stages)
    if skip == 0:
        raise UserError(
            f"train.init_from replaces a first stage that fine-tunes the final exit alone; method "
            f"{cfg.method.name} has none (use it with method=deebert or method=fastbert)"
        )
    if skip == len(stages):
        raise UserError(
            f"train.init_from with method={cfg.method.name} leaves nothing to train: the checkpoint is "
            "already that model (evaluate it with ckpt=)"
        )
    meta = checkpoint.read_meta(folder)
    if len(meta.exit_layers) != 1:
        raise UserError(
            f"train.init_from={folder} has {len(meta.exit_layers)} exits: it must be a fine-tuned "
            "single-exit model (method=static)"
        )
    if meta.backbone != cfg.backbone.name or meta.family != cfg.backbone.family:
        raise UserError(
            f"train.init_from={folder} was trained on backbone {meta.backbone}, not {cfg.backbone.name}"
        )
    if meta.num_labels != cfg.task.num_labels:
        raise UserError(
            f"train.init_from={folder} has {meta.num_labels} labels, task {cfg.task.name} has "
            f"{cfg.task.num_labels}"
        )
    saved = _read_saved_config(folder)
    differs = [f"seed ({saved.get('seed')} vs {cfg.seed})"] if saved.get("seed") != cfg.seed else []
    differs += [
        f"task.{key} ({saved.task.get(key)} vs {getattr(cfg.task, key)})"
        for key in SPLIT_SETTINGS
        if saved.task.get(key) != getattr(cfg.task, key)
    ]
    if differs:
        raise UserError(
            f"train.init_from={folder} was trained on other data ({', '.join(differs)}): its training "
            "examples could be in this run's calibration split; fine-tune it with the same seed and task settings"
        )
    return Start(folder, meta, skip)


def _read_saved_config(folder: Path) -> DictConfig:
    """The config.yaml that `elastic train` saved beside the checkpoint (a UserError naming it when it
    is missing or damaged)."""
    path = folder / "config.yaml"
    fix = "re-run `elastic train` method=static for the train.init_from checkpoint, or restore it"
    try:
        saved = OmegaConf.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {fix}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise UserError(f"{path} is corrupt ({first_line(err)}): {fix}") from None
    if not isinstance(saved, DictConfig) or not isinstance(saved.get("task"), DictConfig):
        raise UserError(f"{path} is corrupt (it holds no task settings): {fix}")
    # train saves every key (null when unset): one missing means a cut or edited file
    missing = ["seed"] if "seed" not in saved else []
    missing += [f"task.{key}" for key in SPLIT_SETTINGS if key not in saved.task]
    if missing:
        raise UserError(f"{path} is corrupt (no {missing[0]}): {fix}")
    return saved


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / checkpoint.WEIGHTS
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise UserError(
            f"train.init_from: {path} is corrupt or truncated ({first_line(err)}): re-run `elastic train` "
            "method=static for it, or restore it"
        ) from None
    except OSError as err:
        raise UserError(f"train.init_from: cannot read {path} ({err.strerror or first_line(err)})") from None


def load_into(model: MultiExitModel, start: Start) -> None:
    """The checkpoint's backbone and its one classifier into `model`'s backbone and last exit."""
    folder, meta = start.folder, start.meta
    ours, theirs = model.head_spec, meta.head_spec()
    if any(getattr(ours, k) != getattr(theirs, k) for k in model.heads.init_fields):
        raise UserError(
            f"train.init_from={folder} has a {theirs.kind} head ({theirs.pooling} pooling), this method's "
            f"last exit a {ours.kind} head ({ours.pooling} pooling): fine-tune the checkpoint with "
            f"method=static method.head={ours.kind}"
        )
    source = _read_weights(folder)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key.startswith("heads."):
            mapped[f"heads.{model.heads.static_key(key.removeprefix('heads.'))}"] = value
        else:
            mapped[key] = value
    try:
        missing, unexpected = model.load_state_dict(mapped, strict=False)
    except RuntimeError as e:  # a tensor of another shape: another size of the same family
        raise UserError(
            f"train.init_from={folder} does not fit this model ({str(e).splitlines()[-1].strip()})"
        ) from None
    backbone_missing = [k for k in missing if k.startswith("backbone.")]
    if unexpected or backbone_missing:
        raise UserError(
            f"train.init_from={folder} does not fit this model (unexpected {unexpected[:3]}, missing "
            f"{backbone_missing[:3]}): it must be a method=static checkpoint of backbone {meta.backbone}"
        )
