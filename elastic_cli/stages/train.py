"""`elastic train`: fine-tune the method's model, stage by stage, and write the best checkpoint.

This module drives the stage: one `elastic train` per checkpoint folder at a time, resuming an
interrupted run, init_from, the checkpoint's writing and the summary. The model is built and trained in
stages/train_model.py, each of its training stages in stages/train_loop.py (the best weights kept
after each epoch's calibration scores), and a cascade's models in stages/train_cascade.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from elastic_cli import checkpoint, distributed, exits, tracking
from elastic_cli.config import RootConfig
from elastic_cli.data import load_task_data
from elastic_cli.errors import UserError
from elastic_cli.methods import CascadeMethod, Method, build_method
from elastic_cli.metrics import score_name
from elastic_cli.models.precision import precision_name
from elastic_cli.stages import init_from, train_state
from elastic_cli.stages.common import console, seed_everything, setup_device
from elastic_cli.stages.train_cascade import train_cascade
from elastic_cli.stages.train_loop import FAULT_ENV as FAULT_ENV  # the resume tests' fault hook
from elastic_cli.stages.train_loop import Saver
from elastic_cli.stages.train_model import checkpoint_meta, fit, print_summary, say_resuming


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


def run(cfg: RootConfig, raw: DictConfig) -> float:
    started = time.perf_counter()
    # several processes (torchrun, srun) train one model together; rank 0 alone logs and writes
    with distributed.session(cfg.device, cfg.train.batch_size):
        seed_everything(cfg.seed)
        device = setup_device(cfg.device)
        method = build_method(cfg.method)
        rule = exits.build_rule(cfg.method.exit)
        single_exit = cfg.method.exit_layers == "last" and not isinstance(method, CascadeMethod)
        exits.check_applicable(rule, cfg.task.num_labels, cfg.method.lte, 1 if single_exit else None)
        if precision_name(cfg.device) != "float32":
            console.print(
                f"[yellow]warning:[/] device.dtype/device.quantize ({precision_name(cfg.device)}) apply to "
                "calibrate and evaluate; training runs float32",
                highlight=False,
            )
        folder = checkpoint.checkpoint_dir(cfg)
        with ExitStack() as held:
            replaces = distributed.on_main(lambda: _claim(cfg, folder, held))
            return _run_locked(cfg, raw, method, folder, device, started, replaces)


def _claim(cfg: RootConfig, folder: Path, held: ExitStack) -> str | None:
    """Before any work, by the process that writes: never replace anything but an elastic checkpoint of this
    method/backbone/task, and one `elastic train` per folder (its lock, held in `held`)."""
    replaces = checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
    held.enter_context(_sole_writer(folder))
    return replaces


def _open_run(held: ExitStack, cfg: RootConfig, raw: DictConfig, folder: Path, run_id: str | None) -> None:
    held.enter_context(tracking.stage_run(cfg, raw, checkpoint=folder, resume_run_id=run_id))


def resume_point(resume: train_state.TrainState | None, run_id: str | None) -> Any:
    """What every process of a distributed run must agree on before training: where it resumes."""
    return (run_id, None if resume is None else tuple(vars(resume.position).values()))


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
            say_resuming(state_file, resume)
        elif state_file.is_file():
            console.print(f"train.resume=false: starting over; the training state {state_file} is replaced")
    # every process reads the state (the optimizer's too) and must find the same; a collective, so that
    # rank 0 writes nothing before all have read
    distributed.same_everywhere(resume_point(resume, run_id), "the training state to resume from")
    saver = Saver(state_file, cfg.train.save_every, train_state.training_settings(raw))
    with ExitStack() as held:
        # the MLflow run is rank 0's; a peer's failure ends it FAILED (distributed.failures)
        distributed.on_main(lambda: _open_run(held, cfg, raw, folder, run_id))
        held.enter_context(distributed.failures())
        if cfg.train.init_from and isinstance(method, CascadeMethod):
            raise UserError(
                "train.init_from is for a two-stage method; a cascade reuses trained models with "
                "method.swift_ckpt= / method.super_ckpt="
            )
        start = init_from.check_source(cfg, method.stages()) if cfg.train.init_from else None
        data = load_task_data(cfg.task, cfg.seed)
        if isinstance(method, CascadeMethod):
            return train_cascade(cfg, raw, method, data, folder, device, started, replaces)
        fitted = fit(
            cfg,
            method,
            cfg.backbone,
            None,
            data,
            device,
            start=start,
            saver=saver if distributed.is_main() else None,
            resume=resume,
            folder=folder,
        )
        if not distributed.is_main():  # rank 0 writes the checkpoint and logs the summary
            return float(fitted.best.scores.mean())
        meta = checkpoint_meta(cfg, cfg.method.name, cfg.backbone, fitted, started)
        # checked again: the folder may have changed during hours of training
        checkpoint.check_replaceable(folder, cfg.method.name, cfg.backbone.name, cfg.task.name)
        made = method.checkpoint_files(folder)
        checkpoint.save(folder, fitted.model, fitted.tokenizer, raw, meta, extra_files=made)
        train_state.remove(state_file)
        for path in made.values():  # now in the checkpoint
            path.unlink(missing_ok=True)
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
        print_summary([f"L{k}" for k in fitted.model.exit_layers], scores, folder)
        return float(scores.mean())
