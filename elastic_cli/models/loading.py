"""Build a backbone adapter and its tokenizer: a tiny random model, a local folder, or a hub id.

Checkpoints store only what the hub cannot give back offline: `save_backbone_files` writes the
config and the tokenizer, the caller writes the whole multi-exit state dict, and
`backbone_from_folder` rebuilds the architecture from those files without touching the hub.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AlbertConfig,
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    DebertaV2Config,
    DistilBertConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import cached_file

from elastic_cli.config import BackboneConfig, TinyBackboneConfig
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import ADAPTERS, BackboneAdapter, make_adapter

HUB_HINT = (
    "point backbone.path at a local model folder, or use backbone=minilm-l6 / mpnet-base with "
    "ELASTIC_MODELS set (see ../shared/assets/get-models.sh)"
)

# Special tokens of the tiny WordPiece tokenizers, in id order. MPNet's embeddings take padding_idx=1
# as fixed (positions count from it), so its tiny vocabulary puts [PAD] at 1, as the real MPNet
# vocabulary does (<s>=0 <pad>=1 </s>=2 <unk>=3). The others pad with 0, as their real vocabularies
# do (ALBERT <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4; DeBERTa-v3 [PAD]=0; DistilBERT is BERT's).
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_SPECIAL_TOKENS = {
    "bert": _BERT_SPECIALS,
    "mpnet": ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
    "albert": _BERT_SPECIALS,
    "deberta": _BERT_SPECIALS,
    "distilbert": _BERT_SPECIALS,
}
# families whose tiny model has segment (token type) embeddings: their tokenizer returns token_type_ids.
# MPNet and DistilBERT have none; the tiny DeBERTa is configured like v3, with type_vocab_size 0.
TINY_SEGMENT_FAMILIES = ("bert", "albert")
# MPNet and RoBERTa-style positions start at padding_idx + 1: a sequence of T tokens needs T + 2 rows
MPNET_POSITION_OFFSET = 2


def build_backbone(
    cfg: BackboneConfig, train_texts: Sequence[str] | None = None, seed: int = 0
) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    """The adapter (HF model in eval mode) and its tokenizer for `cfg`.

    `cfg.tiny` set: a random model with those dimensions and a WordPiece tokenizer trained on
    `train_texts`, both deterministic given `seed`. Otherwise `cfg.path` is a local folder or a hub id.
    """
    if cfg.family not in ADAPTERS:
        raise UserError(f"backbone.family={cfg.family!r} is not one of {', '.join(ADAPTERS)}")
    if cfg.tiny is not None:
        if not train_texts:
            raise UserError("a tiny backbone trains its tokenizer on the task's texts: none were given")
        return _build_tiny(cfg.family, cfg.tiny, train_texts, seed)
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


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (with the next when it ends in a colon; its type's name
    when it has none), cut to `limit` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    line = lines.pop(0)
    while line.endswith(":") and lines:
        line += " " + lines.pop(0)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def read_json(path: Path, what_to_do: str) -> Any:
    """The JSON value in `path`. A missing, unreadable or invalid file is a UserError that names it and
    ends with `what_to_do`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what_to_do}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON (not UTF-8 text): {what_to_do}") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or first_line(err)}): {what_to_do}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}): {what_to_do}") from None


def read_json_object(path: Path, what_to_do: str) -> dict[str, Any]:
    """`read_json` of a file that must hold a JSON object."""
    value = read_json(path, what_to_do)
    if not isinstance(value, dict):
        raise UserError(f"{path} is corrupt (it holds {_json_kind(value)}, not a JSON object): {what_to_do}")
    return value


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
        model = _model_from_config(config)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as err:
        raise UserError(
            f"{folder / 'config.json'} does not describe a backbone ({first_line(err)}): {fix}"
        ) from None
    adapter_class = ADAPTERS.get(family)
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


# ---------------------------------------------------------------- tiny random backbones


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int, family: str = "bert", model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A lowercasing BERT-style WordPiece tokenizer whose vocabulary is learned from `texts`.

    Pairs get token_type_ids 1 on the second segment (families with segment embeddings). The same
    texts always give the same vocabulary and ids.
    """
    special = TINY_SPECIAL_TOKENS[family]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(word_counts, vocab_size, special)

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    # no segment embeddings (MPNet, DistilBERT, the tiny DeBERTa): no token_type_ids
    input_names = ["input_ids", "attention_mask"]
    if family in TINY_SEGMENT_FAMILIES:
        input_names.insert(1, "token_type_ids")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=input_names,
    )


def learn_wordpiece_vocab(word_counts: Counter[str], vocab_size: int, special: Sequence[str]) -> list[str]:
    """Specials, the alphabet (as word starts and "##" continuations), then BPE merges in order.

    The `tokenizers` WordPiece trainer breaks ties between equally frequent pairs differently from
    run to run, so the merges are learned here with a fixed tie-break (count, then the pair itself).
    """
    char_counts: Counter[str] = Counter()
    for word, count in word_counts.items():
        for char in word:
            char_counts[char] += count
    if vocab_size < len(special) + 2:
        raise UserError(
            f"backbone.tiny.vocab_size={vocab_size} leaves no room for a character beside the "
            f"{len(special)} special tokens: raise it"
        )
    # cap the alphabet so that specials and both alphabet forms fill at most half the budget (the
    # rarest characters become [UNK]), leaving the rest for merges
    limit = max(1, (vocab_size - len(special)) // 4)
    alphabet = sorted(sorted(char_counts), key=lambda char: -char_counts[char])[:limit]
    vocab = [*special, *sorted(alphabet), *sorted(f"##{char}" for char in alphabet)]
    known = set(vocab)
    # words with a character outside the alphabet become [UNK] anyway: they take no part in merges
    kept = set(alphabet)
    words = [
        ([word[0], *(f"##{char}" for char in word[1:])], count)
        for word, count in sorted(word_counts.items())
        if set(word) <= kept
    ]
    pair_counts: Counter[tuple[str, str]] = Counter()
    words_with_pair: dict[tuple[str, str], set[int]] = defaultdict(set)
    for index, (symbols, count) in enumerate(words):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += count
            words_with_pair[pair].add(index)

    while len(vocab) < vocab_size and pair_counts:
        best = min(pair_counts.items(), key=lambda item: (-item[1], item[0]))[0]
        merged = best[0] + best[1].removeprefix("##")
        touched: set[tuple[str, str]] = set()
        for index in words_with_pair.pop(best):
            symbols, count = words[index]
            for pair in zip(symbols, symbols[1:], strict=False):
                pair_counts[pair] -= count
                words_with_pair[pair].discard(index)
                touched.add(pair)
            symbols = _merge_pair(symbols, best, merged)
            words[index] = (symbols, count)
            for pair in zip(symbols, symbols[1:], strict=False):
                pair_counts[pair] += count
                words_with_pair[pair].add(index)
        for pair in touched | {best}:
            if pair_counts.get(pair, 0) <= 0:
                pair_counts.pop(pair, None)
                words_with_pair.pop(pair, None)
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab


def _merge_pair(symbols: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def tiny_config(
    family: str, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase
) -> PretrainedConfig:
    """The HF config of a tiny `family` model with the dimensions of `tiny` and the tokenizer's special ids."""
    dims = {
        "vocab_size": tiny.vocab_size,
        "hidden_size": tiny.hidden_size,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "intermediate_size": tiny.intermediate_size,
        "pad_token_id": tokenizer.pad_token_id,
    }
    positions = tiny.max_position_embeddings
    if family == "mpnet":
        return MPNetConfig(
            **dims,
            max_position_embeddings=positions + MPNET_POSITION_OFFSET,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    if family == "albert":
        # shaped like albert-base-v2: one shared layer group, embeddings narrower than the hidden size
        return AlbertConfig(
            **dims,
            embedding_size=max(1, tiny.hidden_size // 2),
            num_hidden_groups=1,
            inner_group_num=1,
            max_position_embeddings=positions,
            type_vocab_size=2,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    if family == "deberta":
        # shaped like deberta-v3-base (which has 256 buckets for 512 positions); these three settings
        # are not declared fields of DebertaV2Config, which keeps them as extra attributes
        undeclared: dict[str, Any] = {
            "position_buckets": max(1, positions // 2),
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
        }
        return DebertaV2Config(
            **dims,
            **undeclared,
            max_position_embeddings=positions,
            relative_attention=True,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
        )
    if family == "distilbert":
        return DistilBertConfig(
            vocab_size=tiny.vocab_size,
            dim=tiny.hidden_size,
            n_layers=tiny.num_layers,
            n_heads=tiny.num_heads,
            hidden_dim=tiny.intermediate_size,
            max_position_embeddings=positions,
            pad_token_id=tokenizer.pad_token_id,
        )
    return BertConfig(**dims, max_position_embeddings=positions, type_vocab_size=2)


def _build_tiny(
    family: str, tiny: TinyBackboneConfig, train_texts: Sequence[str], seed: int
) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    tokenizer = train_wordpiece_tokenizer(train_texts, tiny.vocab_size, family, tiny.max_position_embeddings)
    if family == "mpnet" and tokenizer.pad_token_id != 1:
        raise AssertionError("MPNet needs [PAD] at id 1")  # guaranteed by TINY_SPECIAL_TOKENS
    config = tiny_config(family, tiny, tokenizer)
    # a private RNG stream: the same seed gives the same weights, and the caller's RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_from_config(config)
    return make_adapter(family, model.eval()), tokenizer


# ---------------------------------------------------------------- pretrained backbones


def _attention_implementation(model_class: type[PreTrainedModel]) -> str:
    # sdpa where the architecture has it (BERT, ALBERT, DistilBERT); MPNet's and DeBERTa's attention is
    # written out in eager form only
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _base_model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class AutoModel builds for `config` (BertModel, MPNetModel, ...)."""
    return cast(type[PreTrainedModel], MODEL_MAPPING[type(config)])


def _model_from_config(config: PretrainedConfig) -> PreTrainedModel:
    model_class = _base_model_class(config)
    return model_class._from_config(config, attn_implementation=_attention_implementation(model_class))


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
            if family != "bert":
                raise UserError(
                    f"backbone.path={path!r} holds a {model_type!r} model, unknown to transformers; "
                    "only family=bert can load such a model, as a BERT"
                )
            model, pooler_loaded = _load_as_bert(source, config_file, local_only, fix)
            tokenizer = BertTokenizer.from_pretrained(source, local_files_only=local_only)
        else:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            model_class = _base_model_class(config)
            # with output_loading_info, from_pretrained returns (model, info)
            loaded: Any = model_class.from_pretrained(
                source,
                config=config,
                attn_implementation=_attention_implementation(model_class),
                dtype=torch.float32,
                local_files_only=local_only,
                output_loading_info=True,
            )
            model, info = loaded
            missing_keys: list[str] = info["missing_keys"]
            pooler_loaded = not any(key.startswith("pooler.") for key in missing_keys)
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
