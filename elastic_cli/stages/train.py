"""`elastic train`: fine-tune the method's model, stage by stage, and write the best checkpoint.

After every epoch every exit is scored on the calibration split; the checkpoint kept is the best
by mean exit accuracy (by the final exit's in a stage that trains only the final exit). Two-stage
methods (DeeBERT, FastBERT) start their second stage from the best weights of the first.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.table import Table
from transformers import get_linear_schedule_with_warmup

from elastic_cli import checkpoint, exits, tracking
from elastic_cli.config import BackboneConfig, RootConfig, TrainStageConfig, parse_exit_layers
from elastic_cli.data import Encoded, batches, encode, load_task_data
from elastic_cli.data.splits import TaskData
from elastic_cli.errors import UserError
from elastic_cli.methods import CascadeMemberSpec, CascadeMethod, Method, build_method
from elastic_cli.methods.objectives import DynamicWeights, Objective
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.stages import init_from, train_state
from elastic_cli.stages.common import (
    all_exit_outputs,
    console,
    exit_scores,
    progress,
    score_name,
    seed_everything,
    setup_device,
)


def set_trainable(model: MultiExitModel, trainable: str) -> list[torch.nn.Parameter]:
    """`all`, or `intermediate_heads`: only the heads of the exits before the last (and the LTE module);
    the backbone, the final head and anything the exits share stay frozen (DeeBERT, FastBERT stage 2)."""
    model.requires_grad_(trainable == "all")
    if trainable == "intermediate_heads":
        for e in range(model.num_exits - 1):
            for p in model.heads.own_parameters(e):
                p.requires_grad_(True)
        if model.lte is not None:
            model.lte.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _optimizer(
    model: MultiExitModel, objective: Objective, lr: float, cfg: RootConfig
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (as BERT fine-tuning does); the exit
    heads may have their own lr (`train.head_lr`); learnable objective weights get their own group."""
    t = cfg.train
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((not name.startswith("backbone."), p.ndim >= 2), []).append(p)
    head_lr = lr * (t.head_lr / t.lr) if t.head_lr else lr
    params: list[dict[str, Any]] = [
        {
            "params": ps,
            "lr": head_lr if is_head else lr,
            "weight_decay": t.weight_decay if decays else 0.0,
        }
        for (is_head, decays), ps in groups.items()
    ]
    own = [p for p in objective.parameters() if p.requires_grad]
    if own:
        params.append({"params": own, "lr": objective.lr or lr, "weight_decay": 0.0})
    return torch.optim.AdamW(params)


@dataclass
class Best:
    score: float = -1.0
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    stage: int = 0

    def saved(self) -> dict[str, Any]:
        return {**asdict(self), "scores": [float(x) for x in self.scores]}

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> Best:
        return cls(**{**saved, "scores": np.asarray(saved["scores"], dtype=np.float64)})


# test hook: SIGKILL this process once it has taken that many optimizer steps, over all the models it
# trains (the resume tests' fault)
FAULT_ENV = "ELASTIC_FAULT_AFTER_STEPS"
_steps_in_process = 0


@dataclass
class Saver:
    """Writes the training state (stages/train_state.py) every `every` steps and at each epoch's end."""

    path: Path
    every: int
    settings: dict[str, str]
    member: str = ""

    def save(
        self,
        position: train_state.Position,
        model: MultiExitModel,
        optimizer: torch.optim.Optimizer,
        schedule: Any,
        objective: Objective,
        best: Best,
    ) -> None:
        state = train_state.TrainState(
            position=position,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=schedule.state_dict(),
            objective=objective.state_dict(),
            best=best.saved(),
            rng=train_state.rng_state(),
            settings=self.settings,
            run_id=tracking.active_run_id(),
            member=self.member,
        )
        train_state.save(self.path, state)

    @staticmethod
    def after_step() -> None:
        global _steps_in_process
        _steps_in_process += 1
        fault_after = int(os.environ.get(FAULT_ENV) or 0)
        if fault_after and _steps_in_process >= fault_after:
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _sole_writer(folder: Path) -> Iterator[None]:
    """One `elastic train` per checkpoint folder at a time: a second one would race on its state."""
    from filelock import FileLock, Timeout

    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.with_name(f".{folder.name}.lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"another `elastic train` is writing {folder}: wait for it to end, or choose another ckpt="
        ) from None
    try:
        yield
    finally:
        lock.release()


@dataclass
class Fitted:
    """A trained model with what its checkpoint needs."""

    model: MultiExitModel
    tokenizer: Any
    head: HeadSpec
    best: Best


def run(cfg: RootConfig, raw: DictConfig) -> float:
    started = time.perf_counter()
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    method = build_method(cfg.method)
    rule = exits.build_rule(cfg.method.exit)
    single_exit = cfg.method.exit_layers == "last" and not isinstance(method, CascadeMethod)
    exits.check_applicable(rule, cfg.task.num_labels, cfg.method.lte, 1 if single_exit else None)
    folder = checkpoint.checkpoint_dir(cfg)
    # before any work: never replace anything but an elastic checkpoint of this method/backbone/task
    replaces = checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
    with _sole_writer(folder):
        return _run_locked(cfg, raw, method, folder, device, started, replaces)


def _run_locked(
    cfg: RootConfig,
    raw: DictConfig,
    method: Method,
    folder: Path,
    device: torch.device,
    started: float,
    replaces: str | None,
) -> float:
    state_file = train_state.state_path(folder)
    resume = None
    if isinstance(method, CascadeMethod):
        run_id = train_state.resumable_cascade(train_state.cascade_work(folder), raw, cfg.train.resume)
    else:
        resume = train_state.resumable(folder, raw, cfg.train.resume)
        run_id = resume.run_id if resume is not None else None
        if resume is not None:
            _say_resuming(state_file, resume)
        elif state_file.is_file():
            console.print(f"train.resume=false: starting over; the training state {state_file} is replaced")
    saver = Saver(state_file, cfg.train.save_every, train_state.training_settings(raw))
    with tracking.stage_run(cfg, raw, checkpoint=folder, resume_run_id=run_id):
        if cfg.train.init_from and isinstance(method, CascadeMethod):
            raise UserError(
                "train.init_from is for a two-stage method; a cascade reuses trained models with "
                "method.swift_ckpt= / method.super_ckpt="
            )
        start = init_from.check_source(cfg, method.stages()) if cfg.train.init_from else None
        data = load_task_data(cfg.task, cfg.seed)
        if isinstance(method, CascadeMethod):
            return _train_cascade(cfg, raw, method, data, folder, device, started, replaces)
        fitted = _fit(cfg, method, cfg.backbone, None, data, device, start=start, saver=saver, resume=resume)
        meta = _meta(cfg, cfg.method.name, cfg.backbone, fitted, started)
        # checked again: the folder may have changed during hours of training
        checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
        checkpoint.save(folder, fitted.model, fitted.tokenizer, raw, meta)
        train_state.remove(state_file)
        if replaces:
            console.print(f"replaced {replaces}")
        scores = fitted.best.scores
        name = score_name(cfg.task.num_labels)
        tracking.log_metrics(
            {
                f"best_mean_exit_{name}": float(scores.mean()),
                f"best_final_exit_{name}": float(scores[-1]),
                "train_seconds": time.perf_counter() - started,
            }
        )
        tracking.log_params({"checkpoint": str(folder.resolve())})
        _print_summary([f"L{k}" for k in fitted.model.exit_layers], scores, folder)
        return float(scores.mean())


def _fit(
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
) -> Fitted:
    """Build `method`'s model on `backbone_cfg` (its first `keep_layers` layers, if set) and train it
    stage by stage, the stages `start` stands for skipped, from where `resume` stopped if given; the
    model comes back with the best weights loaded."""
    train_texts = [t for row in data.train.texts for t in row]
    backbone, tokenizer = build_backbone(backbone_cfg, train_texts=train_texts, seed=cfg.seed)
    if keep_layers is not None:
        backbone.truncate(keep_layers)
    exit_layers = parse_exit_layers(method.cfg.exit_layers, backbone.num_layers)
    head = method.head_spec(backbone_cfg)
    model = MultiExitModel(
        backbone,
        exit_layers,
        cfg.task.num_labels,
        head,
        use_pretrained_pooler=backbone_cfg.use_pretrained_pooler,
        lte=method.cfg.lte,
        stop_gradient=method.cfg.stop_gradient,
        gradient_equilibrium=method.cfg.gradient_equilibrium,
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
        if s > skip:
            model.load_state_dict(best.state)  # a later stage starts from the best of the one before
            best = Best()
        best, step = _train_stage(
            cfg, s, stage, method, model, enc_train, enc_cal, pad_id, device, step, best, prefix,
            saver, resuming,
        )
    model.load_state_dict(best.state)
    return Fitted(model, tokenizer, head, best)


def _meta(
    cfg: RootConfig, method_name: str, backbone_cfg: BackboneConfig, fitted: Fitted, started: float
) -> checkpoint.CheckpointMeta:
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
        format=checkpoint.FORMAT,
        train_metrics={
            "best_step": fitted.best.step,
            "calibration_exit_scores": fitted.best.scores.tolist(),
            "seconds": time.perf_counter() - started,
            "init_from": cfg.train.init_from,
        },
    )


def _say_resuming(path: Path, state: train_state.TrainState) -> None:
    p = state.position
    console.print(
        f"resuming from {path}: stage {p.stage + 1}, epoch {p.epoch + 1}, step {p.step} "
        "(train.resume=false starts over)"
    )


def _reused_member(cfg: RootConfig, spec: CascadeMemberSpec) -> tuple[Path, checkpoint.CheckpointMeta]:
    """A trained checkpoint named by `method.*_ckpt`: it must be a single-exit model of this task."""
    folder = Path(str(spec.ckpt)).expanduser().resolve()
    meta = checkpoint.read_meta(folder)
    if meta.task != cfg.task.name or meta.num_labels != cfg.task.num_labels:
        raise UserError(
            f"the {spec.name} checkpoint {folder} was trained on {meta.task}, not {cfg.task.name}"
        )
    if len(meta.exit_layers) != 1:
        raise UserError(
            f"the {spec.name} checkpoint {folder} has {len(meta.exit_layers)} exits: a cascade reuses "
            "single-exit models (method=static)"
        )
    return folder, meta


def _train_cascade(
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
    specs = method.members(cfg, lambda: _depth(cfg, data))
    # reject a bad reused checkpoint before hours of training the others
    reused = {spec.name: _reused_member(cfg, spec) for spec in specs if spec.ckpt}
    name = score_name(cfg.task.num_labels)
    # the cascade is built in a work folder beside its own; an interrupted run leaves it (the models
    # already trained, the state of the one in training) for the next `elastic train` to go on from
    work = train_state.cascade_work(folder)
    train_state.start_cascade_work(work, raw, cfg.train.resume, tracking.active_run_id())
    entries, scores = [], []
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
            if (member / checkpoint.META).is_file():  # trained before the interruption
                meta = checkpoint.read_meta(member)
                score = float(meta.train_metrics["calibration_exit_scores"][-1])
                console.print(f"{spec.name} model: trained before the interruption ({member})")
            else:
                member_started = time.perf_counter()
                saver = Saver(
                    train_state.state_path(member),
                    cfg.train.save_every,
                    train_state.training_settings(raw),
                    member=spec.name,
                )
                resume = train_state.resumable(member, raw, cfg.train.resume)
                if resume is not None:
                    _say_resuming(saver.path, resume)
                fitted = _fit(
                    cfg,
                    method.member_method(),
                    spec.backbone,
                    spec.layers,
                    data,
                    device,
                    f"{spec.name}/",
                    saver=saver,
                    resume=resume,
                )
                meta = _meta(cfg, "static", spec.backbone, fitted, member_started)
                checkpoint.save(member, fitted.model, fitted.tokenizer, raw, meta)
                train_state.remove(saver.path)
                score = float(fitted.best.scores[-1])
                tracking.log_metrics({f"{spec.name}/train_seconds": time.perf_counter() - member_started})
        tracking.log_metrics({f"{spec.name}/best_{name}": score})
        entries.append({"name": spec.name, "folder": where, "weights": checkpoint.weights_fingerprint(member)})
        scores.append(score)
    meta_c = checkpoint.CascadeMeta(
        method=cfg.method.name,
        task=cfg.task.name,
        seed=cfg.seed,
        num_labels=cfg.task.num_labels,
        label_names=list(cfg.task.label_names),
        members=entries,
    )
    checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
    train_state.finish_cascade_work(work)
    checkpoint.save_cascade(folder, work, raw, meta_c)
    if replaces:
        console.print(f"replaced {replaces}")
    tracking.log_metrics({"train_seconds": time.perf_counter() - started})
    tracking.log_params({"checkpoint": str(folder.resolve())})
    _print_summary([s.name for s in specs], np.asarray(scores), folder)
    return float(scores[-1])


def _depth(cfg: RootConfig, data: TaskData) -> int:
    """Layers of cfg.backbone: a tiny backbone's from the schema, else from the loaded backbone (once,
    only for a method whose models depend on the depth)."""
    if cfg.backbone.tiny is not None:
        return int(cfg.backbone.tiny.num_layers)
    backbone, _ = build_backbone(cfg.backbone, train_texts=[t for row in data.train.texts for t in row])
    return int(backbone.num_layers)


def _train_stage(
    cfg: RootConfig,
    s: int,
    stage: TrainStageConfig,
    method: Method,
    model: MultiExitModel,
    enc_train: Encoded,
    enc_cal: Encoded,
    pad_id: int,
    device: torch.device,
    step: int,
    best: Best,
    prefix: str = "",
    saver: Saver | None = None,
    resume: train_state.TrainState | None = None,
) -> tuple[Best, int]:
    objective = method.objective(stage, model.exit_layers).to(device)
    set_trainable(model, stage.trainable)
    lr = cfg.train.lr * stage.lr_scale
    optimizer = _optimizer(model, objective, lr, cfg)
    steps_per_epoch = math.ceil(len(enc_train.labels) / cfg.train.batch_size)
    epochs = cfg.train.epochs if stage.epochs is None else stage.epochs
    total = cfg.train.max_steps if cfg.train.max_steps > 0 else max(1, math.ceil(epochs * steps_per_epoch))
    schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total), total)
    final_only = stage.objective == "final_only"
    label = f"train stage {s + 1} ({stage.objective})" if len(method.stages()) > 1 else "train"
    done, epoch, skip_batches = 0, 0, 0
    if resume is not None:  # pick up where the interrupted run stopped, in this stage
        objective.load_state_dict(resume.objective)
        optimizer.load_state_dict(resume.optimizer)
        schedule.load_state_dict(resume.scheduler)
        done, epoch, skip_batches = resume.position.done, resume.position.epoch, resume.position.batch
        train_state.restore_rng(resume.rng)

    def save_state(epoch: int, batch: int) -> None:
        if saver is not None:
            position = train_state.Position(stage=s, epoch=epoch, batch=batch, done=done, step=step)
            saver.save(position, model, optimizer, schedule, objective, best)

    # ELBERT's exit weights are clipped with the model's parameters, as ELBERT clips them
    trainable = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters())
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(
            f"training stage {s + 1} ({stage.objective}, {stage.trainable}) has nothing to train: "
            "this model has no exit heads of its own before the last (use more exits or method.head=pooler)"
        )
    with progress() as bar:
        task = bar.add_task(label, total=total, info="")
        if done:
            bar.update(task, advance=done, info=f"resumed at step {done}")
        while done < total:
            model.train()
            epoch_batches = batches(
                enc_train, cfg.train.batch_size, pad_id=pad_id, shuffle=True, seed=cfg.seed + epoch
            )
            for i, batch in enumerate(itertools.islice(epoch_batches, skip_batches, None), skip_batches):
                batch = batch.to(device)
                out = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
                loss = method.loss(objective, out, batch.labels, done)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, cfg.train.max_grad_norm)
                optimizer.step()
                schedule.step()
                done += 1
                step += 1
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {loss.item():.4f}")
                if done % cfg.train.log_every == 0 or done == total:
                    tracking.log_metrics(
                        {f"{prefix}train/loss": loss.item(), f"{prefix}train/lr": schedule.get_last_lr()[0]},
                        step,
                    )
                # (the last batch of an epoch is saved at its end, after the epoch's evaluation)
                at_end = i + 1 == steps_per_epoch or done == total
                if saver is not None and saver.every and done % saver.every == 0 and not at_end:
                    save_state(epoch, i + 1)
                Saver.after_step()
                if done >= total:
                    break
            skip_batches = 0
            epoch += 1
            scores = exit_scores(
                all_exit_outputs(model, enc_cal, cfg.device.eval_batch_size, pad_id, device, "calibration"),
                enc_cal.labels,
            )
            name = score_name(model.num_labels)
            metrics = {
                f"{prefix}calibration/exit_{name}_L{layer}": float(a)
                for layer, a in zip(model.exit_layers, scores)
            }
            metrics[f"{prefix}calibration/mean_exit_{name}"] = float(scores.mean())
            if isinstance(objective, DynamicWeights):
                weights = objective.weights().detach().cpu().numpy()
                metrics.update(
                    {f"train/exit_weight_L{layer}": float(w) for layer, w in zip(model.exit_layers, weights)}
                )
            tracking.log_metrics(metrics, step)
            score = float(scores[-1] if final_only else scores.mean())
            bar.update(task, info=f"epoch {epoch} {'final' if final_only else 'mean'} exit score {score:.4f}")
            if score > best.score:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = Best(score=score, scores=np.asarray(scores), state=state, step=step, stage=s)
            save_state(epoch, 0)
    model.requires_grad_(True)
    return best, step


def _print_summary(exit_names: list[str], scores: np.ndarray, folder: Path) -> None:
    table = Table(title="calibration split, best checkpoint")
    table.add_column("exit", justify="right")
    table.add_column("score", justify="right")
    for exit_name, a in zip(exit_names, scores):
        table.add_row(exit_name, f"{a:.4f}")
    console.print(table)
    console.print(f"checkpoint: {folder}")
