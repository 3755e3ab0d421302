"""`elastic train` of a cascade (E-LANG, SWEET's multi-model baseline): train, or reuse, each of its
models, then write the cascade's folder in one swap.

The cascade is built in a work folder beside its own; an interrupted run leaves it (the models already
trained, the state of the one in training) for the next `elastic train` to go on from.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from elastic_cli import checkpoint, distributed, tracking
from elastic_cli.config import BackboneConfig, RootConfig, TaskConfig
from elastic_cli.data.splits import TaskData
from elastic_cli.errors import UserError
from elastic_cli.methods import CascadeMemberSpec, CascadeMethod
from elastic_cli.metrics import score_name
from elastic_cli.models.loading import build_backbone
from elastic_cli.stages import train_state
from elastic_cli.stages.common import console
from elastic_cli.stages.train_loop import Saver
from elastic_cli.stages.train_model import checkpoint_meta, fit, print_summary, say_resuming


def reused_member(task: TaskConfig, spec: CascadeMemberSpec) -> tuple[Path, checkpoint.CheckpointMeta]:
    """A trained checkpoint named by `method.*_ckpt`: it must be a single-exit model of this task."""
    folder = Path(str(spec.ckpt)).expanduser().resolve()
    meta = checkpoint.read_meta(folder)
    if meta.task != task.name or meta.num_labels != task.num_labels:
        raise UserError(f"the {spec.name} checkpoint {folder} was trained on {meta.task}, not {task.name}")
    if len(meta.exit_layers) != 1:
        raise UserError(
            f"the {spec.name} checkpoint {folder} has {len(meta.exit_layers)} exits: a cascade reuses "
            "single-exit models (method=static)"
        )
    return folder, meta


def train_cascade(
    cfg: RootConfig,
    raw: DictConfig,
    method: CascadeMethod,
    data: TaskData,
    folder: Path,
    device: torch.device,
    started: float,
    replaces: str | None = None,
) -> float:
    """Train (or reuse) every model of the cascade, then write the cascade's folder in one swap."""
    specs = method.members(cfg, lambda: _depth(cfg.backbone, data))
    # reject a bad reused checkpoint before hours of training the others
    reused = {spec.name: reused_member(cfg.task, spec) for spec in specs if spec.ckpt}
    name = score_name(cfg.task.num_labels)
    work = train_state.cascade_work(folder)
    # rank 0's, before any process looks into it (a collective: the others wait for it)
    distributed.on_main(
        partial(train_state.start_cascade_work, work, raw, cfg.train.resume, tracking.active_run_id())
    )
    entries: list[checkpoint.CascadeMember] = []
    scores: list[float] = []
    for spec in specs:
        if spec.name in reused:
            member, meta = reused[spec.name]
            score = float(meta.train_metrics.get("calibration_exit_scores", [float("nan")])[-1])
            where = str(member)
            console.print(f"{spec.name} model: reusing {member}")
            tracking.log_params({f"{spec.name}/checkpoint": where})
        else:
            member = work / "members" / spec.name
            where = f"members/{spec.name}"
            # trained before the interruption (rank 0's view, which every process follows)
            if distributed.on_main(partial(Path.is_file, member / checkpoint.META)):
                if not distributed.is_main():
                    continue
                meta = checkpoint.read_meta(member)
                score = float(meta.train_metrics["calibration_exit_scores"][-1])
                console.print(f"{spec.name} model: trained before the interruption ({member})")
            else:
                score = _train_member(cfg, raw, method, spec, data, device, member)
        if not distributed.is_main():  # rank 0 keeps the books and writes the cascade
            continue
        tracking.log_metrics({f"{spec.name}/best_{name}": score})
        entries.append(checkpoint.CascadeMember(spec.name, where, checkpoint.weights_fingerprint(member)))
        scores.append(score)
    if not distributed.is_main():
        return float("nan")  # (the run's value is rank 0's)
    meta_c = checkpoint.CascadeMeta(
        method=cfg.method.name,
        task=cfg.task.name,
        seed=cfg.seed,
        num_labels=cfg.task.num_labels,
        label_names=list(cfg.task.label_names),
        members=entries,
        train_run_id=tracking.active_run_id() or "",
    )
    checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
    train_state.finish_cascade_work(work)
    checkpoint.save_cascade(folder, work, raw, meta_c)
    if replaces:
        console.print(f"replaced {replaces}")
    tracking.log_metrics({"train_seconds": time.perf_counter() - started})
    tracking.log_params({"checkpoint": str(folder.resolve())})
    print_summary([s.name for s in specs], np.asarray(scores), folder)
    return float(scores[-1])


def _train_member(
    cfg: RootConfig,
    raw: DictConfig,
    method: CascadeMethod,
    spec: CascadeMemberSpec,
    data: TaskData,
    device: torch.device,
    member: Path,
) -> float:
    """Train the cascade's model `spec` (from its interrupted state, if any) into the folder `member`;
    returns its final exit's best calibration score."""
    member_started = time.perf_counter()
    saver = Saver(
        train_state.state_path(member),
        cfg.train.save_every,
        train_state.training_settings(raw),
        member=spec.name,
    )
    resume = train_state.resumable(member, raw, cfg.train.resume)
    if resume is not None:
        say_resuming(saver.path, resume)
    distributed.same_everywhere(
        resume is not None and vars(resume.position), "the training state to resume from"
    )
    fitted = fit(
        cfg,
        method.member_method(),
        spec.backbone,
        spec.layers,
        data,
        device,
        f"{spec.name}/",
        saver=saver if distributed.is_main() else None,
        resume=resume,
    )
    if not distributed.is_main():
        return float(fitted.best.scores[-1])
    meta = checkpoint_meta(cfg, "static", spec.backbone, fitted, member_started)
    checkpoint.save(member, fitted.model, fitted.tokenizer, raw, meta)
    train_state.remove(saver.path)
    score = float(fitted.best.scores[-1])
    tracking.log_metrics({f"{spec.name}/train_seconds": time.perf_counter() - member_started})
    return score


def _depth(backbone_cfg: BackboneConfig, data: TaskData) -> int:
    """Layers of the cascade's backbone: a tiny backbone's from the schema, else from the loaded
    backbone (once, only for a method whose models depend on the depth)."""
    if backbone_cfg.tiny is not None:
        return int(backbone_cfg.tiny.num_layers)
    backbone, _ = build_backbone(backbone_cfg, train_texts=[t for row in data.train.texts for t in row])
    return int(backbone.num_layers)
