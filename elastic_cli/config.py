"""Dataclass schemas of the root config and its groups, registered in Hydra's ConfigStore.

The bottom of the package: it imports nothing of elastic's but its errors. Each YAML in conf/<group>/ names
its schema in its defaults list (`schema/<group>@_here_`... see the YAMLs), so a typo or a wrong type (or a
value outside a fixed set of choices, an Enum) fails at composition. A plug-in's own settings (a method's,
an exit rule's) are a subclass of MethodConfig or ExitRuleConfig that lives beside the plug-in and is
registered with it (elastic_cli/registry.py). `validate()` checks what needs no registry: every numeric
setting against its range (the table RANGES; a plug-in schema lists its own in a `RANGES` class variable),
the shape of the exit layers, label names, tiny-model shapes. The checks against the registries (names,
thresholds in the exit rule's range) are in elastic_cli/checks.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from elastic_cli.errors import UserError


# Fixed choices. OmegaConf matches an Enum by member name, so each name is its value.
class Pooling(StrEnum):
    cls = "cls"  # the first token's state
    mean = "mean"  # the mean over real tokens


class Metric(StrEnum):
    accuracy = "accuracy"
    f1 = "f1"
    matthews = "matthews"
    pearson_spearman = "pearson_spearman"


class DeviceName(StrEnum):
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Dtype(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Quantize(StrEnum):
    none = "none"
    int8 = "int8"  # PyTorch dynamic quantization of every Linear layer (CPU)


class CalibrationTarget(StrEnum):
    # the fastest threshold whose accuracy is within `tolerance` (absolute) of the final exit's
    accuracy_within = "accuracy_within"
    # the most accurate threshold whose speed-up is at least `speedup` (layers; FLOPs for a cascade)
    speedup = "speedup"
    # the most accurate threshold sending at most `super_fraction` of the examples to the last exit (a
    # cascade's super model)
    super_fraction = "super_fraction"
    # with probability >= 1 - delta, the early prediction equals the final exit's on >= 1 - epsilon of
    # future examples (CAT's consistency, certified by a binomial bound on the calibration split)
    consistency = "consistency"


class ReportAxis(StrEnum):
    flops = "flops"  # the FLOPs speed-up of the cost model, at every threshold of the logged curve
    layers = "layers"  # the layer speed-up (layers run per example), at every threshold of the curve
    latency = "latency"  # the measured batch-1 p50 latency speed-up: one point per evaluated threshold


class Trainable(StrEnum):
    all = "all"
    intermediate_heads = "intermediate_heads"  # backbone and final head frozen


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


@dataclass
class TinyBackboneConfig:
    """A randomly initialised backbone for tests and smoke runs; its WordPiece tokenizer is
    trained on the task's training texts when the model is built."""

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = (
        ("num_layers", at_least(1), "the tiny model's layers"),
        ("hidden_size", at_least(1), "the tiny model's width"),
        ("num_heads", at_least(1), "the tiny model's attention heads"),
        ("intermediate_size", at_least(1), "the tiny model's feed-forward width"),
        ("vocab_size", at_least(1), "the tiny model's vocabulary"),
        ("max_position_embeddings", at_least(8), "the tiny model's longest input"),
    )

    num_layers: int = 4
    hidden_size: int = 32
    num_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 500
    max_position_embeddings: int = 128


@dataclass
class BackboneConfig:
    name: str = "???"
    family: str = "???"  # the architecture's adapter: bert, mpnet, albert, distilbert, deberta
    path: str = "???"  # hub id or local folder (ignored when `tiny` is set)
    tiny: TinyBackboneConfig | None = None  # set: a random tiny model of this shape instead of `path`
    pooling: Pooling = Pooling.cls  # how an exit head reads the hidden states
    use_pretrained_pooler: bool = True  # initialise the exit heads' pooler from the backbone's, if it has one


@dataclass
class ExitRuleConfig:
    """An exit rule (conf/method/exit/<name>.yaml); the threshold is the value a sweep varies. A rule with
    settings of its own subclasses this beside the rule (elastic_cli/exits.py) and lists their ranges in
    `RANGES` (field, Bound, what it is)."""

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = ()

    name: str = "maxprob"
    # null: take the threshold chosen by `calibrate` (calibration.json beside the checkpoint)
    threshold: float | None = None
    # the grid of `sweep=thresholds`: thresholds separated by commas (`method.exit.sweep=0.6,0.9` on the
    # command line is this one grid, not a multirun over it)
    sweep: str = "0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.99"


@dataclass
class TrainStageConfig:
    """One stage of a multi-stage method (DeeBERT, FastBERT)."""

    objective: str = "sum"
    trainable: Trainable = Trainable.all
    epochs: float | None = None  # null: train.epochs
    lr_scale: float = 1.0  # this stage's lr = train.lr * lr_scale
    keep_best: int = 1  # weights kept from this stage: the best epoch, and runners-up when > 1 (AdapLeR: 3)


@dataclass
class MethodConfig:
    """A method's settings. A method with settings of its own subclasses this beside its class
    (elastic_cli/methods/<name>.py) and lists their ranges in `RANGES` (field, Bound, what it is)."""

    RANGES: ClassVar[tuple[tuple[str, Bound, str], ...]] = ()

    name: str = "???"
    # "all" (every layer), "last", a list of 1-indexed layer numbers such as [4,6,12], or a list of
    # fractions of the depth such as [0.0833,0.333,0.5,1.0] (SWEET's 0_3_5_11 on any depth)
    exit_layers: Any = "all"
    head: str = "pooler"  # the exit classifier: pooler, shared_pooler, shared, fastbert
    # the training loss over the exits: sum, final_only, sum_intermediate, layer_weighted (PABEE),
    # self_distil (FastBERT), dyn_weights (ELBERT), alternate (BERxiT)
    objective: str = "sum"
    stages: list[TrainStageConfig] = field(default_factory=list)  # empty: one stage of `objective`
    stop_gradient: bool = False  # SWEET: no gradient from exit k into the layers before exit k-1
    gradient_equilibrium: bool = False  # ElasticBERT: average, not sum, the exits' gradients per layer
    lte: bool = False  # BERxiT's learning-to-exit module
    lte_weight: float = 1.0  # weight of its MSE loss
    head_dropout: float = 0.1  # dropout before every exit classifier (ELBERT: 0)
    exit: ExitRuleConfig = field(default_factory=ExitRuleConfig)


@dataclass
class TaskConfig:
    name: str = "???"
    dataset: str = "???"  # hub dataset id, e.g. nyu-mll/glue
    subset: str | None = None  # hub config name, e.g. sst2
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])  # one, or two for a pair task
    label_column: str = "label"
    num_labels: int = 2  # 1 for regression
    # the class names in id order; a label in the data may be its name or its id
    label_names: list[str] = field(default_factory=list)
    metric: Metric = Metric.accuracy
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    # local files: <data_dir>/<file stem>.{tsv,csv,jsonl}; stems for the splits above
    local_files: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "dev"})
    data_dir: str | None = None  # null: the hub dataset
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 128
    calibration_fraction: float = 0.1  # carved from train with a fixed seed, never trained on
    calibration_max_samples: int | None = 2000


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.cpu
    # what calibrate and evaluate run the model in (training is float32); a run in another precision
    # also times and scores the float32 model beside it
    dtype: Dtype = Dtype.float32
    quantize: Quantize = Quantize.none
    threads: int | None = None  # torch.set_num_threads; null: leave torch's default
    eval_batch_size: int = 64
    throughput_batch_size: int = 32
    # `elastic train` with DistributedDataParallel over the processes of its launcher: srun with one task per
    # GPU needs it; torchrun's processes train together whatever it says (elastic_cli/distributed.py)
    distributed: bool = False
    distributed_timeout: int = 600  # seconds a rank waits in a collective for the others before it fails


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
    head_lr: float | None = None  # lr of exit heads; null: same as lr
    # write a resumable training state every N optimizer steps; 0: only at each epoch's end
    save_every: int = 500
    resume: bool = True  # resume from the state an interrupted run of this config left; false: start over
    # a fine-tuned method=static checkpoint standing for the leading final_only stages (DeeBERT, FastBERT)
    init_from: str | None = None


@dataclass
class CalibrateConfig:
    target: CalibrationTarget = CalibrationTarget.accuracy_within  # how the threshold is chosen
    tolerance: float = 0.01
    speedup: float = 2.0
    super_fraction: float = 0.25
    epsilon: float = 0.05  # target=consistency: the share of examples whose early prediction may differ
    delta: float = 0.1  # target=consistency: the chance that the guarantee fails (a calibration sample's)
    temperature: bool | None = None  # fit per-exit temperatures; null: the exit rule's default (maxprob only)
    grid_size: int = 101


@dataclass
class EvaluateConfig:
    latency: bool = True  # measure batch-1 latency and throughput beside the static model
    latency_samples: int = 200
    latency_warmup: int = 10
    throughput_batches: int = 5
    grid: bool = True  # also log the whole threshold curve from the cached all-exits pass
    grid_size: int = 51
    save_predictions: bool = True  # <split>/predictions.csv in the MLflow run: one row per example


@dataclass
class TrackingConfig:
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<outputs>/mlflow.db
    experiment: str | None = None  # null: the task name
    enabled: bool = True
    # where the printed run links point: null: the tracking server itself, else `mlflow ui`'s
    # http://127.0.0.1:5000 (set it when the UI runs elsewhere, e.g. mlflow ui --port 8080)
    ui_url: str | None = None
    # the MLflow run this stage's run is a child of: set by the sweep callback for every job of a
    # multirun (it travels in the job's config, to jobs on other nodes too); null: a top-level run
    parent_run_id: str | None = None


@dataclass
class RootConfig:
    stage: str = "???"
    seed: int = 42
    outputs: str = "outputs"  # runs, checkpoints and the default MLflow store go under it
    ckpt: str | None = None  # checkpoint folder; null: the default one for method/backbone/task/seed
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class ReportConfig:
    """`elastic report`: which evaluate runs of the task's experiment it compares, and how."""

    backbone: str | None = None  # only runs on this backbone (a backbone config name); null: every backbone
    methods: list[str] = field(default_factory=list)  # only these methods, e.g. [sweet,pabee]; []: every one
    runs: list[str] = field(default_factory=list)  # exactly these evaluate run ids; []: the latest of each
    parent: str | None = None  # only the evaluate runs under this sweep parent run (its id)
    # the method whose Pareto front the ELUE-style score is measured against (ELUE's: ElasticBERT); null: none
    reference: str | None = "elasticbert"
    x: ReportAxis = ReportAxis.flops  # the speed-up on the figure's x axis and in the table
    split: str | None = None  # the evaluation split; null: the task's first (task.eval_splits[0])
    speedups: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0, 4.0])  # the table's fixed speed-ups


@dataclass
class ReportRootConfig:
    """The config of `elastic report` (conf/report.yaml): it reads runs, so it needs no model or device."""

    stage: str = "report"
    outputs: str = "outputs"  # the report's folder and the default MLflow store go under it
    task: TaskConfig = field(default_factory=TaskConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def register_configs() -> None:
    """The root schema and the bases of the groups; plug-ins store their own schemas as they register
    (elastic_cli/registry.py), and elastic_cli/plugins.py imports them all."""
    from elastic_cli.launchers import register_resolvers

    register_resolvers()  # the launcher configs' own (conf/hydra/launcher/)
    cs = ConfigStore.instance()
    cs.store(name="schema_root", node=RootConfig)
    cs.store(name="schema_report", node=ReportRootConfig)
    cs.store(group="schema/method", name="base", node=MethodConfig, package="method")
    cs.store(group="schema/exit", name="base", node=ExitRuleConfig)
    cs.store(group="schema/backbone", name="base", node=BackboneConfig, package="backbone")
    cs.store(group="schema/task", name="base", node=TaskConfig, package="task")
    cs.store(group="schema/device", name="base", node=DeviceConfig, package="device")


# Every numeric setting and its range, checked at composition: (setting, bound, what it is). A setting
# that is null (unset: its default applies) or absent from this config (another method's, another exit
# rule's, a hub backbone's `tiny`) is skipped. train.max_steps has no bound: > 0 sets the steps, the rest
# leaves them to train.epochs. A plug-in's settings are in its schema's RANGES; thresholds depend on the exit
# rule (elastic_cli/checks.py).
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
    *((f"backbone.tiny.{key}", bound, what) for key, bound, what in TinyBackboneConfig.RANGES),
    ("task.num_labels", at_least(1), "the number of classes; 1: regression"),
    ("task.max_train_samples", at_least(1), "training examples to keep; null: all"),
    ("task.max_eval_samples", at_least(1), "evaluation examples to keep; null: all"),
    ("task.max_seq_length", at_least(8), "tokens per input"),
    ("task.calibration_fraction", OPEN_UNIT, "the part of train held out for calibration"),
    ("task.calibration_max_samples", at_least(1), "the cap on the calibration split; null: none"),
    ("device.threads", at_least(1), "torch's CPU threads; null: torch's default"),
    ("device.eval_batch_size", at_least(1), "examples per evaluation batch"),
    ("device.throughput_batch_size", at_least(1), "examples per throughput batch"),
    ("device.distributed_timeout", at_least(1), "seconds a rank waits for the others in a collective"),
    ("calibrate.tolerance", NON_NEGATIVE, "the accuracy a threshold may lose"),
    ("calibrate.speedup", at_least(1), "the speed-up the threshold must reach"),
    ("calibrate.super_fraction", UNIT, "the fraction of examples the last exit may get"),
    ("calibrate.epsilon", OPEN_UNIT, "the share of early predictions that may differ from the final exit's"),
    ("calibrate.delta", OPEN_UNIT, "the chance that the consistency guarantee fails"),
    ("calibrate.grid_size", at_least(2), "thresholds tried"),
    ("evaluate.latency_samples", at_least(1), "examples timed at batch 1"),
    ("evaluate.latency_warmup", NON_NEGATIVE, "untimed warm-up examples"),
    ("evaluate.throughput_batches", at_least(1), "batches timed for throughput"),
    ("evaluate.grid_size", at_least(2), "points of the threshold curve"),
)
STAGE_RANGES: tuple[tuple[str, Bound, str], ...] = (
    ("epochs", POSITIVE, "this stage's epochs; null: train.epochs"),
    ("lr_scale", POSITIVE, "this stage's lr / train.lr"),
    ("keep_best", at_least(1), "the best epochs this stage keeps"),
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


def check_ranges(cfg: Any, prefix: str, rows: tuple[tuple[str, Bound, str], ...]) -> None:
    """Check the settings of `rows` (field names of `cfg`) against their bounds; `prefix` names `cfg`."""
    for key, bound, what in rows:
        check_range(f"{prefix}.{key}", _setting(cfg, key), bound, what)


def validate(cfg: RootConfig) -> None:
    """The checks that need no registry (elastic_cli/checks.py adds the others)."""
    for dotted, bound, what in RANGES:
        check_range(dotted, _setting(cfg, dotted), bound, what)
    check_ranges(cfg.method, "method", type(cfg.method).RANGES)
    check_ranges(cfg.method.exit, "method.exit", type(cfg.method.exit).RANGES)
    # a plug-in's own backbones (E-LANG's swift model) are checked as `backbone` is
    for name, value in vars(cfg.method).items():
        if isinstance(value, BackboneConfig) and value.tiny is not None:
            check_ranges(value.tiny, f"method.{name}.tiny", TinyBackboneConfig.RANGES)
    stages = cfg.method.stages or [TrainStageConfig(objective=cfg.method.objective)]
    for index, stage in enumerate(stages):
        check_ranges(stage, f"method.stages[{index}]", STAGE_RANGES)
    check_exit_layers(cfg.method.exit_layers)
    task = cfg.task
    if task.label_names and task.num_labels > 1 and len(task.label_names) != task.num_labels:
        raise UserError(
            f"task.label_names={list(task.label_names)} has {len(task.label_names)} names but "
            f"task.num_labels={task.num_labels}: give one name per class"
        )
    backbones = {"backbone": cfg.backbone}
    backbones.update({f"method.{k}": v for k, v in vars(cfg.method).items() if isinstance(v, BackboneConfig)})
    for where, backbone in backbones.items():
        tiny = backbone.tiny
        if tiny is not None and tiny.hidden_size % tiny.num_heads:
            raise UserError(
                f"{where}.tiny.hidden_size={tiny.hidden_size} must be a multiple of "
                f"{where}.tiny.num_heads={tiny.num_heads}"
            )


def to_report_config(cfg: Any) -> ReportRootConfig:
    """`elastic report`'s typed config (conf/report.yaml), checked: the fixed speed-ups are speed-ups."""
    report = OmegaConf.to_object(cfg)
    assert isinstance(report, ReportRootConfig)
    for value in report.report.speedups:
        check_range("report.speedups", value, at_least(1), "the speed-ups the table reads scores at")
    return report


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
