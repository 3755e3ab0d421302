"""Load a backbone adapter and its tokenizer: from a hub id, a local model folder, or the backbone files of
a checkpoint (a tiny random model is built by elastic_cli/models/tiny.py).

Checkpoints store only what the hub cannot give back offline: `save_backbone_files` writes the
config and the tokenizer, the caller writes the whole multi-exit state dict, and
`backbone_from_folder` rebuilds the architecture from those files without touching the hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from rich.markup import escape
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from elastic_cli.config import BackboneConfig
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import (
    FAMILIES,
    BackboneAdapter,
    attention_implementation,
    hf_model_class,
    hf_model_from_config,
    make_adapter,
)
from elastic_cli.models.json_files import first_line, read_json_object
from elastic_cli.models.tiny import build_tiny
from elastic_cli.progress import console

HUB_HINT = (
    "point backbone.path at a local model folder, or use backbone=minilm-l6 / mpnet-base with "
    "ELASTIC_MODELS set (see ../shared/assets/get-models.sh)"
)


def build_backbone(
    cfg: BackboneConfig, train_texts: Sequence[str] | None = None, seed: int = 0
) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    """The adapter (HF model in eval mode) and its tokenizer for `cfg`.

    `cfg.tiny` set: a random model with those dimensions and a WordPiece tokenizer trained on
    `train_texts`, both deterministic given `seed`. Otherwise `cfg.path` is a local folder or a hub id.
    """
    FAMILIES.get(cfg.family)  # an unknown family is a UserError naming the known ones
    if cfg.tiny is not None:
        if not train_texts:
            raise UserError("a tiny backbone trains its tokenizer on the task's texts: none were given")
        return build_tiny(cfg.family, cfg.tiny, train_texts, seed)
    return _load_pretrained(cfg.family, cfg.path)


def save_backbone_files(adapter: BackboneAdapter, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write config.json and the tokenizer files (not the weights: the caller saves its state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    adapter.hf_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# what to do about a checkpoint's backbone/ folder whose files are damaged or edited
CHECKPOINT_BACKBONE_FIX = "restore the checkpoint's backbone/ files or re-run `elastic train`"
# the files `save_backbone_files` writes that are JSON (tokenizer_config.json always; the others when present)
_BACKBONE_JSON_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")


def backbone_from_folder(folder: Path, family: str) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    """The architecture saved by `save_backbone_files`, with random weights, and its tokenizer.

    Never reaches the hub; the caller loads its own state dict into the adapter afterwards. Damaged or
    edited files are a UserError naming them (a checkpoint's files: `CHECKPOINT_BACKBONE_FIX`).
    """
    folder = Path(folder).expanduser()
    fix = CHECKPOINT_BACKBONE_FIX
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: {fix}")
    for name in _BACKBONE_JSON_FILES:  # invalid JSON named here, not deep inside transformers
        if name == "config.json" or (folder / name).exists():
            read_json_object(folder / name, fix)
    # without these transformers may quietly build a tokenizer of a few special tokens
    if not (folder / "tokenizer_config.json").is_file():
        raise UserError(f"{folder} has no tokenizer_config.json, so no tokenizer: {fix}")
    vocabularies = [folder / "tokenizer.json", *folder.glob("vocab.*"), *folder.glob("*.model")]
    if not any(path.is_file() for path in vocabularies):
        raise UserError(f"{folder} has no tokenizer vocabulary (tokenizer.json, vocab.txt, ...): {fix}")
    # the config's values decide the architecture: a bad value fails in transformers, reading or building
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = hf_model_from_config(config)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as err:
        raise UserError(
            f"{folder / 'config.json'} does not describe a backbone ({first_line(err)}): {fix}"
        ) from None
    adapter_class = FAMILIES.get(family) if family in FAMILIES else None  # make_adapter names a bad family
    if adapter_class is not None and config.model_type not in adapter_class.model_types:
        raise UserError(
            f"{folder / 'config.json'} holds a {config.model_type!r} model, not one of the checkpoint's "
            f"family {family} ({', '.join(adapter_class.model_types)}): {fix}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise UserError(
            f"cannot load the tokenizer in {folder} ({type(err).__name__}: {first_line(err)}): {fix}"
        ) from None
    if tokenizer.pad_token_id is None:
        raise UserError(f"the tokenizer in {folder} has no padding token: {fix}")
    return make_adapter(family, model.eval()), tokenizer


# ---------------------------------------------------------------- pretrained backbones


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import: read the variables again for a later change
    import huggingface_hub.constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return huggingface_hub.constants.HF_HUB_OFFLINE or any(
        flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags
    )


def _resolve_source(path: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder)."""
    if not path.strip():
        raise UserError("backbone.path is empty: set it to a local model folder or a Hugging Face hub id")
    expanded = Path(os.path.expandvars(path)).expanduser()
    if expanded.is_dir():
        return str(expanded), True
    # a hub id is "name" or "owner/name"; anything else is meant as a folder
    looks_like_folder = path.startswith(("/", "~", ".", "$")) or path.count("/") > 1 or expanded.exists()
    if looks_like_folder:
        raise UserError(
            f"backbone.path={path!r}: no such folder ({expanded}); point it at a local model folder "
            "(the real-model backbones read ELASTIC_MODELS, see ../shared/assets/get-models.sh)"
        )
    return path, False


def _hub_error(model_id: str, err: Exception) -> UserError:
    if "not a valid model identifier" in str(err):
        return UserError(f"'{model_id}' is not a model on the Hugging Face hub; {HUB_HINT}")
    return UserError(f"cannot load '{model_id}' from the Hugging Face hub (offline?); {HUB_HINT}")


def _load_pretrained(family: str, path: str) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    source, is_local = _resolve_source(path)
    local_only = is_local or _hub_offline()
    if is_local:
        config_file = Path(source) / "config.json"
        if not config_file.is_file():
            raise UserError(f"backbone.path={path!r}: {source} has no config.json, it is not a model folder")
    else:
        try:
            resolved = cached_file(source, "config.json", local_files_only=local_only)
        except OSError as err:
            raise _hub_error(source, err) from None
        if resolved is None:
            raise UserError(f"'{source}' on the Hugging Face hub has no config.json; {HUB_HINT}")
        config_file = Path(resolved)
    fix = (
        "point backbone.path at an intact model folder"
        if is_local
        else "delete the model from the Hugging Face cache and download it again"
    )
    model_type = read_json_object(config_file, fix).get("model_type")
    try:
        if model_type not in CONFIG_MAPPING:
            if not FAMILIES.get(family).loads_unknown_models_as_bert:
                able = [name for name, known in FAMILIES.items() if known.loads_unknown_models_as_bert]
                raise UserError(
                    f"backbone.path={path!r} holds a {model_type!r} model, unknown to transformers; "
                    f"only family={'/'.join(able)} can load such a model, as a BERT"
                )
            model, pooler_loaded = _load_as_bert(source, config_file, local_only, fix)
            tokenizer = BertTokenizer.from_pretrained(source, local_files_only=local_only)
        else:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            model_class = hf_model_class(config)
            # with output_loading_info, from_pretrained returns (model, info); transformers' own report of
            # the keys is held back and said here instead (`report_keys`)
            with quiet_loading():
                loaded: Any = model_class.from_pretrained(
                    source,
                    config=config,
                    attn_implementation=attention_implementation(model_class),
                    dtype=torch.float32,
                    local_files_only=local_only,
                    output_loading_info=True,
                )
            model, info = loaded
            missing_keys = sorted(info["missing_keys"])
            pooler_loaded = not any(key.startswith("pooler.") for key in missing_keys)
            report_keys(source, missing_keys, sorted(info["unexpected_keys"]))
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:  # a damaged file
        raise UserError(
            f"backbone.path={path!r}: a file of the model in {source} is corrupt ({first_line(err)}): {fix}"
        ) from None
    except OSError as err:
        if is_local:
            raise UserError(
                f"backbone.path={path!r}: cannot load the model in {source}: {first_line(err, 10_000)}"
            ) from None
        raise _hub_error(source, err) from None
    adapter = make_adapter(family, model.eval())
    adapter.has_pretrained_pooler = adapter.has_pretrained_pooler and pooler_loaded
    return adapter, tokenizer


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' load report (a table of MISSING / UNEXPECTED keys, logged as a warning by
    `log_state_dict_report`) held back, every other log record of from_pretrained let through; and off a
    terminal its "Loading weights" bar too, which a log file gets as one line of carriage returns."""
    logger = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return record.funcName != "log_state_dict_report"

    bar = hf_logging.is_progress_bar_enabled()
    logger.addFilter(keep)
    if not console.is_terminal:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeFilter(keep)
        if bar:
            hf_logging.enable_progress_bar()


def report_keys(source: str, missing: Sequence[str], unexpected: Sequence[str]) -> None:
    """What transformers' load report says, in a line each: pooler weights, which checkpoints often lack
    (sentence-transformers folders, `add_pooling_layer=False`) or carry beyond the config, are a note;
    any other key is a warning."""

    def split(keys: Sequence[str]) -> tuple[list[str], list[str]]:
        return [k for k in keys if k.startswith("pooler.")], [k for k in keys if not k.startswith("pooler.")]

    source = escape(source)  # a folder's name is not rich markup
    pooler_missing, other_missing = split(missing)
    pooler_unused, other_unused = split(unexpected)
    if pooler_missing:
        console.print(
            f"note: {source} has no pooler weights ({_names(pooler_missing)}): "
            "the exit heads cannot start from a pretrained pooler",
            highlight=False,
        )
    if pooler_unused:
        console.print(
            f"note: the checkpoint's pooler weights ({_names(pooler_unused)}) are not used by this backbone config",
            highlight=False,
        )
    if other_missing:
        console.print(
            f"[yellow]warning:[/] {len(other_missing)} backbone weights are missing from {source} "
            f"and start random: {_names(other_missing)}",
            highlight=False,
        )
    if other_unused:
        console.print(
            f"[yellow]warning:[/] {source} holds {len(other_unused)} weights this backbone does not "
            f"use: {_names(other_unused)}",
            highlight=False,
        )


def _names(keys: Sequence[str], shown: int = 4) -> str:
    """`pooler.dense.*` for the parameters of one module, else the first few names and how many more."""
    modules = {key.rpartition(".")[0] for key in keys}
    if len(keys) > 1 and len(modules) == 1:
        return f"{modules.pop()}.*"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


# ElasticBERT (fnlp/elasticbert-base) declares model_type "elasticbert", which transformers does not
# know. Its encoder is BERT's (same module names under the prefix "elasticbert."), with one pooler per
# exit layer in "encoder.pooler.<i>". This mapping is written from the fastnlp/ElasticBERT modeling
# code and could NOT be verified offline against the real checkpoint: any backbone key it leaves
# unmapped is reported as an error rather than silently left random.
def _load_as_bert(source: str, config_file: Path, local_only: bool, fix: str) -> tuple[BertModel, bool]:
    raw = read_json_object(config_file, fix)
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        raw.pop(key, None)
    config = BertConfig(**raw)
    model = BertModel._from_config(config, attn_implementation="sdpa")
    weights = _read_checkpoint(source, local_only, fix)
    state = bert_names_from_elasticbert(weights, config.num_hidden_layers)
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing_backbone = [key for key in missing if not key.startswith("pooler.")]
    if missing_backbone:
        raise UserError(
            f"cannot map the weights of '{source}' onto BERT: {len(missing_backbone)} missing, "
            f"e.g. {missing_backbone[0]}; use a model that transformers knows"
        )
    return model, not any(key.startswith("pooler.") for key in missing)


def bert_names_from_elasticbert(weights: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """ElasticBERT parameter names mapped onto BertModel's; the last layer's pooler becomes BERT's pooler."""
    last_pooler = f"encoder.pooler.{num_layers - 1}."
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        for prefix in ("elasticbert.", "bert."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        # TF-era checkpoints name LayerNorm parameters gamma/beta
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name.startswith(last_pooler):
            mapped["pooler." + name[len(last_pooler) :]] = tensor
        elif name.startswith(("embeddings.", "encoder.layer.")) and not name.endswith("position_ids"):
            mapped[name] = tensor
    return mapped


def _read_checkpoint(source: str, local_only: bool, fix: str) -> dict[str, torch.Tensor]:
    for filename in ("model.safetensors", "pytorch_model.bin"):
        resolved = cached_file(
            source, filename, local_files_only=local_only, _raise_exceptions_for_missing_entries=False
        )
        if resolved is None:
            continue
        try:
            if filename.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(resolved)
            return torch.load(resolved, map_location="cpu", weights_only=True)
        except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            # a truncated or damaged file (torch reports a bad zip archive as a RuntimeError)
            raise UserError(f"{resolved} is corrupt or truncated ({first_line(err)}): {fix}") from None
    raise UserError(f"'{source}' has neither model.safetensors nor pytorch_model.bin")
