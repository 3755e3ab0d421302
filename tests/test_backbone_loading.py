"""build_backbone (tiny, local folder, hub id, ElasticBERT layout), and the checkpoint round trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import save_file
from tiny_models import SAMPLE_TEXTS, padded_batch, tiny_backbone_config
from transformers import AlbertModel, BertConfig, BertModel

from elastic_cli.checks import to_root
from elastic_cli.config import BackboneConfig
from elastic_cli.errors import UserError
from elastic_cli.models.adapters import BackboneAdapter
from elastic_cli.models.loading import backbone_from_folder, build_backbone, save_backbone_files
from elastic_cli.plugins import register_configs


@torch.no_grad()
def final_hidden(adapter: BackboneAdapter, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
    state = adapter.embed(input_ids, attention_mask, token_type_ids)
    for i in range(adapter.num_layers):
        state = adapter.layer(i, state)
    return state.hidden


def encode(tokenizer, texts, pairs=None):
    return tokenizer(texts, pairs, padding=True, return_tensors="pt")


def run_encoded(adapter, batch) -> torch.Tensor:
    return final_hidden(adapter, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


CONF = Path(__file__).resolve().parent.parent / "conf"
FAMILIES = ["bert", "mpnet", "albert", "deberta", "distilbert"]
# the attention implementation each family's model gets (sdpa where transformers has it)
ATTENTION_OF_FAMILY = {
    "bert": "sdpa",
    "mpnet": "eager",
    "albert": "sdpa",
    "deberta": "eager",
    "distilbert": "sdpa",
}

# ---------------------------------------------------------------- tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_backbone_has_the_configured_dims_and_a_trained_tokenizer(family: str) -> None:
    cfg = tiny_backbone_config(
        family, num_layers=3, hidden_size=32, num_heads=4, intermediate_size=48, vocab_size=150
    )
    adapter, tokenizer = build_backbone(cfg, SAMPLE_TEXTS, seed=1)

    assert adapter.family == family
    assert (adapter.num_layers, adapter.hidden_size, adapter.num_heads, adapter.intermediate_size) == (
        3,
        32,
        4,
        48,
    )
    assert adapter.hf_config.vocab_size == 150
    assert len(tokenizer) <= 150
    assert adapter.hf_config.pad_token_id == tokenizer.pad_token_id
    # learned from the texts: the most frequent word is one token, a rare one splits into pieces
    # that decode back to it, and an unseen character is [UNK]
    assert tokenizer.tokenize("the") == ["the"]
    assert len(tokenizer.tokenize("soundtrack")) > 1
    assert tokenizer.decode(
        encode(tokenizer, ["the soundtrack"])["input_ids"][0], skip_special_tokens=True
    ) == ("the soundtrack")
    assert tokenizer.convert_ids_to_tokens(encode(tokenizer, ["the €"])["input_ids"][0].tolist()) == [
        "[CLS]",
        "the",
        "[UNK]",
        "[SEP]",
    ]
    expected_positions = 128 + 2 if family == "mpnet" else 128  # MPNet positions start after padding_idx=1
    assert adapter.hf_config.max_position_embeddings == expected_positions


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_tiny_tokenizer_encodes_pairs_with_segment_ids(family: str) -> None:
    adapter, tokenizer = build_backbone(tiny_backbone_config(family), SAMPLE_TEXTS)
    batch = tokenizer(["the movie"], ["a dull film"])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens == ["[CLS]", "the", "movie", "[SEP]", "a", "dull", "film", "[SEP]"]
    assert batch["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert adapter.hf_config.type_vocab_size == 2


@pytest.mark.parametrize("family", ["mpnet", "deberta", "distilbert"])
def test_tiny_tokenizer_of_a_model_without_segments_returns_no_token_types(family: str) -> None:
    adapter, tokenizer = build_backbone(tiny_backbone_config(family), SAMPLE_TEXTS)
    batch = tokenizer(["the movie"], ["a dull film"])
    assert "token_type_ids" not in batch
    assert getattr(adapter.hf_config, "type_vocab_size", 0) == 0  # DeBERTa-v3 style: no segment embeddings


@pytest.mark.parametrize("family", ["albert", "deberta", "distilbert"])
def test_tiny_special_ids_match_the_real_vocabularies(family: str) -> None:
    # pad 0 like albert-base-v2, deberta-v3-base and distilbert-base-uncased; ALBERT's bos/eos are CLS/SEP
    adapter, tokenizer = build_backbone(tiny_backbone_config(family), SAMPLE_TEXTS)
    assert tokenizer.pad_token_id == adapter.hf_config.pad_token_id == 0
    if family == "albert":
        assert (adapter.hf_config.bos_token_id, adapter.hf_config.eos_token_id) == (
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
        )
        assert adapter.hf_config.embedding_size == adapter.hidden_size // 2
        assert adapter.pretrained_pooler() is not None  # random, but the exit heads may start from it
    if family == "deberta":
        config = adapter.hf_config
        assert (config.relative_attention, config.position_buckets, config.share_att_key) == (True, 64, True)
        assert config.pos_att_type == ["p2c", "c2p"] and not config.position_biased_input


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_backbone_is_deterministic_for_a_seed(family: str) -> None:
    cfg = tiny_backbone_config(family)
    first, first_tok = build_backbone(cfg, SAMPLE_TEXTS, seed=3)
    again, again_tok = build_backbone(cfg, SAMPLE_TEXTS, seed=3)
    other, _ = build_backbone(cfg, SAMPLE_TEXTS, seed=4)

    assert first_tok.get_vocab() == again_tok.get_vocab()
    same = first.state_dict()
    assert all(torch.equal(same[key], value) for key, value in again.state_dict().items())
    different = [key for key, value in other.state_dict().items() if not torch.equal(same[key], value)]
    assert any(".weight" in key and "LayerNorm" not in key for key in different)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_backbone_ignores_padding(family: str) -> None:
    # MPNet derives positions from the pad id: a padded row must equal the row run alone
    adapter, tokenizer = build_backbone(tiny_backbone_config(family), SAMPLE_TEXTS)
    texts = ["I loved every minute of it!", "boring"]
    together = run_encoded(adapter, encode(tokenizer, texts))
    alone = run_encoded(adapter, encode(tokenizer, texts[1:]))
    length = alone.shape[1]
    torch.testing.assert_close(together[1, :length], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["albert", "deberta", "distilbert"])
def test_tiny_yaml_builds_a_backbone_of_its_dims(family: str) -> None:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_root(compose(config_name="train", overrides=[f"backbone=tiny-{family}"])).backbone
    GlobalHydra.instance().clear()
    assert (cfg.family, cfg.path) == (family, "random") and cfg.tiny is not None
    adapter, tokenizer = build_backbone(cfg, SAMPLE_TEXTS, seed=0)
    tiny = cfg.tiny
    assert adapter.family == family
    assert (adapter.num_layers, adapter.hidden_size, adapter.num_heads, adapter.intermediate_size) == (
        tiny.num_layers,
        tiny.hidden_size,
        tiny.num_heads,
        tiny.intermediate_size,
    )
    assert len(tokenizer) <= tiny.vocab_size == adapter.hf_config.vocab_size
    assert adapter.hf_config.max_position_embeddings == tiny.max_position_embeddings
    assert run_encoded(adapter, encode(tokenizer, SAMPLE_TEXTS[:3])).shape[-1] == tiny.hidden_size


def test_tiny_backbone_needs_training_texts() -> None:
    with pytest.raises(UserError, match="tokenizer on the task's texts"):
        build_backbone(tiny_backbone_config("bert"), None)


def test_tiny_vocab_too_small_for_the_texts_is_a_user_error() -> None:
    with pytest.raises(UserError, match="vocab_size=6 leaves no room"):
        build_backbone(tiny_backbone_config("bert", vocab_size=6), SAMPLE_TEXTS)
    # a small budget keeps the most frequent characters and maps the others to [UNK]
    _, tokenizer = build_backbone(tiny_backbone_config("bert", vocab_size=9), SAMPLE_TEXTS)
    assert len(tokenizer) <= 9
    assert tokenizer.tokenize("t e") == ["t", "[UNK]"]  # t is the most frequent character


# ---------------------------------------------------------------- checkpoint round trip


def settings(config) -> dict:
    return {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}


@pytest.mark.parametrize("family", FAMILIES)
def test_save_files_then_rebuild_from_folder_gives_the_same_model(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter, tokenizer = build_backbone(tiny_backbone_config(family, num_layers=2), SAMPLE_TEXTS, seed=5)
    save_backbone_files(adapter, tokenizer, tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))  # no weights

    rebuilt, rebuilt_tokenizer = backbone_from_folder(tmp_path, family)
    assert type(rebuilt.model) is type(adapter.model)
    assert (rebuilt.num_layers, rebuilt.hidden_size, rebuilt.num_heads) == (2, 32, 2)
    assert rebuilt.hf_config._attn_implementation == adapter.hf_config._attn_implementation
    # every architecture setting comes back, DeBERTa's extra keys (position_buckets, ...) included
    assert settings(rebuilt.hf_config) == settings(adapter.hf_config)

    texts = ["the movie was wonderful", "a dull film"]
    batch = encode(tokenizer, texts)
    assert torch.equal(encode(rebuilt_tokenizer, texts)["input_ids"], batch["input_ids"])
    assert rebuilt_tokenizer.model_input_names == tokenizer.model_input_names  # token types or not
    assert not torch.allclose(
        run_encoded(rebuilt, batch), run_encoded(adapter, batch)
    )  # random weights first
    rebuilt.load_state_dict(adapter.state_dict())
    torch.testing.assert_close(run_encoded(rebuilt, batch), run_encoded(adapter, batch), atol=0, rtol=0)


def test_rebuild_from_a_folder_without_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no config.json"):
        backbone_from_folder(tmp_path, "bert")


# ---------------------------------------------------------------- local folders and the hub


def save_hf_folder(family: str, folder: Path, with_pooler: bool = True) -> BackboneAdapter:
    """A tiny HF model folder (config, weights, tokenizer) as from_pretrained expects."""
    adapter, tokenizer = build_backbone(tiny_backbone_config(family, num_layers=2), SAMPLE_TEXTS, seed=7)
    model = adapter.model
    if not with_pooler:
        model = BertModel(adapter.hf_config, add_pooling_layer=False)
        model.load_state_dict(adapter.model.state_dict(), strict=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return adapter


@pytest.mark.parametrize("family", FAMILIES)
def test_local_folder_loads_weights_tokenizer_and_attention(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = save_hf_folder(family, tmp_path)
    loaded, tokenizer = build_backbone(BackboneConfig(name="local", family=family, path=str(tmp_path)))

    assert loaded.hf_config._attn_implementation == ATTENTION_OF_FAMILY[family]
    assert not loaded.model.training
    has_pooler = family in ("bert", "mpnet", "albert")
    assert (loaded.pretrained_pooler() is not None) == has_pooler
    batch = encode(tokenizer, ["the movie was wonderful", "boring"])
    torch.testing.assert_close(run_encoded(loaded, batch), run_encoded(saved, batch), atol=1e-6, rtol=0)


def test_checkpoint_without_pooler_reports_no_pretrained_pooler(tmp_path: Path) -> None:
    save_hf_folder("bert", tmp_path, with_pooler=False)
    loaded, _ = build_backbone(BackboneConfig(name="local", family="bert", path=str(tmp_path)))
    assert loaded.pretrained_pooler() is None


def test_albert_checkpoint_without_pooler_reports_no_pretrained_pooler(tmp_path: Path) -> None:
    adapter, tokenizer = build_backbone(tiny_backbone_config("albert", num_layers=2), SAMPLE_TEXTS)
    AlbertModel(adapter.hf_config, add_pooling_layer=False).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = build_backbone(BackboneConfig(name="local", family="albert", path=str(tmp_path)))
    assert loaded.pretrained_pooler() is None


def test_family_that_does_not_fit_the_folder_is_a_user_error(tmp_path: Path) -> None:
    save_hf_folder("bert", tmp_path)
    with pytest.raises(UserError, match="backbone.family=mpnet cannot run a 'bert' model"):
        build_backbone(BackboneConfig(name="local", family="mpnet", path=str(tmp_path)))


def test_missing_local_folder_is_a_user_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(UserError, match=f"no such folder \\({missing}\\)"):
        build_backbone(BackboneConfig(name="x", family="bert", path=str(missing)))
    with pytest.raises(UserError, match=f"no such folder \\({Path.home()}/"):
        build_backbone(BackboneConfig(name="x", family="bert", path="~/surely/not/a/model/folder"))
    with pytest.raises(UserError, match="backbone.path is empty"):
        build_backbone(BackboneConfig(name="x", family="bert", path=""))


def test_folder_that_is_not_a_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no config.json"):
        build_backbone(BackboneConfig(name="x", family="bert", path=str(tmp_path)))


def test_unreachable_hub_id_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as caught:
        build_backbone(BackboneConfig(name="x", family="bert", path="elastic-tests/no-such-model"))
    message = str(caught.value)
    assert message.startswith(
        "cannot load 'elastic-tests/no-such-model' from the Hugging Face hub (offline?)"
    )
    assert "backbone=minilm-l6 / mpnet-base with ELASTIC_MODELS set" in message
    assert "\n" not in message


# ---------------------------------------------------------------- ElasticBERT layout


def write_elasticbert_folder(folder: Path) -> BertModel:
    """A folder in ElasticBERT's layout (model_type "elasticbert", "elasticbert." prefix, per-layer poolers)
    holding the weights of a tiny BertModel, which is returned."""
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    bert = BertModel(config).eval()
    weights = {}
    for name, tensor in bert.state_dict().items():
        if name.startswith("pooler."):
            weights[f"elasticbert.encoder.pooler.1.{name[len('pooler.') :]}"] = tensor.clone()
        else:
            weights[f"elasticbert.{name}"] = tensor.clone()
    weights["elasticbert.encoder.pooler.0.dense.weight"] = torch.zeros(32, 32)  # an earlier exit's pooler
    weights["cls.predictions.bias"] = torch.zeros(40)  # the pretraining head: ignored
    save_file(weights, str(folder / "model.safetensors"))
    raw = config.to_dict() | {"model_type": "elasticbert", "architectures": ["ElasticBertForPreTraining"],
                              "num_output_layers": 1, "max_output_layers": 2}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(raw))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return bert


def test_elasticbert_layout_loads_as_bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bert = write_elasticbert_folder(tmp_path)
    adapter, tokenizer = build_backbone(BackboneConfig(name="elasticbert", family="bert", path=str(tmp_path)))

    assert isinstance(adapter.model, BertModel)
    for name, tensor in bert.state_dict().items():
        assert torch.equal(adapter.model.state_dict()[name], tensor), name
    assert adapter.pretrained_pooler() is adapter.model.pooler
    assert tokenizer("the movie was great")["input_ids"] == [2, 5, 6, 7, 8, 3]
    input_ids, attention_mask = padded_batch([5, 3], pad_id=0, vocab_size=40)
    expected = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool()
    torch.testing.assert_close(
        final_hidden(adapter, input_ids, attention_mask)[real], expected[real], atol=1e-5, rtol=0
    )


def test_unknown_model_type_needs_the_bert_family(tmp_path: Path) -> None:
    write_elasticbert_folder(tmp_path)
    with pytest.raises(UserError, match="'elasticbert' model, unknown to transformers"):
        build_backbone(BackboneConfig(name="elasticbert", family="mpnet", path=str(tmp_path)))


# ---------------------------------------------------------------- real models


REAL_MODELS = os.environ.get("ELASTIC_MODELS")


@pytest.mark.real
@pytest.mark.skipif(not REAL_MODELS, reason="ELASTIC_MODELS is not set")
@pytest.mark.parametrize(("name", "family"), [("minilm-l6", "bert"), ("mpnet-base", "mpnet")])
@torch.no_grad()
def test_real_backbone_matches_the_hf_forward(
    name: str, family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(Path(REAL_MODELS or "") / name)
    adapter, tokenizer = build_backbone(BackboneConfig(name=name, family=family, path=path))
    assert adapter.pretrained_pooler() is not None or family == "bert"
    batch = encode(
        tokenizer, ["A short one.", "This second sentence is quite a bit longer than the first one."]
    )
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()

    reference = adapter.model(**batch, output_hidden_states=True).hidden_states
    state = adapter.embed(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(state.hidden[real], reference[0][real], atol=1e-5, rtol=0)
    for i in range(adapter.num_layers):
        state = adapter.layer(i, state)
        torch.testing.assert_close(
            state.hidden[real], reference[i + 1][real], atol=1e-5, rtol=0, msg=f"layer {i}"
        )
