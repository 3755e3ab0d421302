"""Backbone adapters: a Hugging Face encoder exposed as `embed`, `layer(i)` and `select`.

The multi-exit model runs the encoder one layer at a time so that it can read every layer's
hidden states and, on the adaptive path, drop the examples that have exited (`select`). Each
adapter calls the Hugging Face modules themselves (embeddings, layers, the mask helper), so its
layer loop gives the same hidden states as the model's own forward.

Families: bert (BERT, RoBERTa, ELECTRA, MiniLM, ElasticBERT), mpnet, albert, deberta (v2 and v3),
distilbert.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from elastic_cli.errors import UserError


@dataclass
class EncoderState:
    """What flows between layers: hidden states, the 2D padding mask and family-specific extras."""

    hidden: torch.Tensor  # [B, T, H]
    attention_mask: torch.Tensor  # [B, T], 1 = real token, long
    # tensors every layer needs: "mask" (the 4D mask in the model's attention format, or None when
    # nothing is padded; DeBERTa always has one), for MPNet "position_bias" [B, heads, T, T], for
    # DeBERTa "relative_pos" [1, T, T] and "rel_embeddings" [2 * span, H] (shared by every row)
    extras: dict[str, torch.Tensor | None] = field(default_factory=dict)


def trimmed_length(attention_mask: torch.Tensor) -> int:
    """Columns up to the last one holding a real token of any row (at least 1)."""
    real_columns = attention_mask.bool().any(dim=0).nonzero()
    return int(real_columns[-1].item()) + 1 if real_columns.numel() else 1


class BackboneAdapter(nn.Module, ABC):
    """Common part: the HF model as a registered submodule, its dimensions, mask and compaction."""

    family: str = ""
    # model_type values of the Hugging Face configs this adapter can run
    model_types: tuple[str, ...] = ()
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

    @staticmethod
    def _intermediate_size(config: transformers.PretrainedConfig) -> int:
        return int(config.intermediate_size)

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


class BertAdapter(BackboneAdapter):
    """BERT, RoBERTa, ELECTRA, MiniLM (a BertModel) and ElasticBERT loaded as a BertModel: the same
    layer, differing only in the embeddings (RoBERTa's padding-aware positions, ELECTRA's projection)."""

    family = "bert"
    model_types = ("bert", "roberta", "electra", "xlm-roberta")

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


class MPNetAdapter(BackboneAdapter):
    """MPNet: the relative position bias is computed once per batch and added in every layer."""

    family = "mpnet"
    model_types = ("mpnet",)

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
        # the bias depends on column indices only, so cutting trailing columns keeps the rest exact
        return {"position_bias": bias[:, :, :length, :length].index_select(0, rows)}


class DensePooler(nn.Module):
    """A pooler given as a bare Linear (ALBERT's `pooler`, applied with tanh) in BertPooler's shape:
    `.dense` (what exit heads copy) and tanh(dense(first token))."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class AlbertAdapter(BackboneAdapter):
    """ALBERT: narrow embeddings projected to the hidden size, then `num_hidden_layers` applications of
    shared layer groups; application i runs group int(i / (num_hidden_layers / num_hidden_groups))."""

    family = "albert"
    model_types = ("albert",)

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


class DistilBertAdapter(BackboneAdapter):
    """DistilBERT: word + position embeddings (no token types), `transformer.layer[i]`, no pooler."""

    family = "distilbert"
    model_types = ("distilbert",)

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


class DebertaAdapter(BackboneAdapter):
    """DeBERTa-v2 and v3 (DebertaV2Model): disentangled attention over relative positions.

    Per batch, as DebertaV2Encoder.forward does once: the [B, 1, T, T] mask (outer product of the padding
    mask, DeBERTa's own format, whatever the attention setting), the relative positions [1, T, T] and
    the (layer-normed) relative embeddings; v2 configs with conv_kernel_size add a convolution over the
    embeddings to the output of layer 0.
    """

    family = "deberta"
    model_types = ("deberta-v2",)

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
        output, _ = self.model.encoder.layer[i](
            state.hidden,
            state.extras["mask"],
            relative_pos=state.extras["relative_pos"],
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
        # relative positions are (bucketed) q - k over column indices: the top-left block of the wider
        # matrix is the matrix of the shorter sequence
        return {
            "relative_pos": None if relative_pos is None else relative_pos[:, :length, :length],
            "rel_embeddings": extras["rel_embeddings"],
        }


ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "bert": BertAdapter,
    "mpnet": MPNetAdapter,
    "albert": AlbertAdapter,
    "deberta": DebertaAdapter,
    "distilbert": DistilBertAdapter,
}


def make_adapter(family: str, hf_model: PreTrainedModel) -> BackboneAdapter:
    """The adapter of `family` around an HF base model (BertModel, MPNetModel, AlbertModel, ...)."""
    if family not in ADAPTERS:
        raise UserError(f"backbone.family={family!r} is not one of {', '.join(ADAPTERS)}")
    return ADAPTERS[family](hf_model)
