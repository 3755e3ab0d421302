"""Cascades of separately trained models (elastic_cli/models/cascade.py: E-LANG's swift/super pair,
SWEET's multi-model baseline): the adaptive path against the exit rule on cached logits, members with
different tokenizers, the static path and the shapes a cascade refuses. Elsewhere: the energy router in
test_exits.py, a cascade's cost accounting in test_cost.py, its threshold curve and super-fraction
target in test_calibration.py, backbone truncation in test_adapters.py, the cascade folder's files
and a truncated model's checkpoint in test_checkpoint.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import random_texts

from elastic_cli import exits
from elastic_cli.config import BackboneConfig, ExitRuleConfig, TinyBackboneConfig
from elastic_cli.data import Batch, Encoded, Split, batches, encode
from elastic_cli.exits import EnergyExitConfig
from elastic_cli.models.cascade import Cascade, Member
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))


def _energy(temperature: float = 1.0) -> exits.Energy:
    rule = exits.build_rule(EnergyExitConfig(temperature=temperature))
    assert isinstance(rule, exits.Energy)
    return rule


def _member(name: str, family: str, layers: int, vocab: int, seed: int) -> Member:
    cfg = BackboneConfig(
        name=f"tiny-{family}",
        family=family,
        path="random",
        tiny=TinyBackboneConfig(
            num_layers=layers, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=vocab
        ),
        use_pretrained_pooler=False,
    )
    train_texts = random_texts(200, seed=100)
    backbone, tok = build_backbone(cfg, train_texts=train_texts, seed=seed)
    torch.manual_seed(seed)
    model = MultiExitModel(backbone, [layers], num_labels=3, use_pretrained_pooler=False).eval()
    # a random model gives nearly the same logits to every input: centre them and spread what differs
    # (logit std 2), so that confidences and energies vary and overlap between the members
    enc = tok(train_texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    classifier = model.heads.classifiers[0]
    with torch.no_grad():
        z = model.static_forward(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        mean = z.mean(dim=0)
        scale = 2.0 / float((z - mean).std())
        classifier.weight.mul_(scale)
        classifier.bias.sub_(mean).mul_(scale)
    return Member(name, model, tok, 32, Path("unused"))


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    # three families, three vocabularies (different token counts per example), smallest first
    return Cascade(
        [
            _member("small", "bert", 2, 60, seed=1),
            _member("mid", "mpnet", 3, 250, seed=2),
            _member("super", "distilbert", 4, 100, seed=3),
        ]
    ).eval()


def _encoded(c: Cascade, texts: list[str]) -> list[Encoded]:
    split = Split("eval", [(t,) for t in texts], np.zeros(len(texts), dtype=np.int64))
    return [encode(split, m.tokenizer, m.max_seq_length) for m in c.members]


def _groups(c: Cascade, enc: list[Encoded], batch_size: int, indices: list[int]) -> list[list[Batch]]:
    per_member = [
        list(batches(e, batch_size, pad_id=m.pad_id, indices=indices))
        for m, e in zip(c.members, enc, strict=True)
    ]
    return [list(group) for group in zip(*per_member, strict=True)]


def _thresholds(rule: exits.ExitRule, signals: exits.ExitSignals) -> list[float]:
    if rule.name == "maxprob":
        return torch.linspace(0.34, 1.0, 8).tolist()
    # midpoints between neighbouring deciding scores: no score sits on a threshold, so float noise
    # between a padded and an unpadded batch cannot flip a decision
    s = torch.sort(_energy().score(signals.logits[:, :-1].double()).flatten()).values
    picks = torch.linspace(0, len(s) - 2, 6).round().long()
    return (((s[picks] + s[picks + 1]) / 2).tolist()) + [float(s[0]) - 1.0, float(s[-1]) + 1.0]


@pytest.mark.parametrize("rule_name", ["maxprob", "energy"])
def test_adaptive_cascade_equals_simulation_on_cached_logits(cascade: Cascade, rule_name: str) -> None:
    texts = random_texts(16, seed=7)
    enc = _encoded(cascade, texts)
    # the members really tokenise differently, so each reads its own batch
    assert not np.array_equal(enc[0].lengths, enc[1].lengths)
    assert not np.array_equal(enc[1].lengths, enc[2].lengths)
    whole = _groups(cascade, enc, len(texts), list(range(len(texts))))[0]
    with torch.no_grad():
        stacked = torch.stack(
            [
                m.model.static_forward(b.input_ids, b.attention_mask, b.token_type_ids)
                for m, b in zip(cascade.members, whole, strict=True)
            ],
            dim=1,
        )  # [N, 3, C]
    signals = exits.ExitSignals(stacked)
    rule = MAXPROB if rule_name == "maxprob" else _energy(1.0)
    temps = torch.tensor([1.4, 0.8, 1.0]) if rule_name == "maxprob" else None
    # shuffled rows in batches of 6: every member pads each batch to its own longest row
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    seen: set[int] = set()
    mixed = 0  # thresholds that split the examples over all three models (compaction at every step)
    for threshold in _thresholds(rule, signals):
        sim_idx, sim_logits = exits.simulate(rule, signals, threshold, temps)
        seen |= set(sim_idx.tolist())
        mixed += len(set(sim_idx.tolist())) == 3
        for group in _groups(cascade, enc, 6, order):
            rows = group[0].index
            with torch.no_grad():
                out = cascade.adaptive(group, rule, threshold, temps)
            assert torch.equal(out.exit_index, sim_idx[rows]), threshold
            torch.testing.assert_close(out.logits, sim_logits[rows], atol=2e-4, rtol=1e-4)
        for i in range(0, len(texts), 3):  # batch 1, the latency path
            with torch.no_grad():
                single = cascade.adaptive(_groups(cascade, enc, 1, [i])[0], rule, threshold, temps)
            assert int(single.exit_index) == int(sim_idx[i]), (threshold, i)
            torch.testing.assert_close(single.logits[0], sim_logits[i], atol=2e-4, rtol=1e-4)
    assert seen == {0, 1, 2}  # some thresholds stop examples at every member
    assert mixed >= 2


def test_static_is_the_last_model_alone(cascade: Cascade) -> None:
    texts = random_texts(9, seed=8)
    enc = _encoded(cascade, texts)
    group = _groups(cascade, enc, 4, list(range(9)))[1]  # a middle batch
    last = cascade.members[-1].model
    b = group[-1]
    with torch.no_grad():
        got = cascade.static(group)
        torch.testing.assert_close(got, last.static_forward(b.input_ids, b.attention_mask, b.token_type_ids))
        # and it is the last model's own forward, not the first model's
        first = cascade.members[0].model.static_forward(
            group[0].input_ids, group[0].attention_mask, group[0].token_type_ids
        )
    assert not torch.allclose(got, first)
    assert cascade.names == ["small", "mid", "super"]


def test_cascade_refuses_wrong_shapes(cascade: Cascade) -> None:
    enc = _encoded(cascade, random_texts(3, seed=9))
    group = _groups(cascade, enc, 3, [0, 1, 2])[0]
    with pytest.raises(ValueError, match="batches"):
        cascade.adaptive(group[:2], MAXPROB, 0.5)
    backbone, tok = build_backbone(
        BackboneConfig(
            name="t", family="bert", path="random", tiny=TinyBackboneConfig(num_layers=2, vocab_size=60)
        ),
        train_texts=random_texts(50, seed=1),
    )
    two_exits = MultiExitModel(backbone, [1, 2], 3, use_pretrained_pooler=False)
    with pytest.raises(ValueError, match="single exit"):
        Cascade([Member("two-exit", two_exits, tok, 32, Path("x"))])
    with pytest.raises(ValueError):
        Cascade([])
