"""Tiny random Hugging Face encoders and WordPiece tokenizers, built without any hub access.

Import from tests: `from tiny_models import tiny_hf_model, tiny_backbone_config, SAMPLE_TEXTS, ...`;
`random_texts` gives seeded texts of made-up words to train a tokenizer on.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AlbertConfig,
    AlbertModel,
    BertConfig,
    BertModel,
    DebertaV2Config,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
)

from elastic_cli.config import BackboneConfig, TinyBackboneConfig
from elastic_cli.models.tiny import train_wordpiece_tokenizer

SAMPLE_TEXTS = [
    "the movie was wonderful and the actors were great",
    "a dull film with a terrible plot",
    "I loved every minute of it!",
    "the soundtrack is forgettable, the pacing slow",
    "brilliant direction; superb cast",
    "not worth the ticket price at all",
    "an honest, moving story about two brothers",
    "boring boring boring",
]

# made-up words of one to three syllables (seeded): texts of them that `build_backbone` trains a tokenizer on
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "zo", "pe", "ti", "mo", "nu", "re"]


def _words(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        "".join(SYLLABLES[int(i)] for i in torch.randint(0, len(SYLLABLES), (int(k),), generator=g))
        for k in torch.randint(1, 4, (n,), generator=g)
    ]


VOCAB_WORDS = _words(60, seed=0)


def random_texts(n: int, seed: int) -> list[str]:
    """`n` texts of 2 to 11 words of VOCAB_WORDS (60 made-up words), the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(VOCAB_WORDS[int(i)] for i in torch.randint(0, len(VOCAB_WORDS), (int(k),), generator=g))
        for k in torch.randint(2, 12, (n,), generator=g)
    ]


# which adapter family runs each kind of tiny model (see tiny_hf_model for what each kind exercises)
FAMILY_OF_KIND = {"bert": "bert", "roberta": "bert", "electra": "bert", "mpnet": "mpnet",
                  "albert": "albert", "albert-groups": "albert", "deberta": "deberta",
                  "deberta-v2": "deberta", "distilbert": "distilbert"}  # fmt: skip
# attention implementations each architecture offers in transformers 5 (MPNet and DeBERTa: eager only)
ATTENTION_OF_KIND = {"bert": ("sdpa", "eager"), "roberta": ("sdpa", "eager"), "electra": ("sdpa", "eager"),
                     "mpnet": ("eager",), "albert": ("sdpa", "eager"), "albert-groups": ("sdpa",),
                     "deberta": ("eager",), "deberta-v2": ("eager",),
                     "distilbert": ("sdpa", "eager")}  # fmt: skip
# token ids tests may use for real tokens: above every special id of every kind
FIRST_PLAIN_ID = 5


def tiny_hf_model(
    kind: str,
    attn_implementation: str = "sdpa",
    num_layers: int = 3,
    hidden_size: int = 32,
    vocab_size: int = 100,
    seed: int = 0,
) -> PreTrainedModel:
    """A random `kind` base model (a key of FAMILY_OF_KIND) in eval mode.

    ELECTRA and ALBERT get embedding_size = hidden_size / 2 so that their projection is exercised;
    RoBERTa and MPNet pad with id 1, the others with id 0. `albert` shares one layer group across
    all layers, `albert-groups` has 2 groups of 2 layers each. `deberta` is configured like DeBERTa-v3 (log-bucketed
    relative positions, shared attention keys, layer-normed relative embeddings, no absolute positions
    nor token types) with only 4 buckets so that bucketing acts on short inputs; `deberta-v2` like
    DeBERTa-v2 (a convolution in layer 0, separate position projections) with max_relative_positions 6
    so that relative distances are clamped, plus absolute positions, token types and embed_proj.
    """
    dims = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "intermediate_size": 2 * hidden_size,
        "max_position_embeddings": 64,
    }
    configs = {
        "bert": lambda: (BertModel, BertConfig(**dims, pad_token_id=0)),
        "roberta": lambda: (RobertaModel, RobertaConfig(**dims, pad_token_id=1, type_vocab_size=1)),
        "electra": lambda: (
            ElectraModel,
            ElectraConfig(**dims, embedding_size=hidden_size // 2, pad_token_id=0),
        ),
        "mpnet": lambda: (MPNetModel, MPNetConfig(**dims, pad_token_id=1)),
        "albert": lambda: (
            AlbertModel,
            AlbertConfig(**dims, embedding_size=hidden_size // 2, num_hidden_groups=1, pad_token_id=0),
        ),
        "albert-groups": lambda: (
            AlbertModel,
            AlbertConfig(
                **dims,
                embedding_size=hidden_size // 2,
                num_hidden_groups=2,
                inner_group_num=2,
                pad_token_id=0,
            ),
        ),
        "deberta": lambda: (
            DebertaV2Model,
            DebertaV2Config(
                **dims,
                pad_token_id=0,
                type_vocab_size=0,
                relative_attention=True,
                position_buckets=4,
                max_relative_positions=-1,
                pos_att_type="p2c|c2p",
                share_att_key=True,
                norm_rel_ebd="layer_norm",
                position_biased_input=False,
            ),
        ),
        "deberta-v2": lambda: (
            DebertaV2Model,
            DebertaV2Config(
                **dims,
                pad_token_id=0,
                type_vocab_size=2,
                embedding_size=hidden_size // 2,
                relative_attention=True,
                max_relative_positions=6,
                pos_att_type=["p2c", "c2p"],
                share_att_key=False,
                conv_kernel_size=3,
                conv_act="gelu",
                position_biased_input=True,
            ),
        ),
        "distilbert": lambda: (
            DistilBertModel,
            DistilBertConfig(
                vocab_size=vocab_size,
                dim=hidden_size,
                n_layers=num_layers,
                n_heads=4,
                hidden_dim=2 * hidden_size,
                max_position_embeddings=64,
                pad_token_id=0,
            ),
        ),
    }
    model_class, config = configs[kind]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def padded_batch(
    lengths: list[int], pad_id: int, vocab_size: int = 100, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random input_ids [B, max(lengths)] (no special or pad ids inside) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(FIRST_PLAIN_ID, vocab_size, (length,), generator=generator)
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


def pad_id_of(model: PreTrainedModel) -> int:
    return int(model.config.pad_token_id)


def tiny_backbone_config(family: str = "bert", **dims: int) -> BackboneConfig:
    """A BackboneConfig with `tiny` set (defaults of TinyBackboneConfig, overridden by `dims`)."""
    return BackboneConfig(name=f"tiny-{family}", family=family, path="", tiny=TinyBackboneConfig(**dims))


def tiny_tokenizer(texts: list[str] | None = None, family: str = "bert", vocab_size: int = 200):
    """A WordPiece tokenizer trained on `texts` (default SAMPLE_TEXTS), the one build_backbone makes."""
    return train_wordpiece_tokenizer(texts or SAMPLE_TEXTS, vocab_size, family)


def tiny_backbone(family: str, layers: int, texts: list[str]) -> tuple[Any, Any]:
    """A tiny random backbone adapter of `family` and its tokenizer learned on `texts`."""
    from elastic_cli.models.loading import build_backbone

    cfg = BackboneConfig(
        name=f"tiny-{family}",
        family=family,
        path="random",
        tiny=TinyBackboneConfig(
            num_layers=layers, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=80
        ),
        use_pretrained_pooler=False,
    )
    return build_backbone(cfg, train_texts=texts, seed=4)
