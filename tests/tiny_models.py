"""Tiny random Hugging Face encoders and WordPiece tokenizers, built without any hub access.

Import from tests: `from tiny_models import tiny_hf_model, tiny_backbone_config, SAMPLE_TEXTS, ...`.
"""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertModel,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
)

from elastic_cli.config import BackboneConfig, TinyBackboneConfig
from elastic_cli.models.loading import train_wordpiece_tokenizer

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

# which adapter family runs each HF architecture
FAMILY_OF_KIND = {"bert": "bert", "roberta": "bert", "electra": "bert", "mpnet": "mpnet"}
# attention implementations each architecture offers in transformers 5 (MPNet has eager only)
ATTENTION_OF_KIND = {"bert": ("sdpa", "eager"), "roberta": ("sdpa", "eager"), "electra": ("sdpa", "eager"),
                     "mpnet": ("eager",)}  # fmt: skip
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
    """A random `kind` base model (bert | roberta | electra | mpnet) in eval mode.

    ELECTRA gets embedding_size = hidden_size / 2 so that its embeddings_project is exercised;
    RoBERTa and MPNet pad with id 1, the others with id 0.
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
