"""Dataclass schemas of every config group, registered in Hydra's ConfigStore.

Each YAML in conf/<group>/ names its schema in its defaults list (`schema/<group>@_here_`... see the
YAMLs), so a typo or a wrong type fails at composition. Checks of values live in `validate()`, run by
every stage before any work: every numeric setting against its range (the table RANGES), and checks that
span fields (a threshold and the sweep grid in the exit rule's range, the shape of the exit layers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from elastic_cli.errors import UserError

if TYPE_CHECKING:
    from elastic_cli.exits import ExitRule


@dataclass
class TinyBackboneConfig:
    """A randomly initialised backbone for tests and smoke runs; its WordPiece tokenizer is
    trained on the task's training texts when the model is built."""

    num_layers: int = 4
    hidden_size: int = 32
    num_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 500
    max_position_embeddings: int = 128


@dataclass
class BackboneConfig:
    name: str = "???"
    family: str = "???"  # bert | mpnet  (the adapters in elastic_cli/models/adapters.py)
    path: str = "???"  # hub id or local folder (ignored when `tiny` is set)
    tiny: TinyBackboneConfig | None = None
    pooling: str = "cls"  # cls | mean: how an exit head reads the hidden states
    use_pretrained_pooler: bool = True  # initialise the exit heads' pooler from the backbone's, if it has one


@dataclass
class ExitRuleConfig:
    """An exit rule (conf/method/exit/<name>.yaml); the threshold is the value a sweep varies."""

    name: str = "maxprob"
    # None: take the threshold chosen by `calibrate` (calibration.json beside the checkpoint)
    threshold: float | None = None
    # the grid of `sweep=thresholds`: thresholds separated by commas (`method.exit.sweep=0.6,0.9` on the
    # command line is this one string, not a multirun: see cli._exit_group_shorthand)
    sweep: str = "0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.99"


@dataclass
class PatienceExitConfig(ExitRuleConfig):
    """PABEE / ElasticBERT patience: exit once `threshold` consecutive exits agree."""

    name: str = "patience"
    # regression: consecutive outputs "agree" when they differ by less than this (PABEE: 0.1 for STS-B)
    regression_threshold: float = 0.1


@dataclass
class ElbertExitConfig(ExitRuleConfig):
    """ELBERT: normalised entropy below `threshold`, else a confidence-window rule over `window` exits."""

    name: str = "elbert"
    mode: str = "bias_1"  # bias_1 | bias_2 | bias_3 | entropy (stage 1 only)
    window: int = 8  # ELBERT's cnt_thres
    margin: float = 0.0
    range: float = 0.1  # bias_3: the window's max - min of the predicted class's probability


@dataclass
class EnergyExitConfig(ExitRuleConfig):
    """E-LANG's energy router: leave at a model when s = T logsumexp(z / T) >= threshold, else go on."""

    name: str = "energy"
    temperature: float = 1.0  # T (E-LANG's README default)
    sweep: str = "0,1,2,3,4,5,6"


@dataclass
class TrainStageConfig:
    """One stage of a multi-stage method (DeeBERT, FastBERT)."""

    objective: str = "sum"
    trainable: str = "all"  # all | intermediate_heads (backbone and final head frozen)
    epochs: float | None = None  # None: train.epochs
    lr_scale: float = 1.0  # this stage's lr = train.lr * lr_scale


@dataclass
class MethodConfig:
    name: str = "???"
    # "all" (every layer), "last", a list of 1-indexed layer numbers such as [4,6,12], or a list of
    # fractions of the depth such as [0.0833,0.333,0.5,1.0] (SWEET's 0_3_5_11 on any depth)
    exit_layers: Any = "all"
    head: str = "pooler"  # pooler | shared_pooler | shared | fastbert
    objective: str = "sum"  # see elastic_cli/methods/objectives.py
    stages: list[TrainStageConfig] = field(default_factory=list)  # empty: one stage of `objective`
    stop_gradient: bool = False  # SWEET: no gradient from exit k into the layers before exit k-1
    gradient_equilibrium: bool = False  # ElasticBERT: average, not sum, the exits' gradients per layer
    lte: bool = False  # BERxiT's learning-to-exit module
    lte_weight: float = 1.0  # weight of its MSE loss
    head_dropout: float = 0.1  # dropout before every exit classifier (ELBERT: 0)
    exit: ExitRuleConfig = field(default_factory=ExitRuleConfig)


@dataclass
class ElbertMethodConfig(MethodConfig):
    w_init: float = 4.0  # initial logit of every intermediate exit weight (sigmoid(4) = 0.982)
    w_lr: float = 1e-2  # lr of the exit weights (their own optimizer group)


@dataclass
class FastbertMethodConfig(MethodConfig):
    head_hidden: int = 128  # FastBERT's student classifier width
    head_attention_heads: int = 2
    distil_temperature: float = 1.0


@dataclass
class ElangMethodConfig(MethodConfig):
    """E-LANG: a swift model (this backbone) in front of the super model (the `backbone` group)."""

    swift: BackboneConfig = field(default_factory=BackboneConfig)
    swift_ckpt: str | None = None  # reuse a trained single-exit (static) checkpoint as the swift model
    super_ckpt: str | None = None  # ... or as the super model


@dataclass
class MultiModelMethodConfig(MethodConfig):
    """SWEET's multi-model baseline: one model per exit layer, the backbone's first k layers each."""

    member_ckpts: dict[str, str] = field(default_factory=dict)  # reuse: {"L4": folder, ...}


@dataclass
class TaskConfig:
    name: str = "???"
    dataset: str = "???"  # hub dataset id, e.g. nyu-mll/glue
    subset: str | None = None  # hub config name, e.g. sst2
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])
    label_column: str = "label"
    num_labels: int = 2  # 1 for regression
    label_names: list[str] = field(default_factory=list)
    metric: str = "accuracy"  # accuracy | f1 | matthews | pearson_spearman
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    # local files: <data_dir>/<file stem>.{tsv,csv,jsonl}; stems for the splits above
    local_files: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "dev"})
    data_dir: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    calibration_fraction: float = 0.1  # carved from train with a fixed seed, never trained on
    calibration_max_samples: int | None = 2000


@dataclass
class DeviceConfig:
    name: str = "cpu"  # cpu | cuda | mps
    dtype: str = "float32"
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    eval_batch_size: int = 64
    throughput_batch_size: int = 32


@dataclass
class TrainConfig:
    lr: float = 2e-5
    batch_size: int = 32
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs; 0 or less: off
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 10
    head_lr: float | None = None  # lr of exit heads; None: same as lr
    # write a resumable training state every N optimizer steps; 0: only at each epoch's end
    save_every: int = 500
    resume: bool = True  # resume from the state an interrupted run of this config left; false: start over
    # a fine-tuned method=static checkpoint standing for the leading final_only stages (DeeBERT, FastBERT)
    init_from: str | None = None


@dataclass
class CalibrateConfig:
    # accuracy_within: fastest threshold whose accuracy is within `tolerance` (absolute) of the final exit
    # speedup: most accurate threshold whose speed-up is at least `speedup` (layers; FLOPs for a cascade)
    # super_fraction: most accurate threshold sending at most `super_fraction` of the examples to the last
    #   exit (a cascade's super model)
    target: str = "accuracy_within"
    tolerance: float = 0.01
    speedup: float = 2.0
    super_fraction: float = 0.25
    temperature: bool | None = None  # fit per-exit temperatures; None: the exit rule's default (maxprob only)
    grid_size: int = 101


@dataclass
class EvaluateConfig:
    latency: bool = True
    latency_samples: int = 200
    latency_warmup: int = 10
    throughput_batches: int = 5
    grid: bool = True  # also log the whole threshold curve from the cached all-exits pass
    grid_size: int = 51
    save_predictions: bool = True


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<outputs>/mlflow.db
    experiment: str | None = None  # None: the task name
    enabled: bool = True


@dataclass
class RootConfig:
    stage: str = "???"
    seed: int = 42
    outputs: str = "outputs"
    ckpt: str | None = None  # checkpoint folder; None: the default one for method/backbone/task/seed
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_root", node=RootConfig)
    cs.store(group="schema/method", name="base", node=MethodConfig, package="method")
    cs.store(group="schema/method", name="elbert", node=ElbertMethodConfig, package="method")
    cs.store(group="schema/method", name="fastbert", node=FastbertMethodConfig, package="method")
    cs.store(group="schema/method", name="elang", node=ElangMethodConfig, package="method")
    cs.store(group="schema/method", name="multi_model", node=MultiModelMethodConfig, package="method")
    for name, node in EXIT_SCHEMAS.items():
        cs.store(group="schema/exit", name=name, node=node)
    cs.store(group="schema/backbone", name="base", node=BackboneConfig, package="backbone")
    cs.store(group="schema/task", name="base", node=TaskConfig, package="task")
    cs.store(group="schema/device", name="base", node=DeviceConfig, package="device")


EXIT_SCHEMAS: dict[str, type[ExitRuleConfig]] = {
    "base": ExitRuleConfig,
    "patience": PatienceExitConfig,
    "elbert": ElbertExitConfig,
    "energy": EnergyExitConfig,
}

KNOWN = {
    "backbone.family": ("bert", "mpnet", "albert", "deberta", "distilbert"),
    "backbone.pooling": ("cls", "mean"),
    "method.head": ("pooler", "shared_pooler", "shared", "fastbert"),
    "task.metric": ("accuracy", "f1", "matthews", "pearson_spearman"),
    "device.name": ("cpu", "cuda", "mps"),
    "device.dtype": ("float32", "float16", "bfloat16"),
    "calibrate.target": ("accuracy_within", "speedup", "super_fraction"),
}


def to_root(cfg: DictConfig) -> RootConfig:
    """The typed object the stages work with, checked by `validate`."""
    root = OmegaConf.to_object(cfg)
    assert isinstance(root, RootConfig)
    validate(root)
    return root


@dataclass(frozen=True)
class Bound:
    """The allowed values of a numeric setting: `holds(value)`, and how the error message says it."""

    holds: Callable[[float], bool]
    says: str


def at_least(low: float) -> Bound:
    return Bound(lambda value: value >= low, f">= {low:g}")


POSITIVE = Bound(lambda value: value > 0, "> 0")
NON_NEGATIVE = at_least(0)
FRACTION = Bound(lambda value: 0 <= value < 1, "in [0, 1)")
OPEN_UNIT = Bound(lambda value: 0 < value < 1, "in (0, 1)")
UNIT = Bound(lambda value: 0 <= value <= 1, "in [0, 1]")

# Every numeric setting and its range, checked at composition: (setting, bound, what it is). A setting
# that is null (unset: its default applies) or absent from this config (another method's, another exit
# rule's, a hub backbone's `tiny`) is skipped. train.max_steps has no bound: > 0 sets the steps, the rest
# leaves them to train.epochs. Thresholds depend on the exit rule: see `_threshold_problem`.
RANGES: tuple[tuple[str, Bound, str], ...] = (
    ("seed", NON_NEGATIVE, "the random seed"),
    ("train.lr", POSITIVE, "the learning rate"),
    ("train.head_lr", POSITIVE, "the exit heads' learning rate; null: train.lr"),
    ("train.batch_size", at_least(1), "examples per optimizer step"),
    ("train.epochs", POSITIVE, "passes over the training split, may be fractional"),
    ("train.warmup_ratio", FRACTION, "the fraction of the steps spent warming up"),
    ("train.weight_decay", NON_NEGATIVE, "AdamW's weight decay"),
    ("train.max_grad_norm", POSITIVE, "the gradient clipping norm"),
    ("train.log_every", at_least(1), "optimizer steps between progress updates"),
    ("train.save_every", NON_NEGATIVE, "optimizer steps between training states; 0: each epoch's end"),
    ("method.lte_weight", NON_NEGATIVE, "the weight of the learning-to-exit loss"),
    ("method.head_dropout", FRACTION, "the dropout before every exit classifier"),
    ("method.w_lr", POSITIVE, "the learning rate of ELBERT's exit weights"),
    ("method.head_hidden", at_least(1), "the width of FastBERT's student classifier"),
    ("method.head_attention_heads", at_least(1), "the attention heads of FastBERT's student classifier"),
    ("method.distil_temperature", POSITIVE, "FastBERT's distillation temperature"),
    ("method.exit.regression_threshold", POSITIVE, "the change below which regression exits agree"),
    ("method.exit.window", at_least(1), "the exits in ELBERT's window"),
    ("method.exit.margin", FRACTION, "ELBERT's margin above 1/C"),
    ("method.exit.range", POSITIVE, "ELBERT's bias_3 spread"),
    ("method.exit.temperature", POSITIVE, "the energy rule's temperature T"),
    *(
        (f"{backbone}.tiny.{key}", at_least(low), f"the tiny model's {what}")
        for backbone in ("backbone", "method.swift")  # the model, and E-LANG's swift model
        for key, low, what in (
            ("num_layers", 1, "layers"),
            ("hidden_size", 1, "width"),
            ("num_heads", 1, "attention heads"),
            ("intermediate_size", 1, "feed-forward width"),
            ("vocab_size", 1, "vocabulary"),
            ("max_position_embeddings", 8, "longest input"),
        )
    ),
    ("task.num_labels", at_least(1), "the number of classes; 1: regression"),
    ("task.max_train_samples", at_least(1), "training examples to keep; null: all"),
    ("task.max_eval_samples", at_least(1), "evaluation examples to keep; null: all"),
    ("task.max_seq_length", at_least(8), "tokens per input"),
    ("task.calibration_fraction", OPEN_UNIT, "the part of train held out for calibration"),
    ("task.calibration_max_samples", at_least(1), "the cap on the calibration split; null: none"),
    ("device.threads", at_least(1), "torch's CPU threads; null: torch's default"),
    ("device.eval_batch_size", at_least(1), "examples per evaluation batch"),
    ("device.throughput_batch_size", at_least(1), "examples per throughput batch"),
    ("calibrate.tolerance", NON_NEGATIVE, "the accuracy a threshold may lose"),
    ("calibrate.speedup", at_least(1), "the speed-up the threshold must reach"),
    ("calibrate.super_fraction", UNIT, "the fraction of examples the last exit may get"),
    ("calibrate.grid_size", at_least(2), "thresholds tried"),
    ("evaluate.latency_samples", at_least(1), "examples timed at batch 1"),
    ("evaluate.latency_warmup", NON_NEGATIVE, "untimed warm-up examples"),
    ("evaluate.throughput_batches", at_least(1), "batches timed for throughput"),
    ("evaluate.grid_size", at_least(2), "points of the threshold curve"),
)
STAGE_RANGES: tuple[tuple[str, Bound, str], ...] = (
    ("epochs", POSITIVE, "this stage's epochs; null: train.epochs"),
    ("lr_scale", POSITIVE, "this stage's lr / train.lr"),
)
_ABSENT = object()


def check_range(setting: str, value: Any, bound: Bound, what: str) -> None:
    """A UserError naming the setting, its value and its range, unless the value is within it."""
    if value is None or value is _ABSENT:
        return
    finite = not isinstance(value, float) or math.isfinite(value)
    if not (finite and bound.holds(value)):
        number = "" if finite else "a finite number "
        raise UserError(f"{setting}={value} must be {number}{bound.says} ({what})")


def _setting(cfg: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = getattr(cfg, key, _ABSENT)
        if cfg is None or cfg is _ABSENT:
            return cfg
    return cfg


def validate(cfg: RootConfig) -> None:
    for dotted, allowed in KNOWN.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise UserError(f"{dotted}={value!r} is not one of {', '.join(allowed)}")
    for dotted, bound, what in RANGES:
        check_range(dotted, _setting(cfg, dotted), bound, what)
    from elastic_cli.methods.objectives import OBJECTIVES

    stages = cfg.method.stages or [TrainStageConfig(objective=cfg.method.objective)]
    for index, stage in enumerate(stages):
        if stage.objective not in OBJECTIVES:
            raise UserError(f"objective {stage.objective!r} is not one of {', '.join(sorted(OBJECTIVES))}")
        if stage.trainable not in ("all", "intermediate_heads"):
            raise UserError(f"stage trainable={stage.trainable!r} is not one of all, intermediate_heads")
        for key, bound, what in STAGE_RANGES:
            check_range(f"method.stages[{index}].{key}", getattr(stage, key), bound, what)
    check_exit_layers(cfg.method.exit_layers)
    task = cfg.task
    if task.label_names and task.num_labels > 1 and len(task.label_names) != task.num_labels:
        raise UserError(
            f"task.label_names={list(task.label_names)} has {len(task.label_names)} names but "
            f"task.num_labels={task.num_labels}: give one name per class"
        )
    for backbone in ("backbone", "method.swift"):
        tiny = _setting(cfg, f"{backbone}.tiny")
        if isinstance(tiny, TinyBackboneConfig) and tiny.hidden_size % tiny.num_heads:
            raise UserError(
                f"{backbone}.tiny.hidden_size={tiny.hidden_size} must be a multiple of "
                f"{backbone}.tiny.num_heads={tiny.num_heads}"
            )
    _check_thresholds(cfg)


def _check_thresholds(cfg: RootConfig) -> None:
    """The threshold and every point of the sweep grid within the exit rule's range."""
    from elastic_cli.exits import build_rule  # the registry of exit rules, each with its threshold range

    exit_cfg = cfg.method.exit
    rule = build_rule(exit_cfg)
    t = exit_cfg.threshold
    if t is not None:
        problem = _threshold_problem(rule, t, cfg.task.num_labels)
        if problem:
            raise UserError(f"method.exit.threshold={t} {problem}")
    grid = [item.strip() for item in str(exit_cfg.sweep).split(",")]
    example = "method.exit.sweep=0.6,0.9" if rule.threshold_range[1] <= 1 else "method.exit.sweep=2,3,4"
    try:
        points = [float(item) for item in grid]
    except ValueError:
        points = []
    if not points:
        raise UserError(
            f"method.exit.sweep={exit_cfg.sweep!r} must be thresholds separated by commas, e.g. {example}"
        )
    for point in points:
        problem = _threshold_problem(rule, point, cfg.task.num_labels)
        if problem:
            raise UserError(f"method.exit.sweep={exit_cfg.sweep!r} holds {point:g}, which {problem}")


def _threshold_problem(rule: ExitRule, t: float, num_labels: int) -> str | None:
    """What is wrong with threshold `t` for `rule` (its bounds for this task's classes), or None."""
    lo, hi, why = rule.threshold_bounds(num_labels)
    # a bound written to 4 places (0.6931 for log 2) is within it
    if not (math.isfinite(t) and lo <= t and (t <= hi or round(t, 4) <= round(hi, 4))):
        note = f" ({why})" if why else ""
        return f"is outside [{round(lo, 4)}, {round(hi, 4)}] for the {rule.name} rule{note}"
    if rule.whole_thresholds and t != int(t):
        return f"must be a whole number of {rule.whole_thresholds} (1, 2, ...) for the {rule.name} rule"
    return None


def check_exit_layers(spec: Any) -> None:
    """`method.exit_layers` is all, last, or a non-empty list of layer numbers (>= 1) or fractions of the
    depth in (0, 1]; whether the numbers fit the backbone is checked once its depth is known."""
    if spec in ("all", "last"):
        return
    if not (isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec)):
        raise UserError(f"method.exit_layers={spec!r}: use all, last, or a list such as [4,6,12]")
    values = list(spec)
    if not values:
        raise UserError("method.exit_layers=[] names no exit: use all, last, or a list such as [4,6,12]")
    for value in values:
        _layer_of(value, 1, values)


def parse_exit_layers(spec: Any, num_layers: int) -> list[int]:
    """1-indexed, sorted, unique exit layers; the last layer is always an exit (it is the full model).

    Floats in (0, 1] are fractions of the depth, so one config serves any depth: SWEET's 0_3_5_11 on 12
    layers is [0.0833,0.333,0.5,1.0].
    """
    check_exit_layers(spec)
    if spec == "all":
        layers = list(range(1, num_layers + 1))
    elif spec == "last":
        layers = [num_layers]
    else:
        values = list(spec)
        layers = sorted({_layer_of(x, num_layers, values) for x in values})
    bad = [x for x in layers if not 1 <= x <= num_layers]
    if bad:
        raise UserError(
            f"method.exit_layers has {bad}, beyond the backbone's {num_layers} layers (use 1..{num_layers})"
        )
    if layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


def _layer_of(value: Any, num_layers: int, spec: list[Any]) -> int:
    """An int is a layer number (>= 1); a float is a fraction of the depth in (0, 1]."""
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return max(1, round(value * num_layers))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise UserError(
        f"method.exit_layers={spec} holds {value!r}, neither a layer number (1, 2, ...) nor a fraction of "
        "the depth in (0, 1]: use e.g. [4,6,12] or [0.25,0.5,1.0]"
    )
