"""AdapLeR (Modarressi et al., ACL 2022; METHODS.md section 5): token-length reduction.

Stage 1 fine-tunes the backbone and its classifier (or `train.init_from` stands for it). Stage 2 computes
the saliency targets on the training split (elastic_cli/saliency.py), averaged over stage 1's 3 best
epochs. Stage 3 trains a contribution predictor before every layer (models/length_reducing.py) with two
losses and two optimisers, as AdapLeR's train_phase_1 does:
- main, on every weight but eta and theta (AdamW, train.lr):
  CE + gamma * sum_l (L + 1 - l) KL(S_l || s_l), S_l the saliency renormalised over the tokens alive
  before layer l, [CLS] re-weighted by theta, and s_l the predicted importance;
- speed, on eta and theta only (Adam, method.speed_lr, constant): CE + phi * mean over the batch of the
  summed soft lengths entering every layer.
The soft mask's sharpness lambda rises geometrically from lambda_start to lambda_end over the stage's
epochs (AdapLeR: 10 x 10^epoch over 5 epochs). eta is clipped to [0.01, 1] after every step.
Model selection: among the epochs whose calibration score is within `selection_tolerance` of stage 1's,
the one with the highest FLOPs speed-up (AdapLeR's ModelCheckpoint_wlr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from elastic_cli import tracking
from elastic_cli.config import FRACTION, POSITIVE, Bound, MethodConfig, TrainStageConfig, at_least
from elastic_cli.errors import UserError
from elastic_cli.methods.base import METHODS, Method, StageContext
from elastic_cli.methods.objectives import OBJECTIVES, Objective, per_exit_losses
from elastic_cli.progress import console
from elastic_cli.signals import ExitSignals

if TYPE_CHECKING:  # (the model modules load transformers, which `elastic STAGE --help` does not need)
    from elastic_cli.models.length_reducing import LengthReducingModel, SoftTrace
    from elastic_cli.models.multi_exit import MultiExitModel

STAGE_3 = "adapler"  # the objective of the predictors' stage


@dataclass
class AdaplerConfig(MethodConfig):
    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("gamma", POSITIVE, "AdapLeR's weight of the saliency KL terms"),
        ("phi", POSITIVE, "AdapLeR's weight of the length loss"),
        ("predictor_width", at_least(1), "the contribution predictors' hidden width"),
        ("speed_lr", POSITIVE, "the lr of eta and theta"),
        ("eta_init", FRACTION, "eta's initial value"),
        ("lambda_start", POSITIVE, "the soft mask's first sharpness"),
        ("lambda_end", POSITIVE, "the soft mask's last sharpness"),
        ("selection_tolerance", FRACTION, "the score an epoch may lose to stage 1's and be selected"),
    )

    gamma: float = 0.005  # AdapLeR's README / run.sh for SST-2 (its argparse default, 1.0, is not used)
    phi: float = 0.0005  # likewise (argparse default 10.0)
    predictor_width: int = 32
    speed_lr: float = 5e-4
    eta_init: float = 0.25
    lambda_start: float = 10.0
    lambda_end: float = 1e5
    selection_tolerance: float = 0.01


class AdaplerObjective(Objective):
    """AdapLeR's two losses on the soft forward's trace (models.length_reducing.SoftTrace): `forward`
    returns the main loss and keeps the speed loss, whose gradient `backward` routes to eta and theta."""

    targets: torch.Tensor
    reference: torch.Tensor
    reads_rows = True

    def __init__(
        self,
        exit_layers: list[int],
        targets: torch.Tensor,
        gamma: float,
        phi: float,
        speed_lr: float,
        lambda_start: float,
        lambda_end: float,
        reference: float,
        tolerance: float,
    ) -> None:
        super().__init__(exit_layers)
        # the saliency targets [N_train, T] are read by row; kept out of the training state (their file
        # holds them)
        self.register_buffer("targets", targets, persistent=False)
        # stage 1's calibration score, which selection compares with: in the state, so a resume keeps it
        self.register_buffer("reference", torch.tensor(float(reference), dtype=torch.float64))
        self.gamma, self.phi, self.speed_lr = gamma, phi, speed_lr
        self.lambda_start, self.lambda_end, self.tolerance = lambda_start, lambda_end, tolerance
        self.speed_loss: torch.Tensor | None = None
        # the model's eta and theta (a plain list: the objective does not own them)
        self.speed_params: list[nn.Parameter] = []

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        self.speed_params = cast("LengthReducingModel", model).speed_parameters()
        return [{"params": self.speed_params, "lr": self.speed_lr}]

    def sharpness(self, epoch: int, epochs: int) -> float:
        """lambda in epoch `epoch`: lambda_start ... lambda_end, geometric over the stage's epochs."""
        if epochs <= 1:
            return self.lambda_start
        return self.lambda_start * (self.lambda_end / self.lambda_start) ** (epoch / (epochs - 1))

    def start_epoch(self, model: nn.Module, epoch: int, epochs: int) -> None:
        cast("LengthReducingModel", model).sharpness = self.sharpness(epoch, epochs)

    def forward(  # type: ignore[override]
        self, out: ExitSignals, labels: torch.Tensor, step: int, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        from elastic_cli.models.length_reducing import SoftTrace

        if not isinstance(out, SoftTrace) or rows is None:
            raise TypeError("the adapler objective trains a length-reducing model's soft forward")
        assert out.log_importance is not None and out.alive is not None and out.soft_lengths is not None
        ce = per_exit_losses(out.logits, labels)[0]
        kl = self.kl_per_layer(out, rows)
        depth = kl.shape[0]
        weights = torch.arange(depth, 0, -1, dtype=kl.dtype, device=kl.device)  # L, L-1, ..., 1
        self.speed_loss = ce + self.phi * out.soft_lengths.sum(dim=1).mean()
        return ce + self.gamma * (weights * kl).sum()

    def describe(self, step: int) -> str:
        return "cross-entropy + saliency KL"

    def kl_per_layer(self, out: SoftTrace, rows: torch.Tensor) -> torch.Tensor:
        """KL(S_l || s_l) per layer [L], averaged over the batch."""
        assert out.log_importance is not None and out.alive is not None and out.theta is not None
        log_s = out.log_importance.clamp_min(-1e4)  # -inf (gone, padding) carries no target mass
        width = log_s.shape[-1]
        s = self.targets[rows.to(self.targets.device)][:, :width].to(log_s.device, log_s.dtype)
        with torch.no_grad():
            target = s.unsqueeze(0) * out.alive  # [L, B, T]
            target[:, :, 0] = target[:, :, 0] * out.theta
            target = target / target.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        terms = torch.where(
            target > 0, target * (target.clamp_min(1e-30).log() - log_s), torch.zeros_like(log_s)
        )
        return terms.sum(dim=-1).mean(dim=-1)

    def backward(self, loss: torch.Tensor) -> None:
        if not self.speed_params or self.speed_loss is None:
            raise RuntimeError("the adapler objective's parameter_groups and forward come before backward")
        params = self.speed_params
        grads = torch.autograd.grad(self.speed_loss, params, retain_graph=True, allow_unused=True)
        loss.backward()
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g
        self.speed_loss = None

    def after_step(self, model: nn.Module) -> None:
        cast("LengthReducingModel", model).clip_speed_parameters()

    def rank(self, score: float, flops_speedup: float | None) -> tuple[float, ...]:
        speedup = 1.0 if flops_speedup is None else flops_speedup
        if score >= float(self.reference) - self.tolerance - 1e-12:
            return (1.0, speedup, score)
        return (0.0, score, speedup)

    def logged(self, exit_layers: list[int]) -> dict[str, float]:
        """eta per layer and theta."""
        if not self.speed_params:
            return {}
        eta, theta = (p.detach().cpu() for p in self.speed_params)
        return {
            **{f"train/eta_L{i + 1}": float(e) for i, e in enumerate(eta.tolist())},
            "train/theta": float(theta),
        }


OBJECTIVES.register(STAGE_3)(AdaplerObjective)


@METHODS.register("adapler", schema=AdaplerConfig)
class Adapler(Method[AdaplerConfig]):
    model_shape = "length_reducing"

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        self.targets: torch.Tensor | None = None
        self.reference = float("nan")

    def backbone_problem(self, family: type) -> str | None:
        from elastic_cli.models.length_reducing import supported_families

        if getattr(family, "supports_key_bias", False):
            return None
        return (
            "AdapLeR's soft token removal needs attention that adds a float mask, which this family's "
            f"does not: use a backbone of the {', '.join(supported_families())} families"
        )

    def shape_settings(self) -> dict[str, Any]:
        return {"predictor_width": self.cfg.predictor_width, "eta_init": self.cfg.eta_init}

    def objective_options(self, objective: str) -> dict[str, Any]:
        if objective != STAGE_3:
            return {}
        if self.targets is None:
            raise RuntimeError("prepare_stage computes the saliency targets before the adapler stage")
        c = self.cfg
        return {
            "targets": self.targets,
            "gamma": c.gamma,
            "phi": c.phi,
            "speed_lr": c.speed_lr,
            "lambda_start": c.lambda_start,
            "lambda_end": c.lambda_end,
            "reference": self.reference,
            "tolerance": c.selection_tolerance,
        }

    def prepare_stage(
        self, s: int, stage: TrainStageConfig, model: MultiExitModel, context: StageContext
    ) -> None:
        reducing = cast("LengthReducingModel", model)
        # stage 1 is the static model: no token leaves, in training or in its epochs' evaluation
        reducing.reducing = stage.objective == STAGE_3
        if not reducing.reducing:
            return
        self.reference = context.previous_score if context.previous_score is not None else float("nan")
        self.targets = self._targets(model, context)

    def checkpoint_files(self, folder: Path) -> dict[str, Path]:
        from elastic_cli import saliency

        work = _work_file(folder)
        return {saliency.FILE: work} if work.is_file() else {}

    def _targets(self, model: MultiExitModel, context: StageContext) -> torch.Tensor:
        """Stage 2: the saliency targets, from the file of an earlier run when it holds the same weights'
        and data's, else computed (and stored beside the checkpoint)."""
        from elastic_cli import saliency

        work = _work_file(context.work) if context.work is not None else None
        if context.resuming:
            found = saliency.load(work, None) if work is not None else None
            if found is None:
                raise UserError(
                    f"the saliency targets of the interrupted run ({work}) are gone: start over with train.resume=false"
                )
            return found
        if context.previous:
            sources = [saliency.state_fingerprint(state) for state in context.previous]
        elif context.init_from_weights:
            sources = [context.init_from_weights]
        else:
            sources = [saliency.state_fingerprint(model.state_dict())]
        key = saliency.data_key(context.train, sources)
        places = [work, context.work / saliency.FILE] if context.work is not None and work is not None else []
        for place in places:
            found = saliency.load(place, key)
            if found is not None:
                console.print(f"saliency targets from {place} (same weights and training data)")
                if place != work and work is not None:
                    saliency.save(work, found, key)
                tracking.log_params({"saliency_sources": len(sources)})
                return found
        n = len(context.train.labels)
        console.print(
            f"saliency targets (gradient x input) on {n} training examples, averaged over {len(sources)} "
            f"checkpoint{'s' if len(sources) > 1 else ''}"
        )
        targets = saliency.averaged_saliency(
            model, context.previous, context.train, context.pad_id, context.batch_size, context.device
        )
        if work is not None:
            saliency.save(work, targets, key)
        tracking.log_params({"saliency_sources": len(sources)})
        if not math.isfinite(float(targets.sum())):
            raise UserError(
                "the saliency targets are not finite: the stage-1 model diverged (lower train.lr)"
            )
        return targets


def _work_file(folder: Path) -> Path:
    """The targets beside a checkpoint while it trains (moved into the checkpoint when it is saved)."""
    return folder.with_name(f"{folder.name}.saliency.safetensors")
