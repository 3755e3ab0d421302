"""Tiny random backbones (backbone.tiny): a WordPiece tokenizer learned from the task's texts and a
random model of the family's tiny config, both deterministic given the texts and the seed.

What differs per family (the config, the tokenizer's special tokens, segment embeddings) is declared
on its adapter class (elastic_cli/models/adapters.py).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from elastic_cli.config import TinyBackboneConfig
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import FAMILIES, BackboneAdapter, hf_model_from_config, make_adapter


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int, family: str = "bert", model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A lowercasing BERT-style WordPiece tokenizer whose vocabulary is learned from `texts`, with the
    special tokens of `family`'s tiny model.

    Pairs get token_type_ids 1 on the second segment (families with segment embeddings). The same
    texts always give the same vocabulary and ids.
    """
    adapter_class = FAMILIES.get(family)
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(word_counts, vocab_size, adapter_class.tiny_special_tokens)

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
    if adapter_class.tiny_segment_embeddings:
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
    """The HF config of a tiny `family` model: the dimensions of `tiny`, the tokenizer's special ids."""
    return FAMILIES.get(family).tiny_config(tiny, tokenizer)


def build_tiny(
    family: str, tiny: TinyBackboneConfig, train_texts: Sequence[str], seed: int
) -> tuple[BackboneAdapter, PreTrainedTokenizerBase]:
    """A random tiny `family` model's adapter (in eval mode) and its tokenizer trained on `train_texts`."""
    tokenizer = train_wordpiece_tokenizer(train_texts, tiny.vocab_size, family, tiny.max_position_embeddings)
    config = tiny_config(family, tiny, tokenizer)
    # a private RNG stream: the same seed gives the same weights, and the caller's RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = hf_model_from_config(config)
    return make_adapter(family, model.eval()), tokenizer
