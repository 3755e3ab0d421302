"""The adapters' layer loop reproduces the Hugging Face forward, `select` compacts exactly, the
early-exit path built on them agrees with the exit rule applied to cached logits, `drop_tokens` keeps
the kept tokens' outputs and positions, and `truncate` keeps a backbone's first layers (SWEET's
multi-model members)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import (
    ATTENTION_OF_KIND,
    FAMILY_OF_KIND,
    pad_id_of,
    padded_batch,
    random_texts,
    tiny_backbone,
    tiny_hf_model,
)

from elastic_cli.errors import UserError
from elastic_cli.models.adapters import BackboneAdapter, EncoderState, make_adapter

CASES = [(kind, attn) for kind, impls in ATTENTION_OF_KIND.items() for attn in impls]
LENGTHS = [9, 4, 7, 2]  # different lengths: every row but the first is padded


def run_all_layers(
    adapter: BackboneAdapter, input_ids, attention_mask, token_type_ids=None
) -> list[EncoderState]:
    states = [adapter.embed(input_ids, attention_mask, token_type_ids)]
    for i in range(adapter.num_layers):
        states.append(adapter.layer(i, states[-1]))
    return states


def segment_ids(model, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Token types 0 then 1 (a pair) for models with segment embeddings, else None."""
    if getattr(model.config, "type_vocab_size", 0) < 2:
        return None
    second_half = torch.arange(attention_mask.shape[1]) >= attention_mask.shape[1] // 2
    return (second_half.long() * attention_mask).expand_as(attention_mask).contiguous()


@pytest.mark.parametrize(("kind", "attn"), CASES)
@torch.no_grad()
def test_layer_loop_matches_hf_forward_at_every_layer(kind: str, attn: str) -> None:
    model = tiny_hf_model(kind, attn)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    input_ids, attention_mask = padded_batch(LENGTHS, pad_id_of(model))
    token_type_ids = segment_ids(model, attention_mask)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids

    reference = model(**inputs, output_hidden_states=True).hidden_states
    # ALBERT records every inner layer of a group: one adapter layer is `inner_group_num` of them
    reference = reference[:: getattr(model.config, "inner_group_num", 1)]
    states = run_all_layers(adapter, input_ids, attention_mask, token_type_ids)

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
    if "relative_pos" in state.extras:
        assert state.extras["relative_pos"].shape == (1, 4, 4)
        assert state.extras["mask"].shape == (2, 1, 4, 4)
    for i in range(1, adapter.num_layers):
        state = adapter.layer(i, state)

    alone = run_all_layers(adapter, input_ids[rows, :4], attention_mask[rows, :4])[-1]
    real = state.attention_mask.bool()
    torch.testing.assert_close(state.hidden[real], alone.hidden[real], atol=1e-5, rtol=0)


NEW_KINDS = [("albert", "sdpa"), ("albert-groups", "sdpa"), ("deberta", "eager"), ("deberta-v2", "eager"),
             ("distilbert", "sdpa")]  # fmt: skip


@pytest.mark.parametrize(("kind", "attn"), NEW_KINDS)
@torch.no_grad()
def test_rows_left_after_every_layer_keep_their_full_batch_states(kind: str, attn: str) -> None:
    # the early-exit pattern: after each layer the longest row and one other leave, so the batch is
    # compacted and trimmed over and over; every row left must keep the states of the full-batch run
    model = tiny_hf_model(kind, attn, num_layers=4)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    lengths = [11, 3, 9, 6, 11, 2, 8, 5, 10, 4]
    input_ids, attention_mask = padded_batch(lengths, pad_id_of(model))
    token_type_ids = segment_ids(model, attention_mask)
    full = run_all_layers(adapter, input_ids, attention_mask, token_type_ids)

    rows = torch.arange(len(lengths))
    state = full[0]
    widths = []
    for i in range(adapter.num_layers):
        state = adapter.layer(i, state)
        width = state.hidden.shape[1]
        widths.append(width)
        assert width == max(lengths[row] for row in rows.tolist())
        real = state.attention_mask.bool()
        torch.testing.assert_close(
            state.hidden[real], full[i + 1].hidden[rows, :width][real], atol=1e-5, rtol=0, msg=f"layer {i}"
        )
        row_lengths = torch.tensor([lengths[row] for row in rows.tolist()])
        leaving = {int(row_lengths.argmax()), len(rows) // 2}
        keep = torch.tensor([index for index in range(len(rows)) if index not in leaving])
        state, rows = adapter.select(state, keep), rows[keep]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]  # trimming happened


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


@torch.no_grad()
def test_albert_pooler_is_the_pretrained_linear_in_bert_pooler_shape() -> None:
    model = tiny_hf_model("albert", num_layers=2)
    adapter = make_adapter("albert", model)
    pooler = adapter.pretrained_pooler()
    assert pooler is not None and pooler.dense is model.pooler  # what exit heads copy
    input_ids, attention_mask = padded_batch([5, 3], pad_id_of(model))
    output = model(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(pooler(output.last_hidden_state), output.pooler_output, atol=0, rtol=0)
    # the wrapper adds no weights: the pooler appears once in the state dict
    assert set(adapter.state_dict()) == {f"model.{key}" for key in model.state_dict()}


def test_dimensions_of_the_new_families() -> None:
    albert = make_adapter("albert", tiny_hf_model("albert-groups", num_layers=3))
    assert (albert.num_layers, albert.hidden_size, albert.intermediate_size, albert.num_heads) == (
        3,
        32,
        64,
        4,
    )
    # 3 layers over 2 groups: int(i / 1.5) gives groups 0, 0, 1, as AlbertTransformer computes
    assert [albert.group_of_layer(i) for i in range(3)] == [0, 0, 1]
    distil = make_adapter("distilbert", tiny_hf_model("distilbert", num_layers=2))
    assert (distil.num_layers, distil.hidden_size, distil.intermediate_size, distil.num_heads) == (
        2,
        32,
        64,
        4,
    )
    assert distil.pretrained_pooler() is None
    deberta = make_adapter("deberta", tiny_hf_model("deberta", "eager", num_layers=2))
    assert (deberta.num_layers, deberta.hidden_size, deberta.intermediate_size, deberta.num_heads) == (
        2,
        32,
        64,
        4,
    )
    assert deberta.pretrained_pooler() is None  # ContextPooler lives in the classification model only


@pytest.mark.parametrize("kind", ["deberta", "deberta-v2"])
@torch.no_grad()
def test_deberta_unpadded_batch_matches_hf(kind: str) -> None:
    # no attention_mask at all: HF builds an all-ones mask, the adapter must do the same
    model = tiny_hf_model(kind, "eager")
    adapter = make_adapter("deberta", model)
    input_ids, _ = padded_batch([6, 6], pad_id_of(model))
    reference = model(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(
        run_all_layers(adapter, input_ids, None)[-1].hidden, reference, atol=1e-5, rtol=0
    )


def test_wrong_family_for_the_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="backbone.family=mpnet cannot run a 'bert' model"):
        make_adapter("mpnet", tiny_hf_model("bert"))
    with pytest.raises(UserError, match="backbone.family=deberta cannot run a 'albert' model"):
        make_adapter("deberta", tiny_hf_model("albert"))
    with pytest.raises(UserError, match="backbone.family='xlnet' is not one of"):
        make_adapter("xlnet", tiny_hf_model("bert"))


@pytest.mark.parametrize(("kind", "attn"), NEW_KINDS)
@torch.no_grad()
def test_adaptive_path_equals_the_rule_on_cached_logits(kind: str, attn: str) -> None:
    # the early-exit path compacts and trims the batch (select) as examples leave: its exits and logits
    # must be those the rule picks on the all-exits outputs of the full batch
    from elastic_cli import exits
    from elastic_cli.config import ExitRuleConfig
    from elastic_cli.models.multi_exit import MultiExitModel

    model = tiny_hf_model(kind, attn, num_layers=4)
    lengths = torch.randint(2, 12, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    input_ids, attention_mask = padded_batch(lengths, pad_id_of(model))
    token_type_ids = segment_ids(model, attention_mask)
    torch.manual_seed(0)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    multi_exit = MultiExitModel(adapter, [1, 2, 3, 4], num_labels=3, use_pretrained_pooler=False).eval()
    for classifier in multi_exit.heads.classifiers:  # random heads are near-uniform: spread their confidences
        classifier.weight.mul_(40.0)
    rule = exits.build_rule(ExitRuleConfig(name="maxprob"))
    cached = multi_exit(input_ids, attention_mask, token_type_ids)

    seen_exits: set[int] = set()
    for threshold in [0.4, 0.6, 0.8, 0.95]:
        expected_exit, expected_logits = exits.simulate(rule, cached, threshold)
        out = multi_exit.adaptive(input_ids, attention_mask, token_type_ids, rule, threshold)
        assert torch.equal(out.exit_index, expected_exit), threshold
        torch.testing.assert_close(out.logits, expected_logits, atol=1e-4, rtol=1e-4)
        seen_exits |= set(expected_exit.tolist())
    assert len(seen_exits) >= 3  # early and late exits both happen, so compaction really ran


# ---------------------------------------------------------------- drop_tokens (token dropping between layers)


def with_mask(adapter: BackboneAdapter, state: EncoderState, attention_mask: torch.Tensor) -> EncoderState:
    """`state` with another padding mask (and its 4D mask): tokens masked out, positions untouched."""
    extras = {**state.extras, "mask": adapter.attention_mask_4d(state.hidden, attention_mask)}
    return EncoderState(state.hidden, attention_mask, extras)


def run_from(adapter: BackboneAdapter, first: int, state: EncoderState) -> list[EncoderState]:
    """The states after layers `first`, `first + 1`, ... of the adapter."""
    states = []
    for i in range(first, adapter.num_layers):
        state = adapter.layer(i, state)
        states.append(state)
    return states


def test_drop_tokens_packs_the_kept_tokens_left_in_their_order() -> None:
    adapter = make_adapter("bert", tiny_hf_model("bert", num_layers=1))
    hidden = torch.arange(1.0, 5.0).view(1, 4, 1).expand(2, 4, 3).contiguous()  # token j holds j + 1
    state = EncoderState(hidden, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), {})
    keep = torch.tensor([[True, False, True, True], [False, True, False, True]])  # row 1 keeps a pad

    dropped = adapter.drop_tokens(state, keep)
    assert dropped.hidden[:, :, 0].tolist() == [[1.0, 3.0, 4.0], [2.0, 4.0, 0.0]]
    assert dropped.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert dropped.attention_mask.dtype == state.attention_mask.dtype
    with pytest.raises(ValueError, match="keep_mask has shape"):
        adapter.drop_tokens(state, keep[:, :3])


@pytest.mark.parametrize(("kind", "attn"), CASES)
@torch.no_grad()
def test_keeping_every_token_changes_nothing(kind: str, attn: str) -> None:
    model = tiny_hf_model(kind, attn)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    input_ids, attention_mask = padded_batch(LENGTHS, pad_id_of(model))
    state = adapter.embed(input_ids, attention_mask, segment_ids(model, attention_mask))

    dropped = adapter.drop_tokens(state, torch.ones_like(attention_mask, dtype=torch.bool))
    assert torch.equal(dropped.attention_mask, state.attention_mask)
    for ours, theirs in zip(run_from(adapter, 0, dropped), run_from(adapter, 0, state), strict=True):
        torch.testing.assert_close(ours.hidden, theirs.hidden, atol=0, rtol=0)


@pytest.mark.parametrize(("kind", "attn"), CASES)
@torch.no_grad()
def test_dropping_the_padding_leaves_the_real_tokens_outputs(kind: str, attn: str) -> None:
    # left-padded rows: dropping the padding moves every real token of a short row to the left, so the
    # layers after it see the tokens at other columns than the undropped run (at their original positions)
    model = tiny_hf_model(kind, attn)
    adapter = make_adapter(FAMILY_OF_KIND[kind], model)
    input_ids, attention_mask = padded_batch(LENGTHS, pad_id_of(model))
    input_ids, attention_mask = input_ids.flip(1), attention_mask.flip(1)
    state = adapter.embed(input_ids, attention_mask, segment_ids(model, attention_mask))

    dropped = adapter.drop_tokens(state, attention_mask.bool())
    assert dropped.hidden.shape[1] == max(LENGTHS)
    packed = dropped.attention_mask.bool()
    assert packed.sum(dim=1).tolist() == LENGTHS and torch.equal(
        packed.long(), packed.long().cummin(dim=1).values
    )
    real = attention_mask.bool()
    layers = zip(run_from(adapter, 0, dropped), run_from(adapter, 0, state), strict=True)
    for layer, (ours, theirs) in enumerate(layers):
        torch.testing.assert_close(
            ours.hidden[packed], theirs.hidden[real], atol=1e-5, rtol=0, msg=f"layer {layer}"
        )


# MPNet and DeBERTa carry positions outside the hidden states (a position bias, relative positions)
RELATIVE_KINDS = ["mpnet", "deberta", "deberta-v2"]


def make_positions_matter(model):
    """`model` with larger position terms: at random init (std 0.02) attention is so flat that moving a
    token changes the outputs by less than the tolerance of the checks."""
    encoder = model.encoder
    if hasattr(encoder, "relative_attention_bias"):  # MPNet
        encoder.relative_attention_bias.weight.mul_(50.0)
        return model
    encoder.rel_embeddings.weight.mul_(50.0)  # DeBERTa-v2 (the v3-like tiny model layer-norms them)
    for layer in encoder.layer:
        attention = layer.attention.self
        for name in ("query_proj", "key_proj", "pos_key_proj", "pos_query_proj"):
            if hasattr(attention, name):
                getattr(attention, name).weight.mul_(8.0)
    return model


def fresh_positions(adapter: BackboneAdapter, state: EncoderState) -> EncoderState:
    """`state` with its relative positions computed anew from its columns: what losing the original
    positions would give."""
    encoder = adapter.model.encoder
    name, fresh = (
        ("position_bias", encoder.compute_position_bias(state.hidden))
        if "position_bias" in state.extras
        else ("relative_pos", encoder.get_rel_pos(state.hidden))
    )
    return EncoderState(state.hidden, state.attention_mask, {**state.extras, name: fresh})


@pytest.mark.parametrize("kind", RELATIVE_KINDS)
@torch.no_grad()
def test_dropped_tokens_keep_their_original_positions(kind: str) -> None:
    # Dropping token j of a row must give the other tokens of that row exactly the outputs they get when
    # j stays in place, masked out by the attention mask: every token then still sits at its original
    # position, so its relative distances to the others are the original ones. Each row drops another
    # token (row 2 none), so the rows' relative positions differ; the last check shows the test would see
    # positions recomputed from the packed columns.
    model = make_positions_matter(tiny_hf_model(kind, "eager", num_layers=4))
    adapter = make_adapter("deberta" if kind.startswith("deberta") else kind, model)
    input_ids, attention_mask = padded_batch([10, 8, 10, 9], pad_id_of(model))
    # after layer 0: DeBERTa-v2's convolution in layer 0 reads neighbouring tokens
    state = adapter.layer(0, adapter.embed(input_ids, attention_mask))
    keep = attention_mask.bool().clone()
    keep[0, 3] = keep[1, 1] = keep[3, 5] = False

    dropped = adapter.drop_tokens(state, keep)
    assert dropped.hidden.shape[1] == 10 and dropped.attention_mask.sum(dim=1).tolist() == [9, 7, 10, 8]
    masked = with_mask(adapter, state, keep.long())
    reference = run_from(adapter, 1, masked)
    for layer, (ours, theirs) in enumerate(zip(run_from(adapter, 1, dropped), reference, strict=True)):
        torch.testing.assert_close(
            ours.hidden[dropped.attention_mask.bool()],
            theirs.hidden[keep],
            atol=1e-5,
            rtol=0,
            msg=f"layer {layer + 1}",
        )

    # select after drop_tokens: the kept rows keep their own relative positions
    rows = torch.tensor([3, 1])
    selected = run_from(adapter, 1, adapter.select(dropped, rows))[-1]
    real = selected.attention_mask.bool()
    assert real.sum(dim=1).tolist() == [8, 7] and selected.hidden.shape[1] == 8
    torch.testing.assert_close(
        selected.hidden[real], reference[-1].hidden[rows][keep[rows]], atol=1e-5, rtol=0
    )

    # control: the packed tokens at fresh (packed) positions do not give the reference outputs
    lost = run_from(adapter, 1, fresh_positions(adapter, dropped))[-1]
    difference = (lost.hidden[dropped.attention_mask.bool()] - reference[-1].hidden[keep]).abs().max()
    assert difference > 1e-3  # a hundred times the tolerance above


@pytest.mark.parametrize("kind", RELATIVE_KINDS)
@torch.no_grad()
def test_per_example_positions_of_one_row_are_those_of_the_full_sequence(kind: str) -> None:
    model = tiny_hf_model(kind, "eager", num_layers=2)
    adapter = make_adapter("deberta" if kind.startswith("deberta") else kind, model)
    input_ids, attention_mask = padded_batch([7, 7], pad_id_of(model))
    state = adapter.embed(input_ids, attention_mask)
    keep = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    dropped = adapter.drop_tokens(state, keep)
    name = "position_bias" if "position_bias" in state.extras else "relative_pos"
    full, packed = state.extras[name], dropped.extras[name]
    assert full is not None and packed is not None
    full = full.expand(2, *full.shape[1:])
    for row in range(2):
        kept = keep[row].nonzero().squeeze(1)
        width = len(kept)
        expected = full[row][..., kept, :][..., kept]
        torch.testing.assert_close(packed[row][..., :width, :width], expected, atol=0, rtol=0)


# ---------------------------------------------------------------- 4. truncation (SWEET's multi-model members)


def _hidden_after(adapter: BackboneAdapter, k: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    state = adapter.embed(ids, mask)
    for i in range(k):
        state = adapter.layer(i, state)
    return state.hidden


@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert", "albert", "deberta"])
def test_truncated_backbone_keeps_the_first_layers(family: str) -> None:
    full, tok = tiny_backbone(family, 4, random_texts(100, seed=3))
    enc = tok(random_texts(5, seed=11), padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for k in (1, 3):
        short = copy.deepcopy(full)
        short.truncate(k)
        assert short.num_layers == k and short.hf_config.num_hidden_layers == k
        layers = short._layer_list()
        assert layers is None or len(layers) == k
        with torch.no_grad():
            want = _hidden_after(full, k, ids, mask)
            torch.testing.assert_close(_hidden_after(short, k, ids, mask), want, atol=0, rtol=0)
            # Hugging Face's own forward of the truncated model stops after layer k too
            hf = short.model(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(hf[real], want[real], atol=1e-5, rtol=1e-5)
    assert full.num_layers == 4  # the original is untouched


@pytest.mark.parametrize("k", [0, 5, -1])
def test_truncating_out_of_range_is_a_user_error(k: int) -> None:
    full, _ = tiny_backbone("bert", 4, random_texts(100, seed=3))
    with pytest.raises(UserError, match="layers"):
        full.truncate(k)
    assert full.num_layers == 4


def test_albert_with_several_layer_groups_cannot_be_truncated() -> None:
    adapter = make_adapter("albert", tiny_hf_model("albert-groups", num_layers=4))
    with pytest.raises(UserError, match="ALBERT"):
        adapter.truncate(2)
    assert adapter.num_layers == 4
