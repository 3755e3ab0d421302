"""Backbone adapters: a Hugging Face encoder exposed as `embed`, `layer(i)`, `select` and `drop_tokens`.

The multi-exit model runs the encoder one layer at a time so that it can read every layer's
hidden states and, on the adaptive path, drop the examples that have exited (`select`) or the tokens
a method prunes between layers (`drop_tokens`). Each adapter calls the Hugging Face modules themselves
(embeddings, layers, the mask helper), so its layer loop gives the same hidden states as the model's
own forward.

A family is one adapter class, registered in FAMILIES under its `backbone.family` name; it declares
everything else that differs per family: the HF model types it runs, its tiny test model (config,
tokenizer special tokens, segment embeddings), its relative-attention sizes for the FLOPs count and
whether it loads checkpoints transformers does not know. No code outside these classes branches on
a family's name.

Families: bert (BERT, RoBERTa, ELECTRA, MiniLM, ElasticBERT), mpnet, albert, deberta (v2 and v3),
distilbert.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import transformers
from torch import nn
from transformers import (
    AlbertConfig,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from elastic_cli.errors import UserError
from elastic_cli.registry import Registry

if TYPE_CHECKING:
    from elastic_cli.config import TinyBackboneConfig


@dataclass
class EncoderState:
    """What flows between layers: hidden states, the 2D padding mask and family-specific extras."""

    hidden: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T], 1 = real token, long
    # tensors every layer needs: "mask" (the 4D mask in the model's attention format, or None when
    # nothing is padded; DeBERTa always has one), for MPNet "position_bias" [B, heads, T, T], for
    # DeBERTa "relative_pos" ([1, T, T] shared by every row; [B, T, T] once tokens were dropped) and
    # "rel_embeddings" [2 * span, H] (shared by every row)
    extras: dict[str, torch.Tensor | None] = field(default_factory=dict)


def trimmed_length(attention_mask: torch.Tensor) -> int:
    """Columns up to the last one holding a real token of any row (at least 1)."""
    real_columns = attention_mask.bool().any(dim=0).nonzero()
    return int(real_columns[-1].item()) + 1 if real_columns.numel() else 1


def gather_square(matrix: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """matrix [B, ..., T, T] -> [B, ..., T', T']: in row b, the rows and columns `order[b]` [T']."""
    batch, width = order.shape
    middle = [1] * (matrix.dim() - 3)
    lead = matrix.shape[:-2]
    rows = matrix.gather(-2, order.view(batch, *middle, width, 1).expand(*lead, width, matrix.shape[-1]))
    return rows.gather(-1, order.view(batch, *middle, 1, width).expand(*lead, width, width))


# ---------------------------------------------------------------- the HF base model of a config


def hf_model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class AutoModel builds for `config` (BertModel, MPNetModel, ...)."""
    return cast(type[PreTrainedModel], MODEL_MAPPING[type(config)])


def attention_implementation(model_class: type[PreTrainedModel]) -> str:
    """The attention the adapters run: sdpa where the architecture has it (BERT, ALBERT, DistilBERT);
    MPNet's and DeBERTa's attention is written out in eager form only."""
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def hf_model_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """The base model of `config` with random weights (from the global torch RNG)."""
    model_class = hf_model_class(config)
    return model_class._from_config(config, attn_implementation=attention_implementation(model_class))


# ---------------------------------------------------------------- the adapters

# Special tokens of the tiny WordPiece tokenizers, in id order, as the real vocabularies have them:
# BERT's (DistilBERT is BERT's; ALBERT <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4; DeBERTa-v3 [PAD]=0)
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BackboneAdapter(nn.Module, ABC):
    """Common part: the HF model as a registered submodule, its dimensions, mask and compaction."""

    name: ClassVar[str] = ""  # the family, set by FAMILIES.register
    # model_type values of the Hugging Face configs this adapter can run
    model_types: ClassVar[tuple[str, ...]] = ()
    # the tiny test model (backbone.tiny): the special tokens of its WordPiece tokenizer in id order, and
    # whether it has segment (token type) embeddings, in which case its tokenizer returns token_type_ids
    tiny_special_tokens: ClassVar[tuple[str, ...]] = BERT_SPECIAL_TOKENS
    tiny_segment_embeddings: ClassVar[bool] = False
    # a checkpoint whose model_type transformers does not know (ElasticBERT) may be loaded as a BertModel
    loads_unknown_models_as_bert: ClassVar[bool] = False
    # its layers add a float attention mask to the scores, so a bias per key can fade a token out
    # (AdapLeR's soft token removal, `key_bias_mask`)
    supports_key_bias: ClassVar[bool] = True
    # the HF base model; typed Any because its submodules (embeddings, encoder.layer, ...) are reached
    # by name and differ per family
    model: Any

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__()
        config = hf_model.config
        if config.model_type not in self.model_types:
            raise UserError(
                f"backbone.family={self.family} cannot run a {config.model_type!r} model "
                f"(it runs {', '.join(self.model_types)}): set backbone.family to the model's family"
            )
        self.model = hf_model  # registered: the adapter's state_dict holds every backbone weight
        self.hf_config: transformers.PretrainedConfig = config
        self.num_layers: int = config.num_hidden_layers
        self.hidden_size: int = config.hidden_size
        self.intermediate_size: int = self._intermediate_size(config)
        self.num_heads: int = config.num_attention_heads
        # the loader clears it when the checkpoint had no pooler weights (the pooler is then random)
        self.has_pretrained_pooler: bool = getattr(hf_model, "pooler", None) is not None

    @property
    def family(self) -> str:
        return self.name

    @classmethod
    @abstractmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        """The HF config of a tiny model of this family with the dimensions of `tiny` and the special ids
        of its tokenizer (the one `tiny_special_tokens` gives)."""

    @staticmethod
    def _tiny_dims(tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """The config fields named alike in BERT, MPNet, ALBERT and DeBERTa."""
        return {
            "vocab_size": tiny.vocab_size,
            "hidden_size": tiny.hidden_size,
            "num_hidden_layers": tiny.num_layers,
            "num_attention_heads": tiny.num_heads,
            "intermediate_size": tiny.intermediate_size,
            "pad_token_id": tokenizer.pad_token_id,
        }

    @staticmethod
    def _intermediate_size(config: transformers.PretrainedConfig) -> int:
        return int(config.intermediate_size)

    def relative_attention(self) -> tuple[int, int]:
        """For the FLOPs count (cost.EncoderDims): the span of relative positions attended to and the
        number of disentangled attention terms; (0, 0) without relative-position attention terms."""
        return 0, 0

    def attention_mask_4d(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        # the HF helper builds the mask the configured attention implementation expects (boolean for
        # sdpa, additive for eager) and returns None when no position is padded, as the HF forward does
        mask = create_bidirectional_mask(
            config=self.hf_config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        if mask is not None and not isinstance(mask, torch.Tensor):  # flex attention's BlockMask
            raise UserError(
                f"attention {self.hf_config._attn_implementation!r} is not supported: use sdpa or eager"
            )
        return mask

    def key_bias_mask(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, key_bias: torch.Tensor
    ) -> torch.Tensor:
        """An additive attention mask [B, 1, 1, T] that adds key_bias [B, T] to the scores of every query
        against key t, and masks the padding. Both sdpa and the eager attentions add a float mask."""
        masked = torch.finfo(hidden.dtype).min
        bias = key_bias.to(hidden.dtype).masked_fill(~attention_mask.bool(), masked)
        return bias[:, None, None, :]

    @abstractmethod
    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        """Embeddings of a padded batch: the state entering layer 0."""

    @abstractmethod
    def layer(self, i: int, state: EncoderState) -> EncoderState:
        """Run encoder layer `i` (0-indexed) on `state`."""

    def select(self, state: EncoderState, rows: torch.Tensor) -> EncoderState:
        """Keep `rows` only and cut the trailing columns that are padding in every kept row."""
        rows = rows.to(device=state.hidden.device, dtype=torch.long)
        kept_mask = state.attention_mask.index_select(0, rows)
        length = trimmed_length(kept_mask)
        hidden = state.hidden[:, :length].index_select(0, rows)
        kept_mask = kept_mask[:, :length]
        extras: dict[str, torch.Tensor | None] = {"mask": self.attention_mask_4d(hidden, kept_mask)}
        extras.update(self._select_extras(state.extras, rows, length))
        return EncoderState(hidden=hidden, attention_mask=kept_mask, extras=extras)

    def _select_extras(
        self, extras: dict[str, torch.Tensor | None], rows: torch.Tensor, length: int
    ) -> dict[str, torch.Tensor | None]:
        """Family extras other than the mask, compacted to `rows` and trimmed to `length`."""
        return {}

    def drop_tokens(self, state: EncoderState, keep_mask: torch.Tensor) -> EncoderState:
        """Keep, in every row, only the tokens where `keep_mask` [B, T] is true (token dropping between
        layers, as AdapLeR does).

        The kept tokens are packed to the left in their order; the batch becomes as wide as the most
        tokens any row keeps, and the slots after a row's kept tokens are padding (attention_mask 0,
        zero hidden states). A kept padding token stays padding. Every token keeps its original
        position: BERT, ALBERT, DistilBERT and ELECTRA carry absolute positions in the hidden states;
        MPNet's position bias and DeBERTa's relative positions are gathered per row at the kept tokens.
        (DeBERTa-v2's convolution in layer 0 reads neighbouring tokens: drop tokens after layer 0.)
        """
        hidden = state.hidden
        if tuple(keep_mask.shape) != tuple(state.attention_mask.shape):
            raise ValueError(
                f"keep_mask has shape {tuple(keep_mask.shape)}, the batch {tuple(state.attention_mask.shape)}"
            )
        keep = keep_mask.to(device=hidden.device, dtype=torch.bool)
        counts = keep.sum(dim=1)
        length = max(int(counts.max().item()) if counts.numel() else 0, 1)
        # a stable sort of the dropped flags puts each row's kept columns first, in their order
        order = torch.sort((~keep).to(torch.long), dim=1, stable=True).indices[:, :length]
        packed = torch.arange(length, device=hidden.device)[None, :] < counts[:, None]  # [B, T']
        hidden = hidden.gather(1, order[:, :, None].expand(-1, -1, hidden.shape[-1]))
        hidden = hidden * packed[:, :, None].to(hidden.dtype)
        attention_mask = state.attention_mask.gather(1, order) * packed.to(state.attention_mask.dtype)
        extras: dict[str, torch.Tensor | None] = {"mask": self.attention_mask_4d(hidden, attention_mask)}
        extras.update(self._drop_extras(state.extras, order))
        return EncoderState(hidden=hidden, attention_mask=attention_mask, extras=extras)

    def _drop_extras(
        self, extras: dict[str, torch.Tensor | None], order: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        """Family extras other than the mask, for the tokens `order` [B, T'] (original column of each new
        column, per row) of `drop_tokens`."""
        return {}

    def truncate(self, num_layers: int) -> None:
        """Keep the first `num_layers` layers (SWEET's multi-model members); the config saved with the
        checkpoint says so, so the truncated model is rebuilt as such."""
        if not 1 <= num_layers <= self.num_layers:
            raise UserError(f"cannot keep {num_layers} layers of a {self.num_layers}-layer backbone")
        if getattr(self.hf_config, "num_hidden_groups", 1) > 1:
            # ALBERT maps layer i to group i / (layers / groups): fewer layers would change that map
            raise UserError("an ALBERT backbone with several layer groups cannot be truncated")
        layers = self._layer_list()
        if layers is not None:
            del layers[num_layers:]
        self.hf_config.num_hidden_layers = num_layers
        self.num_layers = num_layers

    def _layer_list(self) -> nn.ModuleList | None:
        """The per-layer modules (None when layers are shared, as ALBERT's groups are)."""
        encoder = getattr(self.model, "encoder", None) or getattr(self.model, "transformer", None)
        return getattr(encoder, "layer", None)

    def pretrained_pooler(self) -> nn.Module | None:
        """The backbone's pretrained pooler (dense + tanh on the first token), if it has one."""
        return self.model.pooler if self.has_pretrained_pooler else None

    @staticmethod
    def _padding_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.long)
        return attention_mask.to(dtype=torch.long)


FAMILIES: Registry[BackboneAdapter] = Registry("backbone family", "backbone.family")


@FAMILIES.register("bert")
class BertAdapter(BackboneAdapter):
    """BERT, RoBERTa, ELECTRA, MiniLM (a BertModel) and ElasticBERT loaded as a BertModel: the same
    layer, differing only in the embeddings (RoBERTa's padding-aware positions, ELECTRA's projection)."""

    model_types = ("bert", "roberta", "electra", "xlm-roberta")
    tiny_segment_embeddings = True
    loads_unknown_models_as_bert = True

    @classmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        dims = cls._tiny_dims(tiny, tokenizer)
        return BertConfig(**dims, max_position_embeddings=tiny.max_position_embeddings, type_vocab_size=2)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        padding_mask = self._padding_mask(input_ids, attention_mask)
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        # ELECTRA: embeddings narrower than the encoder are projected up, as ElectraModel.forward does
        project = getattr(self.model, "embeddings_project", None)
        if project is not None:
            hidden = project(hidden)
        return EncoderState(hidden, padding_mask, {"mask": self.attention_mask_4d(hidden, padding_mask)})

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        output = self.model.encoder.layer[i](state.hidden, state.extras["mask"])
        hidden = output[0] if isinstance(output, tuple) else output
        return EncoderState(hidden, state.attention_mask, state.extras)


@FAMILIES.register("mpnet")
class MPNetAdapter(BackboneAdapter):
    """MPNet: the relative position bias is computed once per batch and added in every layer."""

    model_types = ("mpnet",)
    # MPNet's embeddings take padding_idx=1 as fixed (positions count from it), so its tiny vocabulary
    # puts [PAD] at 1, as the real MPNet vocabulary does (<s>=0 <pad>=1 </s>=2 <unk>=3)
    tiny_special_tokens = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")
    # MPNet (and RoBERTa-style) positions start at padding_idx + 1: a sequence of T tokens needs T + 2 rows
    position_offset: ClassVar[int] = 2

    @classmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        if tokenizer.pad_token_id != 1:
            raise AssertionError("MPNet needs [PAD] at id 1")  # guaranteed by tiny_special_tokens
        return MPNetConfig(
            **cls._tiny_dims(tiny, tokenizer),
            max_position_embeddings=tiny.max_position_embeddings + cls.position_offset,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        # MPNet has no segment embeddings: token_type_ids are ignored, as MPNetModel does
        padding_mask = self._padding_mask(input_ids, attention_mask)
        hidden = self.model.embeddings(input_ids=input_ids)
        extras: dict[str, torch.Tensor | None] = {
            "mask": self.attention_mask_4d(hidden, padding_mask),
            "position_bias": self.model.encoder.compute_position_bias(hidden),
        }
        return EncoderState(hidden, padding_mask, extras)

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        output = self.model.encoder.layer[i](
            state.hidden, state.extras["mask"], state.extras["position_bias"]
        )
        return EncoderState(output[0], state.attention_mask, state.extras)

    def _select_extras(
        self, extras: dict[str, torch.Tensor | None], rows: torch.Tensor, length: int
    ) -> dict[str, torch.Tensor | None]:
        bias = extras["position_bias"]
        assert bias is not None
        # every kept row's real tokens lie in the first `length` columns: the top-left block of its bias
        # holds their pairs (the bias of column indices, or of the original positions after drop_tokens)
        return {"position_bias": bias[:, :, :length, :length].index_select(0, rows)}

    def _drop_extras(
        self, extras: dict[str, torch.Tensor | None], order: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        bias = extras["position_bias"]
        assert bias is not None
        # the bias of the original pair of positions: rows and columns at the kept tokens of each example
        return {"position_bias": gather_square(bias, order)}


class DensePooler(nn.Module):
    """A pooler given as a bare Linear (ALBERT's `pooler`, applied with tanh) in BertPooler's shape:
    `.dense` (what exit heads copy) and tanh(dense(first token))."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


@FAMILIES.register("albert")
class AlbertAdapter(BackboneAdapter):
    """ALBERT: narrow embeddings projected to the hidden size, then `num_hidden_layers` applications of
    shared layer groups; application i runs group int(i / (num_hidden_layers / num_hidden_groups))."""

    model_types = ("albert",)
    tiny_segment_embeddings = True

    @classmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        # shaped like albert-base-v2: one shared layer group, embeddings narrower than the hidden size
        return AlbertConfig(
            **cls._tiny_dims(tiny, tokenizer),
            embedding_size=max(1, tiny.hidden_size // 2),
            num_hidden_groups=1,
            inner_group_num=1,
            max_position_embeddings=tiny.max_position_embeddings,
            type_vocab_size=2,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        padding_mask = self._padding_mask(input_ids, attention_mask)
        embedded = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        # the projection opens AlbertTransformer.forward; HF's hidden_states[0] is taken after it
        hidden = self.model.encoder.embedding_hidden_mapping_in(embedded)
        return EncoderState(hidden, padding_mask, {"mask": self.attention_mask_4d(hidden, padding_mask)})

    def group_of_layer(self, i: int) -> int:
        # the float expression of AlbertTransformer.forward, kept as is so that rounding agrees
        config = self.hf_config
        return int(i / (config.num_hidden_layers / config.num_hidden_groups))

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        group = self.model.encoder.albert_layer_groups[self.group_of_layer(i)]
        hidden = group(state.hidden, state.extras["mask"])
        return EncoderState(hidden, state.attention_mask, state.extras)

    def pretrained_pooler(self) -> nn.Module | None:
        # built on each call rather than registered, so the pooler weights appear once in state_dict
        return DensePooler(self.model.pooler) if self.has_pretrained_pooler else None


@FAMILIES.register("distilbert")
class DistilBertAdapter(BackboneAdapter):
    """DistilBERT: word + position embeddings (no token types), `transformer.layer[i]`, no pooler."""

    model_types = ("distilbert",)

    @classmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        return DistilBertConfig(
            vocab_size=tiny.vocab_size,
            dim=tiny.hidden_size,
            n_layers=tiny.num_layers,
            n_heads=tiny.num_heads,
            hidden_dim=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
        )

    @staticmethod
    def _intermediate_size(config: transformers.PretrainedConfig) -> int:
        return int(config.hidden_dim)  # DistilBertConfig's name for the feed-forward width

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        # DistilBERT has no segment embeddings: token_type_ids are ignored, as DistilBertModel does
        padding_mask = self._padding_mask(input_ids, attention_mask)
        hidden = self.model.embeddings(input_ids)
        return EncoderState(hidden, padding_mask, {"mask": self.attention_mask_4d(hidden, padding_mask)})

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        hidden = self.model.transformer.layer[i](state.hidden, state.extras["mask"])
        return EncoderState(hidden, state.attention_mask, state.extras)


@FAMILIES.register("deberta")
class DebertaAdapter(BackboneAdapter):
    """DeBERTa-v2 and v3 (DebertaV2Model): disentangled attention over relative positions.

    Per batch, as DebertaV2Encoder.forward does once: the [B, 1, T, T] mask (outer product of the padding
    mask, DeBERTa's own format, whatever the attention setting), the relative positions [1, T, T] and
    the (layer-normed) relative embeddings; v2 configs with conv_kernel_size add a convolution over the
    embeddings to the output of layer 0.
    """

    model_types = ("deberta-v2",)
    supports_key_bias = False  # its attention takes a 0/1 mask, which it turns into -inf itself

    @classmethod
    def tiny_config(cls, tiny: TinyBackboneConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
        # shaped like deberta-v3-base (which has 256 buckets for 512 positions), with no segment
        # embeddings (type_vocab_size 0); these three settings are not declared fields of
        # DebertaV2Config, which keeps them as extra attributes
        undeclared: dict[str, Any] = {
            "position_buckets": max(1, tiny.max_position_embeddings // 2),
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
        }
        return DebertaV2Config(
            **cls._tiny_dims(tiny, tokenizer),
            **undeclared,
            max_position_embeddings=tiny.max_position_embeddings,
            relative_attention=True,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
        )

    def relative_attention(self) -> tuple[int, int]:
        # the span DisentangledSelfAttention gathers from (pos_ebd_size) and its terms (c2p, p2c)
        config = self.hf_config
        if not config.relative_attention:
            return 0, 0
        buckets = getattr(config, "position_buckets", -1)
        max_relative = getattr(config, "max_relative_positions", -1)
        if max_relative < 1:
            max_relative = config.max_position_embeddings
        span = buckets if buckets > 0 else max_relative
        terms = sum(term in (config.pos_att_type or []) for term in ("c2p", "p2c"))
        return int(span), int(terms)

    def attention_mask_4d(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        return self.model.encoder.get_attention_mask(attention_mask)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderState:
        padding_mask = self._padding_mask(input_ids, attention_mask)
        # the embeddings zero the padded positions (mask=), which the v2 convolution relies on
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=padding_mask)
        encoder = self.model.encoder
        extras: dict[str, torch.Tensor | None] = {
            "mask": self.attention_mask_4d(hidden, padding_mask),
            "relative_pos": encoder.get_rel_pos(hidden),  # None without relative attention
            "rel_embeddings": encoder.get_rel_embedding(),
        }
        return EncoderState(hidden, padding_mask, extras)

    def layer(self, i: int, state: EncoderState) -> EncoderState:
        relative_pos = state.extras["relative_pos"]
        if relative_pos is not None and relative_pos.shape[0] > 1:
            # one matrix per example (after drop_tokens): DisentangledSelfAttention takes [B, T, T] as
            # [B, 1, T, T] and fails to expand it to its [B * heads] rows, but takes [1, B * heads, T, T]
            # (dim 0 squeezed, one matrix per row of its batch-major [B * heads, T, d] layout)
            relative_pos = relative_pos.repeat_interleave(self.num_heads, dim=0).unsqueeze(0)
        output, _ = self.model.encoder.layer[i](
            state.hidden,
            state.extras["mask"],
            relative_pos=relative_pos,
            rel_embeddings=state.extras["rel_embeddings"],
        )
        conv = self.model.encoder.conv
        if i == 0 and conv is not None:
            # DebertaV2Encoder: the convolution reads the encoder's input (the embeddings) and the mask
            output = conv(state.hidden, output, state.attention_mask)
        return EncoderState(output, state.attention_mask, state.extras)

    def _select_extras(
        self, extras: dict[str, torch.Tensor | None], rows: torch.Tensor, length: int
    ) -> dict[str, torch.Tensor | None]:
        relative_pos = extras["relative_pos"]
        if relative_pos is not None:
            if relative_pos.shape[0] > 1:  # one matrix per example (after drop_tokens)
                relative_pos = relative_pos.index_select(0, rows)
            # relative positions are (bucketed) q - k over column indices, or over the original positions
            # after drop_tokens: the top-left block holds the pairs of the first `length` columns
            relative_pos = relative_pos[:, :length, :length]
        return {"relative_pos": relative_pos, "rel_embeddings": extras["rel_embeddings"]}

    def _drop_extras(
        self, extras: dict[str, torch.Tensor | None], order: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        relative_pos = extras["relative_pos"]
        if relative_pos is not None:
            # per example, the relative positions of the kept tokens' original positions
            relative_pos = gather_square(relative_pos.expand(order.shape[0], -1, -1), order)
        return {"relative_pos": relative_pos, "rel_embeddings": extras["rel_embeddings"]}


def make_adapter(family: str, hf_model: PreTrainedModel) -> BackboneAdapter:
    """The adapter of `family` around an HF base model (BertModel, MPNetModel, AlbertModel, ...)."""
    return FAMILIES.get(family)(hf_model)
