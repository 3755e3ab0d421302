"""The adapters' layer loop reproduces the Hugging Face forward, and `select` compacts exactly."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ATTENTION_OF_KIND, FAMILY_OF_KIND, pad_id_of, padded_batch, tiny_hf_model

from elastic_cli.errors import UserError
from elastic_cli.models.adapters import BackboneAdapter, EncoderState, make_adapter

CASES = [(kind, attn) for kind, impls in ATTENTION_OF_KIND.items() for attn in impls]
LENGTHS = [9, 4, 7, 2]  # different lengths: every row but the first is padded


def run_all_layers(adapter: BackboneAdapter, input_ids, attention_mask) -> list[EncoderState]:
    states = [adapter.embed(input_ids, attention_mask)]
    for i in range(adapter.num_layers):
        states.append(adapter.layer(i, states[-1]))
    return states


@pytest.mark.parametrize(("kind", "attn"), CASES)
@torch.no_grad()
def test_layer_loop_matches_hf_forward_at_every_layer(kind: str, attn: str) -> None:
    model = tiny_hf_model(kind, attn)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    input_ids, attention_mask = padded_batch(LENGTHS, pad_id_of(model))

    reference = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
    ).hidden_states
    states = run_all_layers(adapter, input_ids, attention_mask)

    assert len(reference) == len(states) == model.config.num_hidden_layers + 1
    real = attention_mask.bool()
    for layer, (ours, theirs) in enumerate(zip(states, reference, strict=True)):
        assert ours.hidden.shape == theirs.shape
        torch.testing.assert_close(ours.hidden[real], theirs[real], atol=1e-5, rtol=0, msg=f"layer {layer}")


@pytest.mark.parametrize(("kind", "attn"), CASES)
@torch.no_grad()
def test_select_compacts_and_trims_like_running_the_rows_alone(kind: str, attn: str) -> None:
    model = tiny_hf_model(kind, attn)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    input_ids, attention_mask = padded_batch(LENGTHS, pad_id_of(model))
    rows = torch.tensor([1, 3])  # lengths 4 and 2: the batch is 9 wide, the kept rows need 4 columns

    state = adapter.layer(0, adapter.embed(input_ids, attention_mask))
    state = adapter.select(state, rows)
    assert state.hidden.shape == (2, 4, adapter.hidden_size)
    assert state.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    if "position_bias" in state.extras:
        assert state.extras["position_bias"].shape == (2, adapter.num_heads, 4, 4)
    for i in range(1, adapter.num_layers):
        state = adapter.layer(i, state)

    alone = run_all_layers(adapter, input_ids[rows, :4], attention_mask[rows, :4])[-1]
    real = state.attention_mask.bool()
    torch.testing.assert_close(state.hidden[real], alone.hidden[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_select_of_unpadded_rows_drops_the_mask_and_keeps_their_order() -> None:
    model = tiny_hf_model("bert", "sdpa")
    adapter = make_adapter("bert", model)
    input_ids, attention_mask = padded_batch([3, 6, 6], pad_id_of(model))
    state = adapter.embed(input_ids, attention_mask)
    assert state.extras["mask"] is not None  # row 0 is padded

    kept = adapter.select(state, torch.tensor([2, 1]))
    assert kept.extras["mask"] is None  # nothing padded any more: the fast unmasked path, as HF does
    torch.testing.assert_close(kept.hidden, state.hidden[[2, 1]])


def test_state_dict_of_adapter_holds_every_backbone_weight() -> None:
    model = tiny_hf_model("electra")
    adapter = make_adapter("bert", model)
    assert set(adapter.state_dict()) == {f"model.{key}" for key in model.state_dict()}
    assert any("embeddings_project" in key for key in adapter.state_dict())


def test_dimensions_and_pooler() -> None:
    bert = make_adapter("bert", tiny_hf_model("bert", num_layers=2))
    assert (bert.family, bert.num_layers, bert.hidden_size, bert.intermediate_size, bert.num_heads) == (
        "bert",
        2,
        32,
        64,
        4,
    )
    assert bert.pretrained_pooler() is bert.model.pooler
    assert make_adapter("bert", tiny_hf_model("electra")).pretrained_pooler() is None  # ELECTRA has none
    assert make_adapter("mpnet", tiny_hf_model("mpnet", "eager")).pretrained_pooler() is not None


def test_wrong_family_for_the_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="backbone.family=mpnet cannot run a 'bert' model"):
        make_adapter("mpnet", tiny_hf_model("bert"))
    with pytest.raises(UserError, match="backbone.family='albert' is not one of"):
        make_adapter("albert", tiny_hf_model("bert"))
