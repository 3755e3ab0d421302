"""Checkpoint folders: where they live, how they are written (atomically) and read back.

A checkpoint folder holds
    model.safetensors   every weight of the multi-exit model
    backbone/           the Hugging Face config and tokenizer files (rebuilt with no hub access)
    config.yaml         the resolved config of the run that trained it
    meta.json           exit layers, labels, family, what training measured
    calibration.json    written by `elastic calibrate`
    cache/              all-exits logits per evaluation split (see stages/common.py)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model, save_model

from elastic_cli.config import RootConfig
from elastic_cli.errors import UserError
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.loading import backbone_from_folder, save_backbone_files
from elastic_cli.models.multi_exit import MultiExitModel

# bumped whenever the weights' layout changes, so an old checkpoint fails with a message, not a traceback
FORMAT = 2
WEIGHTS = "model.safetensors"
META = "meta.json"
CALIBRATION = "calibration.json"


@dataclass
class CheckpointMeta:
    method: str
    backbone: str
    family: str
    task: str
    seed: int
    exit_layers: list[int]
    num_labels: int
    label_names: list[str]
    pooling: str
    max_seq_length: int
    head: dict[str, Any] = field(default_factory=dict)  # HeadSpec fields
    lte: bool = False
    train_metrics: dict[str, Any] = field(default_factory=dict)
    format: int = 1  # checkpoints written before the field existed are format 1

    def head_spec(self) -> HeadSpec:
        return HeadSpec(**{"pooling": self.pooling, **self.head})


def default_dir(cfg: RootConfig) -> Path:
    return (
        Path(cfg.outputs)
        / "checkpoints"
        / cfg.task.name
        / cfg.method.name
        / cfg.backbone.name
        / f"seed{cfg.seed}"
    )


def checkpoint_dir(cfg: RootConfig) -> Path:
    """The folder `ckpt=` names, else the one `train` writes for this method/backbone/task/seed."""
    return Path(cfg.ckpt).expanduser() if cfg.ckpt else default_dir(cfg)


def _swap_in(tmp: Path, folder: Path) -> None:
    # Replace `folder` by the fully written `tmp`: a reader sees the old or the new checkpoint, never half.
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def save(
    folder: Path, model: MultiExitModel, tokenizer: Any, raw_cfg: DictConfig, meta: CheckpointMeta
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_model(model, str(tmp / WEIGHTS))
        save_backbone_files(model.backbone, tokenizer, tmp / "backbone")
        OmegaConf.save(raw_cfg, tmp / "config.yaml", resolve=True)
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2))
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_meta(folder: Path) -> CheckpointMeta:
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise UserError(
            f"no checkpoint in {folder}: run `elastic train` with the same method/backbone/task/seed first, "
            "or point ckpt= at a checkpoint folder"
        )
    meta = CheckpointMeta(**json.loads((folder / META).read_text()))
    if meta.format != FORMAT:
        raise UserError(
            f"the checkpoint in {folder} has format {meta.format}, this elastic reads format {FORMAT}: "
            "re-run `elastic train` (or use the elastic version that wrote it)"
        )
    return meta


def load(folder: Path, device: torch.device) -> tuple[MultiExitModel, Any, CheckpointMeta]:
    meta = read_meta(folder)
    adapter, tokenizer = backbone_from_folder(folder / "backbone", meta.family)
    model = MultiExitModel(
        adapter,
        meta.exit_layers,
        meta.num_labels,
        meta.head_spec(),
        use_pretrained_pooler=False,
        lte=meta.lte,
    )
    load_model(model, str(folder / WEIGHTS), device=str(device))
    model.to(device).eval()
    return model, tokenizer, meta


def weights_fingerprint(folder: Path) -> str:
    """Changes whenever the weights are rewritten: keys the on-disk logits cache."""
    st = (folder / WEIGHTS).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def read_calibration(folder: Path) -> dict[str, Any] | None:
    path = folder / CALIBRATION
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- cascades of separate models

CASCADE = "cascade.json"


@dataclass
class CascadeMeta:
    """A cascade's folder: cascade.json lists its models, smallest first. A model trained with the cascade
    lives in members/<name>/ (a checkpoint folder as above); a reused one is referenced where it is."""

    method: str
    task: str
    seed: int
    num_labels: int
    label_names: list[str]
    # one entry per model: name, folder (relative to the cascade's folder when inside it), weights
    members: list[dict[str, str]]
    format: int = FORMAT


def is_cascade(folder: Path) -> bool:
    return (folder / CASCADE).is_file()


def member_folder(folder: Path, entry: dict[str, str]) -> Path:
    path = Path(entry["folder"]).expanduser()
    return path if path.is_absolute() else folder / path


def save_cascade(folder: Path, tmp: Path, raw_cfg: DictConfig, meta: CascadeMeta) -> None:
    """Finish the cascade written into `tmp` (its members/ already saved there) and swap it in."""
    try:
        OmegaConf.save(raw_cfg, tmp / "config.yaml", resolve=True)
        (tmp / CASCADE).write_text(json.dumps(asdict(meta), indent=2))
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cascade_workdir(folder: Path) -> Path:
    """A fresh temporary folder beside `folder` to build a cascade in (removed if training fails)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def read_cascade_meta(folder: Path) -> CascadeMeta:
    meta = CascadeMeta(**json.loads((folder / CASCADE).read_text()))
    if meta.format != FORMAT:
        raise UserError(
            f"the cascade in {folder} has format {meta.format}, this elastic reads format {FORMAT}: "
            "re-run `elastic train`"
        )
    for entry in meta.members:
        member = member_folder(folder, entry)
        read_meta(member)
        if weights_fingerprint(member) != entry["weights"]:
            raise UserError(
                f"the {entry['name']} model of the cascade in {folder} ({member}) was rewritten after the "
                "cascade was assembled: re-run `elastic train` for the cascade"
            )
    return meta
