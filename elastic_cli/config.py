"""Dataclass schemas of every config group, registered in Hydra's ConfigStore.

Each YAML in conf/<group>/ names its schema in its defaults list (`schema/<group>@_here_`... see the
YAMLs), so a typo or a wrong type fails at composition. Checks that span fields (a threshold in its
range, exit layers within the depth) live in `validate()`, run by every stage before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from elastic_cli.errors import UserError


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
    # the grid of `sweep=thresholds`, as a Hydra choice list
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
    max_steps: int = -1  # > 0 overrides epochs
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 10
    head_lr: float | None = None  # lr of exit heads; None: same as lr
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


def validate(cfg: RootConfig) -> None:
    for dotted, allowed in KNOWN.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise UserError(f"{dotted}={value!r} is not one of {', '.join(allowed)}")
    from elastic_cli.exits import build_rule  # the registry of exit rules, each with its threshold range

    rule = build_rule(cfg.method.exit)
    lo, hi = rule.threshold_range
    t = cfg.method.exit.threshold
    if t is not None and not lo <= t <= hi:
        raise UserError(f"method.exit.threshold={t} is outside [{lo}, {hi}] for the {rule.name} rule")
    from elastic_cli.methods.objectives import OBJECTIVES

    stages = cfg.method.stages or [TrainStageConfig(objective=cfg.method.objective)]
    for stage in stages:
        if stage.objective not in OBJECTIVES:
            raise UserError(f"objective {stage.objective!r} is not one of {', '.join(sorted(OBJECTIVES))}")
        if stage.trainable not in ("all", "intermediate_heads"):
            raise UserError(f"stage trainable={stage.trainable!r} is not one of all, intermediate_heads")
    if not 0.0 < cfg.task.calibration_fraction < 1.0:
        raise UserError(f"task.calibration_fraction={cfg.task.calibration_fraction} must be in (0, 1)")
    if cfg.task.max_seq_length < 8:
        raise UserError("task.max_seq_length must be at least 8")
    if cfg.train.batch_size < 1 or cfg.device.eval_batch_size < 1:
        raise UserError("batch sizes must be at least 1")
    if cfg.calibrate.tolerance < 0:
        raise UserError("calibrate.tolerance must be >= 0")
    if not 0.0 <= cfg.calibrate.super_fraction <= 1.0:
        raise UserError(f"calibrate.super_fraction={cfg.calibrate.super_fraction} must be in [0, 1]")


def parse_exit_layers(spec: Any, num_layers: int) -> list[int]:
    """1-indexed, sorted, unique exit layers; the last layer is always an exit (it is the full model).

    Floats in (0, 1] are fractions of the depth, so one config serves any depth: SWEET's 0_3_5_11 on 12
    layers is [0.0833,0.333,0.5,1.0].
    """
    if spec == "all":
        layers = list(range(1, num_layers + 1))
    elif spec == "last":
        layers = [num_layers]
    elif isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec):
        values = list(spec)
        try:
            layers = sorted({_layer_of(x, num_layers) for x in values})
        except (TypeError, ValueError):
            raise UserError(
                f"method.exit_layers={values} must hold layer numbers or fractions of the depth"
            ) from None
    else:
        raise UserError(f"method.exit_layers={spec!r}: use all, last, or a list such as [4,6,12]")
    bad = [x for x in layers if not 1 <= x <= num_layers]
    if bad:
        raise UserError(
            f"method.exit_layers has {bad}, beyond the backbone's {num_layers} layers (use 1..{num_layers})"
        )
    if layers[-1] != num_layers:
        layers.append(num_layers)
    return layers


def _layer_of(value: Any, num_layers: int) -> int:
    """An int is a layer number; a float is a fraction of the depth in (0, 1]."""
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(value)
        return max(1, round(value * num_layers))
    return int(value)
