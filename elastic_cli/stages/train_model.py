"""One model of `elastic train`: build a method's model on a backbone and train it stage by stage
(stages/train_loop.py), then describe its checkpoint. Shared by the single-model run (stages/train.py)
and every model of a cascade (stages/train_cascade.py). Two-stage methods (DeeBERT, FastBERT) start
their second stage from the best weights of the first.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from elastic_cli import checkpoint, tracking
from elastic_cli.config import BackboneConfig, RootConfig, parse_exit_layers
from elastic_cli.data import encode
from elastic_cli.data.splits import TaskData
from elastic_cli.methods import Method
from elastic_cli.methods.base import StageContext
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MODEL_SHAPES, MultiExitModel
from elastic_cli.stages import init_from, train_state
from elastic_cli.stages.common import console
from elastic_cli.stages.train_loop import Best, Saver, train_stage


@dataclass
class Fitted:
    """A trained model with what its checkpoint needs."""

    model: MultiExitModel
    tokenizer: Any
    head: HeadSpec
    best: Best


def fit(
    cfg: RootConfig,
    method: Method,
    backbone_cfg: BackboneConfig,
    keep_layers: int | None,
    data: TaskData,
    device: torch.device,
    prefix: str = "",
    start: init_from.Start | None = None,
    saver: Saver | None = None,
    resume: train_state.TrainState | None = None,
    folder: Path | None = None,
) -> Fitted:
    """Build `method`'s model on `backbone_cfg` (its first `keep_layers` layers, if set) and train it
    stage by stage, the stages `start` stands for skipped, from where `resume` stopped if given; the
    model comes back with the best weights loaded. `folder` is the checkpoint it is trained for."""
    train_texts = [t for row in data.train.texts for t in row]
    backbone, tokenizer = build_backbone(backbone_cfg, train_texts=train_texts, seed=cfg.seed)
    if keep_layers is not None:
        backbone.truncate(keep_layers)
    exit_layers = parse_exit_layers(method.cfg.exit_layers, backbone.num_layers)
    head = method.head_spec(backbone_cfg)
    model = MODEL_SHAPES.get(method.model_shape)(
        backbone,
        exit_layers,
        cfg.task.num_labels,
        head,
        use_pretrained_pooler=backbone_cfg.use_pretrained_pooler,
        lte=method.cfg.lte,
        stop_gradient=method.cfg.stop_gradient,
        gradient_equilibrium=method.cfg.gradient_equilibrium,
        **method.shape_settings(),
    ).to(device)
    pad_id = int(tokenizer.pad_token_id)
    enc_train = encode(data.train, tokenizer, cfg.task.max_seq_length)
    enc_cal = encode(data.calibration, tokenizer, cfg.task.max_seq_length)
    tracking.log_params(
        {
            f"{prefix}exit_layers": exit_layers,
            "n_train": len(data.train),
            "n_calibration": len(data.calibration),
        }
    )
    what = f"{cfg.method.name} ({prefix.rstrip('/')} model)" if prefix else cfg.method.name
    console.print(
        f"train {what} on {backbone_cfg.name} ({backbone.num_layers} layers) / {cfg.task.name}: "
        f"{len(data.train)} training, {len(data.calibration)} calibration examples, exits at {exit_layers}"
    )
    best = Best()
    step = 0
    skip = start.stages_done if start is not None else 0
    fingerprint = ""
    if start is not None:
        init_from.load_into(model, start)
        console.print(f"stage 1 done: backbone and final classifier from {start.folder}")
        fingerprint = checkpoint.weights_fingerprint(start.folder)
        tracking.log_params({"init_from": str(start.folder), "init_from_weights": fingerprint})
    if resume is not None:
        model.load_state_dict(resume.model)
        best, step = Best.restored(resume.best), resume.position.step
        skip = resume.position.stage
    for s, stage in enumerate(method.stages()[skip:], start=skip):
        resuming = resume if resume is not None and s == resume.position.stage else None
        context = StageContext(
            train=enc_train,
            calibration=enc_cal,
            pad_id=pad_id,
            device=device,
            batch_size=cfg.device.eval_batch_size,
            init_from_weights=fingerprint,
            work=folder,
            resuming=resuming is not None,
        )
        if start is not None and s == skip:  # the init_from checkpoint's own score on this calibration split
            context.previous_score = float(
                start.meta.train_metrics.get("calibration_exit_scores", [math.nan])[-1]
            )
        if s > skip:
            context.previous, context.previous_score = best.states(), best.score
            model.load_state_dict(best.state)  # a later stage starts from the best of the one before
            best = Best()
        method.prepare_stage(s, stage, model, context)
        best, step = train_stage(
            cfg.train,
            s,
            stage,
            method,
            model,
            enc_train,
            enc_cal,
            pad_id,
            device,
            step,
            best,
            seed=cfg.seed,
            eval_batch_size=cfg.device.eval_batch_size,
            prefix=prefix,
            saver=saver,
            resume=resuming,
        )
    model.load_state_dict(best.state)
    return Fitted(model, tokenizer, head, best)


def checkpoint_meta(
    cfg: RootConfig, method_name: str, backbone_cfg: BackboneConfig, fitted: Fitted, started: float
) -> checkpoint.CheckpointMeta:
    """The checkpoint's meta.json for `fitted`, trained as `method_name` since `started`."""
    return checkpoint.CheckpointMeta(
        method=method_name,
        backbone=backbone_cfg.name,
        family=backbone_cfg.family,
        task=cfg.task.name,
        seed=cfg.seed,
        exit_layers=fitted.model.exit_layers,
        num_labels=cfg.task.num_labels,
        label_names=list(cfg.task.label_names),
        pooling=fitted.head.pooling,
        max_seq_length=cfg.task.max_seq_length,
        head={k: v for k, v in asdict(fitted.head).items() if k != "pooling"},
        lte=fitted.model.lte is not None,
        shape=fitted.model.name,
        shape_settings=fitted.model.shape_settings(),
        format=checkpoint.FORMAT,
        train_run_id=tracking.active_run_id() or "",
        train_metrics={
            "best_step": fitted.best.step,
            "calibration_exit_scores": fitted.best.scores.tolist(),
            "seconds": time.perf_counter() - started,
            "init_from": cfg.train.init_from,
        },
    )


def say_resuming(path: Path, state: train_state.TrainState) -> None:
    p = state.position
    console.print(
        f"resuming from {path}: stage {p.stage + 1}, epoch {p.epoch + 1}, step {p.step} "
        "(train.resume=false starts over)"
    )


def print_summary(exit_names: list[str], scores: np.ndarray, folder: Path) -> None:
    table = Table(title="calibration split, best checkpoint")
    table.add_column("exit", justify="right")
    table.add_column("score", justify="right")
    for exit_name, a in zip(exit_names, scores):
        table.add_row(exit_name, f"{a:.4f}")
    console.print(table)
    console.print(f"checkpoint: {folder}")
