"""Checkpoint folders: where they live, how they are written (atomically) and read back.

A checkpoint folder holds
    model.safetensors   every weight of the multi-exit model
    backbone/           the Hugging Face config and tokenizer files (rebuilt with no hub access)
    config.yaml         the resolved config of the run that trained it
    meta.json           exit layers, labels, family, what training measured
    calibration.json    written by `elastic calibrate`
    cache/              all-exits logits per evaluation split (see stages/common.py)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from elastic_cli import files
from elastic_cli.config import Pooling, RootConfig
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import FAMILIES
from elastic_cli.models.heads import HEADS, HeadSpec
from elastic_cli.models.json_files import first_line, read_json_object
from elastic_cli.models.length_reducing import LengthReducingModel  # noqa: F401  (registers its shape)
from elastic_cli.models.loading import backbone_from_folder, save_backbone_files
from elastic_cli.models.multi_exit import MODEL_SHAPES, MultiExitModel

# bumped whenever the weights' layout changes, so an old checkpoint fails with a message, not a traceback
FORMAT = 2
WEIGHTS = "model.safetensors"
META = "meta.json"
CALIBRATION = "calibration.json"


@dataclass
class CheckpointMeta:
    method: str
    backbone: str
    family: str
    task: str
    seed: int
    exit_layers: list[int]
    num_labels: int
    label_names: list[str]
    pooling: str
    max_seq_length: int
    head: dict[str, Any] = field(default_factory=dict)  # HeadSpec fields
    lte: bool = False
    shape: str = "multi_exit"  # the model shape (models.multi_exit.MODEL_SHAPES) the weights belong to
    shape_settings: dict[str, Any] = field(default_factory=dict)  # its constructor settings
    train_metrics: dict[str, Any] = field(default_factory=dict)
    format: int = 1  # checkpoints written before the field existed are format 1
    weights: str = ""  # sha256 of model.safetensors, taken at save time ("" in older checkpoints)
    train_run_id: str = ""  # the MLflow run that trained it ("" without tracking, or in older checkpoints)

    def head_spec(self) -> HeadSpec:
        return HeadSpec(**{"pooling": self.pooling, **self.head})


def default_dir(cfg: RootConfig) -> Path:
    return (
        Path(cfg.outputs)
        / "checkpoints"
        / cfg.task.name
        / cfg.method.name
        / cfg.backbone.name
        / f"seed{cfg.seed}"
    )


def checkpoint_dir(cfg: RootConfig) -> Path:
    """The folder `ckpt=` names, else the one `train` writes for this method/backbone/task/seed."""
    return Path(cfg.ckpt).expanduser() if cfg.ckpt else default_dir(cfg)


def _swap_in(tmp: Path, folder: Path) -> None:
    # Replace `folder` by the fully written `tmp`: a reader sees the old or the new checkpoint, never half.
    # The old one goes to a fresh temporary name first (never `<folder>.old`, a name a user could own).
    old = files.aside_name(folder)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


# what a checkpoint folder may hold: anything else there is not ours, and train refuses to replace it
SALIENCY = "saliency.safetensors"  # AdapLeR's saliency targets (elastic_cli/saliency.py)
OWN_ENTRIES = frozenset(
    {WEIGHTS, META, CALIBRATION, SALIENCY, "backbone", "config.yaml", "cache", "members", "cascade.json"}
)


def check_replaceable(folder: Path, method: str, backbone: str, task: str) -> str | None:
    """Refuse (one line) unless `folder` is absent, empty, or an elastic checkpoint of this
    method/backbone/task holding nothing of anyone else's; say what a save would replace."""
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(
            f"ckpt={folder} is {'a link' if folder.is_symlink() else 'a file'}, not a checkpoint folder: "
            "choose a new or empty folder for ckpt="
        )
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    strangers = [name for name in entries if name not in OWN_ENTRIES]
    meta_file = folder / (CASCADE if (folder / CASCADE).is_file() else META)
    try:
        recorded = json.loads(meta_file.read_text())
        assert isinstance(recorded, dict)
        theirs = (recorded["method"], recorded.get("backbone", backbone), recorded["task"])
    except (OSError, ValueError, KeyError, AssertionError):
        if meta_file.is_file() and not strangers:
            raise UserError(
                f"ckpt={folder} holds a damaged elastic checkpoint ({meta_file.name} is unreadable), so "
                "elastic cannot tell whose it is: delete the folder yourself if it is no longer needed, "
                "or choose another ckpt="
            ) from None
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(
            f"ckpt={folder} exists and is not an elastic checkpoint (it holds {shown}): elastic replaces "
            "only its own checkpoints; choose a new or empty folder for ckpt="
        ) from None
    if strangers:
        raise UserError(
            f"the checkpoint folder {folder} also holds {', '.join(strangers[:4])}, which elastic did not "
            "write: move them out (a new checkpoint replaces the whole folder) or choose another ckpt="
        )
    ours = (method, backbone, task)
    if theirs != ours:
        raise UserError(
            f"{folder} holds the checkpoint of method={theirs[0]} backbone={theirs[1]} task={theirs[2]}, "
            f"not method={method} backbone={backbone} task={task}: choose another ckpt= (elastic replaces "
            "only a checkpoint of the same method, backbone and task)"
        )
    extras = [name for name in (CALIBRATION, "cache") if (folder / name).exists()]
    return f"the {theirs[0]} checkpoint in {folder}" + (f" (and its {', '.join(extras)})" if extras else "")


def save(
    folder: Path,
    model: MultiExitModel,
    tokenizer: Any,
    raw_cfg: DictConfig,
    meta: CheckpointMeta,
    extra_files: Mapping[str, Path] | None = None,
) -> None:
    """The checkpoint folder, written whole beside it and swapped in; `extra_files` (name -> a file of the
    run's) are copied into it."""
    files.clean_orphans(folder)
    tmp = files.temp_dir(folder)
    try:
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
        save_model(model, str(tmp / WEIGHTS))
        meta.weights = files.sha256(tmp / WEIGHTS)
        save_backbone_files(model.backbone, tokenizer, tmp / "backbone")
        OmegaConf.save(raw_cfg, tmp / "config.yaml", resolve=True)
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2))
        files.apply_umask_tree(tmp)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- reading: damaged files are a UserError

# what a user does about a damaged file, ending its one-line error
_TRAIN_FIX = "re-run `elastic train` or restore it"
_CALIBRATION_FIX = "re-run `elastic calibrate`"
_CASCADE_FIX = "re-run `elastic train` for the cascade"


def _conforms(value: Any, tp: Any) -> bool:
    """Whether a JSON value is of a dataclass field's declared type (the few kinds these files hold)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if origin is Union or origin is UnionType:  # Optional[X] or X | None
        return any(_conforms(value, arg) for arg in args)
    if tp in (int, float):  # JSON has one kind of number; true and false are not numbers
        return isinstance(value, (int, tp)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if get_origin(tp) is not None else getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields_problem(cls: type, data: dict[str, Any], prefix: str = "") -> str | None:
    """What keeps `data` from being the fields of dataclass `cls` (an unknown, missing or wrongly
    typed field), or None."""
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)
    unknown = [key for key in data if key not in {f.name for f in fields}]
    if unknown:
        return f"unknown field {prefix}{unknown[0]}"
    for f in fields:
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f"no field {prefix}{f.name}"
        elif not _conforms(data[f.name], hints[f.name]):
            return f"{prefix}{f.name} is {_show(data[f.name])}, not {_type_name(hints[f.name])}"
    return None


def _meta_problem(data: dict[str, Any]) -> str | None:
    """What keeps meta.json's `data` from describing a model that can be built, or None."""
    problem = _fields_problem(CheckpointMeta, data)
    if problem is not None:
        return problem
    head = {"pooling": data["pooling"], **data.get("head", {})}
    problem = _fields_problem(HeadSpec, head, "head.")
    if problem is not None:
        return problem
    spec = HeadSpec(**head)
    layers = data["exit_layers"]
    if not layers or layers[0] < 1 or any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        return f"exit_layers is {_show(layers)}, not rising layer numbers from 1"
    if data["num_labels"] < 1 or data["max_seq_length"] < 1:
        return f"num_labels is {data['num_labels']}, max_seq_length {data['max_seq_length']}"
    if data["family"] not in FAMILIES:
        return f"family {data['family']!r} is not one of {', '.join(FAMILIES)}"
    if spec.kind not in HEADS or spec.pooling not in Pooling.__members__:
        return f"head kind {spec.kind!r} with {spec.pooling!r} pooling is not a head elastic builds"
    problem = HEADS.get(spec.kind).spec_problem(spec)
    if problem is not None:
        return problem
    if not 0.0 <= spec.dropout < 1.0:
        return f"head.dropout is {spec.dropout}"
    if data.get("shape", "multi_exit") not in MODEL_SHAPES:
        return f"shape {data['shape']!r} is not one of {', '.join(MODEL_SHAPES)}"
    return None


def read_meta(folder: Path) -> CheckpointMeta:
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise UserError(
            f"no checkpoint in {folder}: run `elastic train` with the same method/backbone/task/seed first, "
            "or point ckpt= at a checkpoint folder"
        )
    path = folder / META
    data = read_json_object(path, _TRAIN_FIX)
    version = data.get("format", 1)  # checkpoints written before the field existed are format 1
    if version != FORMAT:
        raise UserError(
            f"the checkpoint in {folder} has format {version}, this elastic reads format {FORMAT}: "
            "re-run `elastic train` (or use the elastic version that wrote it)"
        )
    problem = _meta_problem(data)
    if problem is not None:
        raise UserError(f"{path} is corrupt ({problem}): {_TRAIN_FIX}")
    return CheckpointMeta(**data)


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[.*?\])\)"
)
_KEY_MISMATCH = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: \"?([^\",\s]+)")


def _misfit(folder: Path, message: str) -> str:
    """One line for load_state_dict's report that the weights do not fit the model built from the
    checkpoint's meta.json and backbone/config.json: which tensor, and which file describes it."""
    size = _SIZE_MISMATCH.search(message)
    keys = _KEY_MISMATCH.search(message)
    if size is not None:
        key, theirs, ours = size.groups()
        what = f"size mismatch for {key}: {theirs} in the weights, {ours} in the model"
    elif keys is not None:
        key = keys.group(2)
        what = f"{'a weight the model lacks' if keys.group(1) == 'Unexpected' else 'no weight'} for {key}"
    else:
        key, what = "", first_line(RuntimeError(message.split(":", 1)[-1]))
    culprit = "backbone/config.json" if key.startswith("backbone.") else META
    return (
        f"the weights in {folder / WEIGHTS} do not fit the model that {folder / culprit} describes "
        f"({what}): restore {culprit} or re-run `elastic train`"
    )


def _load_weights(model: MultiExitModel, folder: Path, device: torch.device) -> None:
    path = folder / WEIGHTS
    try:
        load_model(model, str(path), device=str(device))
    except SafetensorError as err:
        raise UserError(f"{path} is corrupt or truncated ({first_line(err)}): {_TRAIN_FIX}") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or first_line(err)}): {_TRAIN_FIX}") from None
    except RuntimeError as err:  # only load_state_dict's report of names or shapes that differ
        if not str(err).startswith("Error(s) in loading state_dict"):
            raise
        raise UserError(_misfit(folder, str(err))) from None


def load(folder: Path, device: torch.device) -> tuple[MultiExitModel, Any, CheckpointMeta]:
    meta = read_meta(folder)
    adapter, tokenizer = backbone_from_folder(folder / "backbone", meta.family)
    if adapter.num_layers != meta.exit_layers[-1]:
        raise UserError(
            f"{folder / 'backbone' / 'config.json'} gives the backbone {adapter.num_layers} layers, "
            f"{folder / META} ends its exits at layer {meta.exit_layers[-1]}: restore backbone/config.json "
            "or re-run `elastic train`"
        )
    model = MODEL_SHAPES.get(meta.shape)(
        adapter,
        meta.exit_layers,
        meta.num_labels,
        meta.head_spec(),
        use_pretrained_pooler=False,
        lte=meta.lte,
        **meta.shape_settings,
    )
    _load_weights(model, folder, device)
    model.to(device).eval()
    return model, tokenizer, meta


def weights_fingerprint(folder: Path) -> str:
    """The content hash of the weights, recorded in meta.json when they were saved (computed here for a
    checkpoint written before that): keys the logits cache and ties a cascade to its models."""
    recorded = read_meta(folder).weights
    return recorded or files.sha256(folder / WEIGHTS)


def fingerprint_matches(folder: Path, recorded: str) -> bool:
    """Whether the weights in `folder` are the ones `recorded` names (also the size-mtime fingerprints
    that cascades assembled before content hashes recorded)."""
    if re.fullmatch(r"\d+-\d+", recorded):
        st = (folder / WEIGHTS).stat()
        return recorded == f"{st.st_size}-{st.st_mtime_ns}"
    return weights_fingerprint(folder) == recorded


def write_json_atomic(path: Path, obj: Any) -> None:
    files.write_text_atomic(path, json.dumps(obj, indent=2))


# ---------------------------------------------------------------- calibration.json

# bumped when calibration.json changes so that an older elastic would misread it; a file without the
# field was written before it existed and is version 1
CALIBRATION_VERSION = 1

# what evaluate reads of a calibration (the other keys are a record of how it was chosen)
_CALIBRATION_KEYS: dict[str, Any] = {
    "rule": str,
    "threshold": float,
    "temperatures": list[float],
    "exits": list[str],
    "rule_settings": dict[str, Any] | None,
}


@dataclass(kw_only=True)
class CalibrationFile:
    """calibration.json, written by `elastic calibrate` beside the checkpoint and read by `evaluate`:
    `save` and `load` are the only code that writes or reads the file.

    evaluate uses rule, rule_settings, threshold, temperatures and exits, which `load` checks; the other
    fields are a record of how the threshold was chosen, read as the file has them (unchecked, as
    evaluate never uses them). Keys this elastic does not know are kept in `extra`.
    """

    # in the order calibrate has always written them; a record field missing from a file written
    # before it existed reads as its default
    version: int = CALIBRATION_VERSION
    rule: str
    rule_settings: dict[str, Any] | None = None  # None: written before rule settings were recorded
    threshold: float
    temperatures: list[float]  # one per exit, in the order of `exits`
    exit_layers: list[int] = field(default_factory=list)  # record
    exits: list[str]  # the exits' names (L<layer>, or a cascade's model names)
    target: str = ""  # record, as all below
    tolerance: float = math.nan
    speedup_target: float = math.nan
    target_met: bool = False
    score_name: str = ""  # accuracy, or pearson for a regression
    reference_score: float = math.nan  # the last exit's score on the calibration split
    score: float = math.nan  # the score at the chosen threshold
    layer_speedup: float = math.nan
    flops_speedup: float = math.nan
    super_fraction: float = math.nan
    speed_column: str = ""
    n_examples: int = 0
    weights: str = ""  # fingerprint of the weights it was calibrated on
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of calibration.json: the fields in order, then the `extra` keys."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> CalibrationFile:
        """The calibration in `data`, read from `path`; a damaged or newer file is a one-line UserError."""
        version = data.get("version", 1)  # calibrations written before the field existed are version 1
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(
                f"{path} is corrupt (version is {_show(version)}, not a whole number from 1): {_CALIBRATION_FIX}"
            )
        if version > CALIBRATION_VERSION:
            raise UserError(
                f"{path} is a calibration of version {version}, this elastic reads version "
                f"{CALIBRATION_VERSION}: {_CALIBRATION_FIX} (or use the elastic version that wrote it)"
            )
        problem = _calibration_problem(data)
        if problem is not None:
            raise UserError(f"{path} is corrupt ({problem}): {_CALIBRATION_FIX}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            **{key: value for key, value in data.items() if key in known},
            extra={key: value for key, value in data.items() if key not in known},
        )

    def save(self, folder: Path) -> None:
        """Write (atomically) calibration.json into the checkpoint folder `folder`."""
        write_json_atomic(folder / CALIBRATION, self.to_json())

    @classmethod
    def load(cls, folder: Path) -> CalibrationFile | None:
        """calibration.json of the checkpoint in `folder`, None when it has none (not calibrated yet)."""
        path = folder / CALIBRATION
        if not path.exists():
            return None
        return cls.from_json(read_json_object(path, _CALIBRATION_FIX), path)


def _calibration_problem(data: dict[str, Any]) -> str | None:
    for key, tp in _CALIBRATION_KEYS.items():
        if key not in data:
            if key == "rule_settings":  # calibrations written before rule settings were recorded
                continue
            return f"no {key}"
        if not _conforms(data[key], tp):
            return f"{key} is {_show(data[key])}, not {_type_name(tp)}"
    temperatures, names = data["temperatures"], data["exits"]
    if len(temperatures) != len(names):
        return f"{len(temperatures)} temperatures for {len(names)} exits"
    if not all(t > 0 and math.isfinite(t) for t in temperatures):
        return f"temperatures {_show(temperatures)} are not all positive"
    return None


def read_calibration(folder: Path) -> dict[str, Any] | None:
    """calibration.json of the checkpoint in `folder` as its JSON object (read and checked by
    `CalibrationFile.load`), None when it has none."""
    calib = CalibrationFile.load(folder)
    return None if calib is None else calib.to_json()


# ---------------------------------------------------------------- cascades of separate models

CASCADE = "cascade.json"
_MEMBER_KEYS = ("name", "folder", "weights")


@dataclass(frozen=True)
class CascadeMember:
    """One model of a cascade, as cascade.json lists it."""

    name: str  # how its exit is labelled: "swift", "super", "L4"
    folder: str  # its checkpoint folder: relative to the cascade's folder when inside it, else absolute
    weights: str  # the fingerprint of its weights when the cascade was assembled

    @classmethod
    def of(cls, entry: CascadeMember | Mapping[str, str]) -> CascadeMember:
        """The member an entry of cascade.json (a {"name", "folder", "weights"} object) describes; keys
        besides those three are ignored, as they always were."""
        if isinstance(entry, CascadeMember):
            return entry
        return cls(**{key: entry[key] for key in _MEMBER_KEYS})

    def path(self, cascade_folder: Path) -> Path:
        """Its checkpoint folder, for a cascade in `cascade_folder`."""
        path = Path(self.folder).expanduser()
        return path if path.is_absolute() else cascade_folder / path


@dataclass
class CascadeMeta:
    """A cascade's folder: cascade.json lists its models, smallest first. A model trained with the cascade
    lives in members/<name>/ (a checkpoint folder as above); a reused one is referenced where it is.
    `save` and `load` are the only code that writes or reads cascade.json.

    The members may be given as CascadeMember or as the {"name", "folder", "weights"} dicts cascade.json
    holds (what the training code builds); they are CascadeMember once made.
    """

    method: str
    task: str
    seed: int
    num_labels: int
    label_names: list[str]
    members: list[CascadeMember]  # smallest first (cascade.json's {"name", "folder", "weights"} objects too)
    # the file's version, the checkpoints' FORMAT; a cascade.json without it is read as the current one
    format: int = FORMAT
    train_run_id: str = ""  # the MLflow run that trained it ("" without tracking, or in older cascades)

    def __post_init__(self) -> None:
        self.members = [CascadeMember.of(entry) for entry in self.members]

    def save(self, folder: Path) -> None:
        """Write (atomically) cascade.json into `folder`."""
        write_json_atomic(folder / CASCADE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> CascadeMeta:
        """cascade.json of the cascade in `folder`, its members' checkpoints checked to be the ones it was
        assembled from; a damaged file, another format or a changed member is a one-line UserError."""
        path = folder / CASCADE
        data = read_json_object(path, _CASCADE_FIX)
        version = data.get("format", FORMAT)
        if version != FORMAT:
            raise UserError(
                f"the cascade in {folder} has format {version}, this elastic reads format {FORMAT}: "
                "re-run `elastic train`"
            )
        problem = _cascade_problem(data)
        if problem is not None:
            raise UserError(f"{path} is corrupt ({problem}): {_CASCADE_FIX}")
        meta = cls(**data)
        for entry in meta.members:
            member = entry.path(folder)
            read_meta(member)
            if not fingerprint_matches(member, entry.weights):
                raise UserError(
                    f"the {entry.name} model of the cascade in {folder} ({member}) was rewritten after the "
                    "cascade was assembled: re-run `elastic train` for the cascade"
                )
        return meta


def is_cascade(folder: Path) -> bool:
    return (folder / CASCADE).is_file()


def save_cascade(folder: Path, work: Path, raw_cfg: DictConfig, meta: CascadeMeta) -> None:
    """Finish the cascade written into `work` (its members/ already saved there) and swap it in. A
    failure leaves `work` as it is: its trained models are what a resumed run goes on from."""
    OmegaConf.save(raw_cfg, work / "config.yaml", resolve=True)
    meta.save(work)
    files.apply_umask_tree(work)
    _swap_in(work, folder)


def _cascade_problem(data: dict[str, Any]) -> str | None:
    # the members are checked below, as the JSON objects the file holds
    problem = _fields_problem(CascadeMeta, {**data, "members": []} if "members" in data else data)
    if problem is not None:
        return problem
    members = data["members"]
    if not _conforms(members, list[dict[str, str]]):
        return f"members is {_show(members)}, not {_type_name(list[dict[str, str]])}"
    if not members:
        return "no members"
    for i, entry in enumerate(members):
        missing = [key for key in _MEMBER_KEYS if key not in entry]
        if missing:
            return f"members[{i}] has no {missing[0]}"
    return None
