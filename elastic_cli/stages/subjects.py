"""What `calibrate` and `evaluate` work on, whatever its shape: the exits of one multi-exit model, the
models of a cascade, or a length-reducing model. Each gives the outputs [N, E, C] of a split (cached),
what each exit costs, what the adaptive model does at a threshold (`decide`: the exit rule on the cached
outputs, or a real pass of a length-reducing model), its threshold curve, and the static and adaptive
paths for timing; the stages need nothing else, so one code path scores them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from elastic_cli import calibration, checkpoint, cost, exits, run_record
from elastic_cli.config import DeviceConfig, RootConfig
from elastic_cli.cost import ExitCosts
from elastic_cli.data import Batch, Encoded, batches, encode
from elastic_cli.data.splits import Split
from elastic_cli.errors import UserError
from elastic_cli.models.cascade import Cascade, Member
from elastic_cli.models.length_reducing import LengthReducingModel
from elastic_cli.models.multi_exit import AdaptiveOutput, MultiExitModel
from elastic_cli.models.precision import for_inference, precision_name
from elastic_cli.signals import ExitSignals
from elastic_cli.stages.common import CachedOutputs, cached_outputs, cost_dims, exit_scores


@dataclass
class SubjectInfo:
    """Read from the checkpoint folder without loading weights: enough to reject bad input early."""

    task: str
    num_labels: int
    has_lte: bool
    num_exits: int
    method: str
    backbone: str  # a cascade's: its last (super) model's
    weights: str = ""  # the weights' content hash (a cascade's: its models', joined)
    train_run_id: str = ""  # the MLflow run that trained it, when the checkpoint records it


def describe(folder: Path) -> SubjectInfo:
    if checkpoint.is_cascade(folder):
        meta = checkpoint.CascadeMeta.load(folder)
        last = checkpoint.read_meta(meta.members[-1].path(folder))
        weights = ";".join(entry.weights for entry in meta.members)
        return SubjectInfo(
            meta.task,
            meta.num_labels,
            False,
            len(meta.members),
            meta.method,
            last.backbone,
            weights,
            meta.train_run_id,
        )
    m = checkpoint.read_meta(folder)
    return SubjectInfo(
        m.task,
        m.num_labels,
        m.lte,
        len(m.exit_layers),
        m.method,
        m.backbone,
        m.weights or checkpoint.weights_fingerprint(folder),  # (meta.json is read already)
        m.train_run_id,
    )


def record(folder: Path, info: SubjectInfo) -> run_record.CheckpointRecord:
    """What a stage run logs of the checkpoint it reads (elastic_cli.run_record)."""
    return run_record.CheckpointRecord(
        folder.resolve(), info.weights, info.train_run_id, run_record.read_saved_config(folder)
    )


@dataclass
class Decisions:
    """What the adaptive model does on every example of a split at one threshold."""

    threshold: float
    exit_index: np.ndarray  # [N] the exit each example leaves at
    logits: torch.Tensor  # [N, C] its outputs there
    adaptive_flops: np.ndarray  # [N] what it cost
    layer_tokens: np.ndarray | None = None  # [N, L] tokens entering each layer (length reduction)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Exit index, prediction and tokens per layer of the split's rows `index`."""
        idx = index.cpu()
        tokens = None if self.layer_tokens is None else torch.as_tensor(self.layer_tokens[idx.numpy()])
        return torch.as_tensor(self.exit_index)[idx], self.logits[idx].argmax(-1), tokens


class Subject(ABC):
    folder: Path
    num_labels: int
    exit_names: list[str]  # labels of the exits in metrics: L<layer>, or a cascade's model names
    exit_layers: list[int]  # layers run when leaving at each exit (summed over a cascade's models)
    histogram_steps: list[int]  # x of the exit histogram: the exit layer, or the model's number
    # the speed-up a `speedup` target reads: layers for one model; FLOPs for a cascade, whose models
    # differ in width, so their layers are not worth the same
    speed_column: str = "layer_speedup"
    precision: str = "float32"  # how the model(s) run: device.dtype, or int8 (device.quantize)

    def cache_variant(self, variant: str = "") -> str:
        """What else besides weights and split the cached outputs depend on: `variant` and the precision
        (none for float32, so float caches written before precision was a setting stay valid)."""
        return ";".join(v for v in (variant, "" if self.precision == "float32" else self.precision) if v)

    @abstractmethod
    def encode(self, split: Split) -> Any:
        """The split tokenised as the model(s) need it."""

    @abstractmethod
    def outputs(self, split_name: str, inputs: Any, cfg: RootConfig, device: torch.device) -> CachedOutputs:
        """Every exit's outputs on the split, computed once per weights and cached on disk."""

    @abstractmethod
    def costs(self, inputs: Any) -> ExitCosts: ...

    @abstractmethod
    def batches(self, inputs: Any, batch_size: int, indices: list[int], device: torch.device) -> list[Any]:
        """Padded batches of `indices` in that order, on the device, for `static` and `adaptive`."""

    @staticmethod
    @abstractmethod
    def rows(batch: Any) -> torch.Tensor:
        """The split's row numbers of a batch."""

    @abstractmethod
    def static(self, batch: Any) -> torch.Tensor: ...

    @abstractmethod
    def adaptive(
        self, batch: Any, rule: exits.ExitRule, threshold: float, temperatures: torch.Tensor | None
    ) -> AdaptiveOutput: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes when any weights change: recorded with a calibration."""

    def decide(
        self,
        rule: exits.ExitRule,
        cached: CachedOutputs,
        costs: ExitCosts,
        threshold: float,
        temperatures: torch.Tensor | None,
    ) -> Decisions:
        """The rule applied to the cached outputs at `threshold` (the adaptive path gives the same)."""
        idx, chosen = exits.simulate(rule, cached.signals, threshold, temperatures)
        index = idx.numpy()
        return Decisions(threshold, index, chosen, costs.exit_flops[np.arange(len(index)), index])

    def threshold_curve(
        self,
        rule: exits.ExitRule,
        cached: CachedOutputs,
        costs: ExitCosts,
        temperatures: torch.Tensor | None,
        grid_size: int,
        on_data: bool = True,
    ) -> pd.DataFrame:
        """The rule's whole threshold curve on cached outputs, priced by `costs`, labelled by exit name.
        `on_data=False`: the rule's fixed grid, never placed on these outputs (a certified target must
        fix its thresholds before it looks at the data)."""
        signals = cached.signals
        placed_on = signals.float().scaled(temperatures) if on_data else None
        grid = rule.grid(self.num_labels, len(self.exit_names), grid_size, placed_on).tolist()
        return calibration.threshold_curve(
            rule,
            signals,
            cached.labels,
            self.exit_layers,
            grid,
            temperatures,
            costs=costs,
            exit_names=self.exit_names,
        )


def _load(
    folder: Path, device: torch.device, precision: DeviceConfig | None
) -> tuple[MultiExitModel, Any, checkpoint.CheckpointMeta]:
    """One checkpoint's model, tokenizer and meta, the model in the precision asked for (None: float32)."""
    model, tokenizer, meta = checkpoint.load(folder, device)
    return (model if precision is None else for_inference(model, precision)), tokenizer, meta


class MultiExitSubject(Subject):
    def __init__(self, folder: Path, device: torch.device, precision: DeviceConfig | None = None) -> None:
        self.folder = folder
        self.model, self.tokenizer, self.meta = _load(folder, device, precision)
        self.precision = precision_name(precision)
        self.num_labels = self.meta.num_labels
        self.exit_layers = list(self.meta.exit_layers)
        self.exit_names = [f"L{k}" for k in self.exit_layers]
        self.histogram_steps = self.exit_layers
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.dims = cost_dims(self.model)

    def encode(self, split: Split) -> Encoded:
        return encode(split, self.tokenizer, self.meta.max_seq_length)

    def outputs(
        self, split_name: str, inputs: Encoded, cfg: RootConfig, device: torch.device
    ) -> CachedOutputs:
        return self._cached(split_name, inputs, cfg, device)

    def _cached(
        self, name: str, inputs: Encoded, cfg: RootConfig, device: torch.device, variant: str = ""
    ) -> CachedOutputs:
        return cached_outputs(
            self.folder,
            self.fingerprint(),
            name,
            self.model,
            inputs,
            cfg,
            self.pad_id,
            device,
            self.cache_variant(variant),
        )

    def costs(self, inputs: Encoded) -> ExitCosts:
        return ExitCosts.multi_exit(inputs.lengths, self.exit_layers, self.dims)

    def batches(
        self, inputs: Encoded, batch_size: int, indices: list[int], device: torch.device
    ) -> list[Batch]:
        return [b.to(device) for b in batches(inputs, batch_size, pad_id=self.pad_id, indices=indices)]

    @staticmethod
    def rows(batch: Batch) -> torch.Tensor:
        return batch.index

    def static(self, batch: Batch) -> torch.Tensor:
        return self.model.static_forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)

    def adaptive(
        self, batch: Batch, rule: exits.ExitRule, threshold: float, temperatures: torch.Tensor | None
    ) -> AdaptiveOutput:
        return self.model.adaptive(
            batch.input_ids, batch.attention_mask, batch.token_type_ids, rule, threshold, temperatures
        )

    def fingerprint(self) -> str:
        return checkpoint.weights_fingerprint(self.folder)


class CascadeSubject(Subject):
    speed_column = "flops_speedup"

    def __init__(self, folder: Path, device: torch.device, precision: DeviceConfig | None = None) -> None:
        self.folder = folder
        self.meta = checkpoint.CascadeMeta.load(folder)
        self.precision = precision_name(precision)
        members = []
        for entry in self.meta.members:
            member_folder = entry.path(folder)
            model, tokenizer, meta = _load(member_folder, device, precision)
            members.append(Member(entry.name, model, tokenizer, meta.max_seq_length, member_folder))
        self.cascade = Cascade(members)
        self.num_labels = self.cascade.num_labels
        self.exit_names = self.cascade.names
        self.dims = [cost_dims(m.model) for m in members]
        self.exit_layers = np.cumsum([d.num_layers for d in self.dims]).tolist()
        self.histogram_steps = list(range(1, len(members) + 1))

    def encode(self, split: Split) -> list[Encoded]:
        return [encode(split, m.tokenizer, m.max_seq_length) for m in self.cascade.members]

    def outputs(
        self, split_name: str, inputs: list[Encoded], cfg: RootConfig, device: torch.device
    ) -> CachedOutputs:
        per_member = [
            cached_outputs(
                m.folder,
                checkpoint.weights_fingerprint(m.folder),
                split_name,
                m.model,
                enc,
                cfg,
                m.pad_id,
                device,
                self.cache_variant(),
            )
            for m, enc in zip(self.cascade.members, inputs, strict=True)
        ]
        logits = torch.cat([c.signals.logits for c in per_member], dim=1)  # [N, models, C]
        first = per_member[0]
        return CachedOutputs(exits.ExitSignals(logits), first.labels, first.lengths)

    def costs(self, inputs: list[Encoded]) -> ExitCosts:
        return ExitCosts.cascade([enc.lengths for enc in inputs], self.dims)

    def batches(
        self, inputs: list[Encoded], batch_size: int, indices: list[int], device: torch.device
    ) -> list[list[Batch]]:
        per_member = [
            [b.to(device) for b in batches(enc, batch_size, pad_id=m.pad_id, indices=indices)]
            for m, enc in zip(self.cascade.members, inputs, strict=True)
        ]
        return [list(group) for group in zip(*per_member, strict=True)]

    @staticmethod
    def rows(batch: list[Batch]) -> torch.Tensor:
        return batch[0].index

    def static(self, batch: list[Batch]) -> torch.Tensor:
        return self.cascade.static(batch)

    def adaptive(
        self, batch: list[Batch], rule: exits.ExitRule, threshold: float, temperatures: torch.Tensor | None
    ) -> AdaptiveOutput:
        return self.cascade.adaptive(batch, rule, threshold, temperatures)

    def fingerprint(self) -> str:
        return ";".join(entry.weights for entry in self.meta.members)


class LengthReducingSubject(MultiExitSubject):
    """A length-reducing model (AdapLeR): one exit, after the last layer; the threshold multiplies the
    learned eta. `outputs` are the full-length outputs (multiplier 0: no token leaves), the reference a
    calibration target is measured against; every threshold is a real pass over the split, cached by
    weights, split and multiplier."""

    speed_column = "flops_speedup"

    def __init__(self, folder: Path, device: torch.device, precision: DeviceConfig | None = None) -> None:
        super().__init__(folder, device, precision)
        self.splits: dict[str, tuple[Encoded, RootConfig, torch.device]] = {}

    def outputs(
        self, split_name: str, inputs: Encoded, cfg: RootConfig, device: torch.device
    ) -> CachedOutputs:
        self.splits[split_name] = (inputs, cfg, device)
        return self._at(split_name, 0.0)

    def _at(self, split_name: str, scale: float) -> CachedOutputs:
        inputs, cfg, device = self.splits[split_name]
        cast(LengthReducingModel, self.model).scale = float(scale)
        out = self._cached(f"{split_name}-eta{scale:g}", inputs, cfg, device, f"eta x {float(scale)!r}")
        return replace(out, split=split_name)

    def costs(self, inputs: Encoded) -> ExitCosts:
        # leaving at the one exit with every token kept (the reference of `decide`'s real costs)
        full = np.tile(np.asarray(inputs.lengths)[:, None], (1, self.dims.num_layers))
        flops = cost.reduced_flops(inputs.lengths, full, self.dims)[:, None]
        return ExitCosts(
            flops,
            cost.static_flops(inputs.lengths, self.dims),
            np.asarray(self.exit_layers),
            self.dims.num_layers,
        )

    def decide(
        self,
        rule: exits.ExitRule,
        cached: CachedOutputs,
        costs: ExitCosts,
        threshold: float,
        temperatures: torch.Tensor | None,
    ) -> Decisions:
        run = self._at(cached.split, threshold)
        assert run.signals.layer_tokens is not None
        tokens = run.signals.layer_tokens.numpy()
        flops = cost.reduced_flops(run.lengths, tokens, self.dims)
        index = np.zeros(len(run.labels), dtype=np.int64)
        return Decisions(float(threshold), index, run.signals.logits[:, 0], flops, tokens)

    def threshold_curve(
        self,
        rule: exits.ExitRule,
        cached: CachedOutputs,
        costs: ExitCosts,
        temperatures: torch.Tensor | None,
        grid_size: int,
        on_data: bool = True,
    ) -> pd.DataFrame:
        """One real pass per multiplier of the rule's grid."""
        rows = []
        for t in rule.grid(self.num_labels, 1, grid_size).tolist():
            d = self.decide(rule, cached, costs, t, temperatures)
            score = float(exit_scores(ExitSignals(d.logits[:, None]), cached.labels)[0])
            assert d.layer_tokens is not None
            rows.append(
                {
                    "threshold": t,
                    "score": score,
                    "mean_exit_layer": float(self.exit_layers[-1]),
                    "layer_speedup": 1.0,
                    "flops_speedup": cost.ratio_of_totals(costs.reference_flops, d.adaptive_flops),
                    "gflops_per_example": float(d.adaptive_flops.mean()) / 1e9,
                    "mean_tokens_last_layer": float(d.layer_tokens[:, -1].mean()),
                    f"exit_frac_{self.exit_names[0]}": 1.0,
                    "super_fraction": 1.0,
                }
            )
        curve = pd.DataFrame(rows)
        if self.num_labels > 1:
            curve.insert(1, "accuracy", curve["score"])
        return curve


# the subject of each model shape a checkpoint can hold (checkpoint.CheckpointMeta.shape)
SUBJECTS: dict[str, type[MultiExitSubject]] = {
    "multi_exit": MultiExitSubject,
    "length_reducing": LengthReducingSubject,
}


def open_subject(folder: Path, device: torch.device, precision: DeviceConfig | None = None) -> Subject:
    """The checkpoint in `folder`, its model(s) on `device` in the precision `precision` asks for
    (device.dtype, device.quantize; None: as saved, float32)."""
    if checkpoint.is_cascade(folder):
        return CascadeSubject(folder, device, precision)
    return SUBJECTS[checkpoint.read_meta(folder).shape](folder, device, precision)


def check_matches(folder: Path, info: SubjectInfo, cfg: RootConfig) -> None:
    """The checkpoint must be this run's method, backbone and task: what calibrate writes and what
    evaluate logs (its MLflow tags come from the config) then describe the checkpoint truly."""
    differs = [
        f"{key}={theirs} there, {ours} here"
        for key, theirs, ours in (
            ("method", info.method, cfg.method.name),
            ("backbone", info.backbone, cfg.backbone.name),
            ("task", info.task, cfg.task.name),
        )
        if theirs != ours
    ]
    if differs:
        raise UserError(
            f"checkpoint {folder} does not match this run ({', '.join(differs)}): run with the "
            "checkpoint's method=/backbone=/task=, or point ckpt= at the right checkpoint"
        )
