"""The training loop over one stage of a method: which parameters train, the optimizer, the steps, the
evaluation of every exit on the calibration split after each epoch, the best weights so far, and the
resumable training state written along the way.

After every epoch every exit is scored on the calibration split; the weights kept are the best by mean
exit accuracy (by the final exit's in a stage that trains only the final exit).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from elastic_cli import cost, distributed, tracking
from elastic_cli.config import TrainConfig, TrainStageConfig
from elastic_cli.data import Encoded, batches
from elastic_cli.errors import UserError
from elastic_cli.methods import Method
from elastic_cli.methods.objectives import Objective
from elastic_cli.metrics import score_name
from elastic_cli.models.multi_exit import MultiExitModel
from elastic_cli.stages import train_state
from elastic_cli.stages.common import (
    all_exit_outputs,
    console,
    cost_dims,
    exit_scores,
    progress,
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


def loss_label(objective: Objective, step: int, has_lte: bool) -> str:
    """`loss (sum over 6 exits)`: what the loss on the progress line adds up (the multi-exit loss is no
    single exit's), `loss` alone for one exit's."""
    what = objective.describe(step)
    if has_lte:  # Method.loss adds the learning-to-exit module's loss
        what = f"{what} + LTE" if what else "+ LTE"
    return f"loss ({what})" if what else "loss"


def epoch_scores_line(
    exit_layers: list[int], scores: np.ndarray, name: str, final_only: bool, speedup: float | None
) -> str:
    """`calibration accuracy per exit L1 0.7100 ... L6 0.8500 (mean 0.8000)`: one epoch's scores."""
    if final_only or len(scores) == 1:
        # (a final-only stage trains no other exit: their scores would be noise)
        line = f"calibration {name} L{exit_layers[-1]} {float(scores[-1]):.4f}"
    else:
        per_exit = " ".join(f"L{layer} {float(a):.4f}" for layer, a in zip(exit_layers, scores))
        line = f"calibration {name} per exit {per_exit} (mean {float(scores.mean()):.4f})"
    return line + (f", FLOPs speed-up {speedup:.2f}x" if speedup is not None else "")


def build_optimizer(
    model: MultiExitModel, objective: Objective, lr: float, train: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (as BERT fine-tuning does); the exit
    heads may have their own lr (`train.head_lr`); learnable objective weights get their own group, and
    so do the model parameters an objective trains apart (`Objective.parameter_groups`)."""
    apart = objective.parameter_groups(model)
    set_apart = {id(p) for group in apart for p in group["params"]}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in set_apart:
            groups.setdefault((not name.startswith("backbone."), p.ndim >= 2), []).append(p)
    head_lr = lr * (train.head_lr / train.lr) if train.head_lr else lr
    params: list[dict[str, Any]] = [
        {
            "params": ps,
            "lr": head_lr if is_head else lr,
            "weight_decay": train.weight_decay if decays else 0.0,
        }
        for (is_head, decays), ps in groups.items()
    ]
    own = [p for p in objective.parameters() if p.requires_grad]
    if own:
        params.append({"params": own, "lr": objective.lr or lr, "weight_decay": 0.0})
    params += [{**group, "weight_decay": 0.0, "constant_lr": True} for group in apart]
    return torch.optim.AdamW(params)


def lr_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> LambdaLR:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total` (BERT fine-tuning's), for
    every group but those marked `constant_lr`."""

    def linear(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    def constant(step: int) -> float:
        return 1.0

    return LambdaLR(optimizer, [constant if g.get("constant_lr") else linear for g in optimizer.param_groups])


@dataclass
class Best:
    """The best-ranked weights so far (and, with a stage's keep_best > 1, the runners-up, best first)."""

    score: float = -1.0
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    stage: int = 0
    rank: list[float] = field(default_factory=list)
    runners_up: list[dict[str, Any]] = field(default_factory=list)  # {"rank", "score", "state"}

    def saved(self) -> dict[str, Any]:
        return {**asdict(self), "scores": [float(x) for x in self.scores]}

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> Best:
        best = cls(**{**saved, "scores": np.asarray(saved["scores"], dtype=np.float64)})
        if best.state and not best.rank:  # saved before ranks were: the score ranked
            best.rank = [best.score]
        return best

    def states(self) -> list[dict[str, torch.Tensor]]:
        """The kept weights, best first."""
        return ([self.state] if self.state else []) + [r["state"] for r in self.runners_up]

    def offer(
        self,
        rank: list[float],
        score: float,
        scores: np.ndarray,
        model: MultiExitModel,
        step: int,
        stage: int,
        keep: int,
    ) -> Best:
        """This epoch's weights, if they rank among the `keep` best so far."""
        entries: list[dict[str, Any]] = []
        if self.state:
            entries.append({"rank": self.rank, "score": self.score, "state": self.state})
        entries += self.runners_up
        if len(entries) >= keep and all(rank <= e["rank"] for e in entries):
            return self
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        entries.append({"rank": rank, "score": score, "state": state, "new": True})
        entries = sorted(entries, key=lambda e: e["rank"], reverse=True)[:keep]  # stable: earlier wins ties
        top = entries[0]
        runners_up = [{k: e[k] for k in ("rank", "score", "state")} for e in entries[1:]]
        if top.get("new"):
            return Best(score, np.asarray(scores), state, step, stage, rank, runners_up)
        return Best(self.score, self.scores, self.state, self.step, self.stage, self.rank, runners_up)


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
        distributed.maybe_fault(_steps_in_process)  # a distributed run's: one rank fails with an error


def train_stage(
    train: TrainConfig,
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
    *,
    seed: int,
    eval_batch_size: int,
    prefix: str = "",
    saver: Saver | None = None,
    resume: train_state.TrainState | None = None,
) -> tuple[Best, int]:
    """Train stage `s` of `method` (its `stage` config) from optimizer step `step` and the best weights
    `best` so far, from where `resume` stopped if given (a state of this stage); returns the best and
    the step reached. `seed` orders the batches; `eval_batch_size` is the calibration evaluation's."""
    objective = method.objective(stage, model.exit_layers).to(device)
    set_trainable(model, stage.trainable)
    lr = train.lr * stage.lr_scale
    optimizer = build_optimizer(model, objective, lr, train)
    steps_per_epoch = math.ceil(len(enc_train.labels) / train.batch_size)
    epochs = train.epochs if stage.epochs is None else stage.epochs
    total = train.max_steps if train.max_steps > 0 else max(1, math.ceil(epochs * steps_per_epoch))
    schedule = lr_schedule(optimizer, int(train.warmup_ratio * total), total)
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

    # ELBERT's exit weights are clipped with the model's parameters, as ELBERT clips them; parameters an
    # objective trains apart (AdapLeR's eta and theta) are not clipped
    apart_params = [p for g in optimizer.param_groups if g.get("constant_lr") for p in g["params"]]
    apart = {id(p) for p in apart_params}
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in apart]
    trainable += list(objective.parameters())
    epochs_in_stage = math.ceil(total / steps_per_epoch)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(
            f"training stage {s + 1} ({stage.objective}, {stage.trainable}) has nothing to train: "
            "this model has no exit heads of its own before the last (use more exits or method.head=pooler)"
        )
    # the model as the steps run it: through DistributedDataParallel when several processes train
    # (distributed.py), which averages the model's gradients; the objective's own parameters and those it
    # sets itself after the backward pass are averaged apart
    stepper = distributed.Averager(model, device)
    averaged_apart = list(objective.parameters()) + apart_params
    distributed.spread_rng(seed, step)
    # the optimizer steps' own time (data to optimizer step; not the epochs' calibration scoring, not the
    # stage's first step, which pays one-off costs): train/examples_per_second
    step_seconds, step_examples, first_step = 0.0, 0, True
    with progress() as bar:
        task = bar.add_task(label, total=total, info="")
        if done:
            bar.update(task, advance=done, info=f"resumed at step {done}")
        while done < total:
            model.train()
            objective.start_epoch(model, epoch, epochs_in_stage)
            epoch_batches = batches(
                enc_train,
                train.batch_size,
                pad_id=pad_id,
                shuffle=True,
                seed=seed + epoch,
                shard=distributed.shard(),  # this process's part of each batch
            )
            started = time.perf_counter()
            for i, batch in enumerate(itertools.islice(epoch_batches, skip_batches, None), skip_batches):
                batch = batch.to(device)
                out = stepper(batch.input_ids, batch.attention_mask, batch.token_type_ids)
                loss = method.loss(objective, out, batch.labels, done, rows=batch.index)
                optimizer.zero_grad(set_to_none=True)
                stepper.set_share(batch.share)
                objective.backward(loss)
                stepper.average(averaged_apart)
                torch.nn.utils.clip_grad_norm_(trainable, train.max_grad_norm)
                optimizer.step()
                objective.after_step(model)
                schedule.step()
                # the global batch's loss (waits for the step's work on an accelerator)
                loss_value = stepper.global_mean(loss)
                now = time.perf_counter()
                if not first_step:
                    step_seconds += now - started
                    # the global batch's rows (a process's part is a share of it)
                    step_examples += min(train.batch_size, len(enc_train.labels) - i * train.batch_size)
                first_step = False
                done += 1
                step += 1
                shown = f"{loss_label(objective, done - 1, model.lte is not None)} {loss_value:.4f}"
                bar.update(task, advance=1, info=f"epoch {epoch + 1} {shown}")
                if done % train.log_every == 0 or done == total:
                    tracking.log_metrics(
                        {
                            f"{prefix}train/loss": loss_value,
                            f"{prefix}train/lr": float(schedule.get_last_lr()[0]),
                        },
                        step,
                    )
                # (the last batch of an epoch is saved at its end, after the epoch's evaluation)
                at_end = i + 1 == steps_per_epoch or done == total
                if saver is not None and saver.every and done % saver.every == 0 and not at_end:
                    save_state(epoch, i + 1)
                Saver.after_step()
                if done >= total:
                    break
                started = time.perf_counter()
            skip_batches = 0
            epoch += 1
            # every process scores alike (each computes a part): each keeps the same best weights
            signals = all_exit_outputs(
                model, enc_cal, eval_batch_size, pad_id, device, "calibration", sharded=True
            )
            scores = exit_scores(signals, enc_cal.labels)
            name = score_name(model.num_labels)
            metrics = {
                f"{prefix}calibration/exit_{name}_L{layer}": float(a)
                for layer, a in zip(model.exit_layers, scores)
            }
            metrics[f"{prefix}calibration/mean_exit_{name}"] = float(scores.mean())
            metrics.update(objective.logged(model.exit_layers))
            if step_seconds > 0:
                metrics[f"{prefix}train/examples_per_second"] = step_examples / step_seconds
            speedup = None
            if signals.layer_tokens is not None:  # a length-reducing model: what its dropping saves
                tokens = signals.layer_tokens.numpy()
                dims = cost_dims(model)
                adaptive = cost.reduced_flops(enc_cal.lengths, tokens, dims)
                speedup = cost.ratio_of_totals(cost.static_flops(enc_cal.lengths, dims), adaptive)
                metrics[f"{prefix}calibration/flops_speedup"] = speedup
                metrics[f"{prefix}calibration/mean_tokens_last_layer"] = float(tokens[:, -1].mean())
            tracking.log_metrics(metrics, step)
            score = float(scores[-1] if final_only else scores.mean())
            shown = f"epoch {epoch} {'final' if final_only else 'mean'} exit score {score:.4f}"
            bar.update(task, info=shown + (f", FLOPs speed-up {speedup:.2f}x" if speedup is not None else ""))
            # a line per epoch: the bar's info is overwritten, and off a terminal it is never printed
            stage_name = f"stage {s + 1} " if len(method.stages()) > 1 else ""
            console.print(
                f"{stage_name}epoch {epoch}: "
                + epoch_scores_line(model.exit_layers, scores, name, final_only, speedup)
            )
            rank = [float(r) for r in objective.rank(score, speedup)]
            best = best.offer(rank, score, scores, model, step, s, stage.keep_best)
            save_state(epoch, 0)
    stepper.close()
    model.requires_grad_(True)
    return best, step
