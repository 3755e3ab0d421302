"""`elastic train`: fine-tune the method's model and write the best checkpoint (by mean exit accuracy
on the calibration split)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from omegaconf import DictConfig
from rich.table import Table
from transformers import get_linear_schedule_with_warmup

from elastic_cli import checkpoint, tracking
from elastic_cli.config import RootConfig, parse_exit_layers
from elastic_cli.data import Encoded, batches, encode, load_task_data
from elastic_cli.methods import build_method
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.stages.common import (
    all_exit_logits,
    console,
    exit_accuracies,
    progress,
    seed_everything,
    setup_device,
)


def _optimizer(model: MultiExitModel, cfg: RootConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (as BERT fine-tuning does); the exit
    heads may have their own lr (`train.head_lr`)."""
    t = cfg.train
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("heads."), p.ndim >= 2), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": (t.head_lr or t.lr) if is_head else t.lr,
                "weight_decay": t.weight_decay if decays else 0.0,
            }
            for (is_head, decays), params in groups.items()
        ]
    )


def _total_steps(cfg: RootConfig, steps_per_epoch: int) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


def run(cfg: RootConfig, raw: DictConfig) -> float:
    started = time.perf_counter()
    seed_everything(cfg.seed)
    device = setup_device(cfg.device)
    method = build_method(cfg.method)
    folder = checkpoint.checkpoint_dir(cfg)

    with tracking.stage_run(cfg, raw):
        data = load_task_data(cfg.task, cfg.seed)
        train_texts = [t for row in data.train.texts for t in row]
        backbone, tokenizer = build_backbone(cfg.backbone, train_texts=train_texts, seed=cfg.seed)
        exit_layers = parse_exit_layers(cfg.method.exit_layers, backbone.num_layers)
        model = MultiExitModel(
            backbone,
            exit_layers,
            cfg.task.num_labels,
            cfg.backbone.pooling,
            cfg.backbone.use_pretrained_pooler,
        ).to(device)
        pad_id = int(tokenizer.pad_token_id)
        enc_train = encode(data.train, tokenizer, cfg.task.max_seq_length)
        enc_cal = encode(data.calibration, tokenizer, cfg.task.max_seq_length)
        tracking.log_params(
            {
                "exit_layers": exit_layers,
                "n_train": len(data.train),
                "n_calibration": len(data.calibration),
            }
        )
        console.print(
            f"train {cfg.method.name} on {cfg.backbone.name} / {cfg.task.name}: "
            f"{len(data.train)} training, {len(data.calibration)} calibration examples, exits at {exit_layers}"
        )

        steps_per_epoch = math.ceil(len(enc_train.labels) / cfg.train.batch_size)
        total = _total_steps(cfg, steps_per_epoch)
        optimizer = _optimizer(model, cfg)
        schedule = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * total), total)
        best = _fit(cfg, model, method, enc_train, enc_cal, optimizer, schedule, total, pad_id, device)

        model.load_state_dict(best["state"])
        meta = checkpoint.CheckpointMeta(
            method=cfg.method.name,
            backbone=cfg.backbone.name,
            family=cfg.backbone.family,
            task=cfg.task.name,
            seed=cfg.seed,
            exit_layers=exit_layers,
            num_labels=cfg.task.num_labels,
            label_names=list(cfg.task.label_names),
            pooling=cfg.backbone.pooling,
            max_seq_length=cfg.task.max_seq_length,
            train_metrics={
                "best_step": best["step"],
                "calibration_exit_accuracy": best["accs"].tolist(),
                "seconds": time.perf_counter() - started,
            },
        )
        checkpoint.save(folder, model, tokenizer, raw, meta)
        tracking.log_metrics(
            {
                "best_mean_exit_accuracy": float(best["accs"].mean()),
                "best_final_exit_accuracy": float(best["accs"][-1]),
                "train_seconds": time.perf_counter() - started,
            }
        )
        tracking.log_params({"checkpoint": str(folder.resolve())})
        _print_summary(exit_layers, best["accs"], folder)
        return float(best["accs"].mean())


def _fit(
    cfg, model, method, enc_train: Encoded, enc_cal: Encoded, optimizer, schedule, total, pad_id, device
):
    best: dict = {"mean": -1.0}
    step, epoch = 0, 0
    with progress() as bar:
        task = bar.add_task("train", total=total, info="")
        while step < total:
            model.train()
            for batch in batches(
                enc_train, cfg.train.batch_size, pad_id=pad_id, shuffle=True, seed=cfg.seed + epoch
            ):
                batch = batch.to(device)
                logits = model(batch.input_ids, batch.attention_mask, batch.token_type_ids)
                loss = method.loss(logits, batch.labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {loss.item():.4f}")
                if step % cfg.train.log_every == 0 or step == total:
                    tracking.log_metrics(
                        {"train/loss": loss.item(), "train/lr": schedule.get_last_lr()[0]}, step
                    )
                if step >= total:
                    break
            epoch += 1
            accs = exit_accuracies(
                all_exit_logits(model, enc_cal, cfg.device.eval_batch_size, pad_id, device, "calibration"),
                enc_cal.labels,
            )
            metrics = {
                f"calibration/exit_accuracy_L{layer}": float(a) for layer, a in zip(model.exit_layers, accs)
            }
            metrics["calibration/mean_exit_accuracy"] = float(accs.mean())
            tracking.log_metrics(metrics, step)
            bar.update(task, info=f"epoch {epoch} mean exit acc {accs.mean():.4f}")
            if accs.mean() > best["mean"]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best = {"mean": float(accs.mean()), "accs": np.asarray(accs), "state": state, "step": step}
    return best


def _print_summary(exit_layers: list[int], accs: np.ndarray, folder) -> None:
    table = Table(title="calibration-split accuracy of the best checkpoint")
    table.add_column("exit layer", justify="right")
    table.add_column("accuracy", justify="right")
    for layer, a in zip(exit_layers, accs):
        table.add_row(str(layer), f"{a:.4f}")
    console.print(table)
    console.print(f"checkpoint: {folder}")
