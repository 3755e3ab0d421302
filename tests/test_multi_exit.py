"""The adaptive (early-exit) path equals the rule applied to cached all-exits logits, batched and at batch
size 1; the static forward is the last exit (a multi-exit model's checkpoints: test_checkpoint.py)."""

from __future__ import annotations

import pytest
import torch

from elastic_cli import exits
from elastic_cli.config import BackboneConfig, ExitRuleConfig, TinyBackboneConfig
from elastic_cli.models.heads import HeadSpec
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))

WORDS = "good great fine bad awful poor the a movie film plot actor was is very not quite".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(2, 14, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


def _model(
    family: str, exit_layers=(1, 2, 3, 4), head: HeadSpec | None = None, lte: bool = False
) -> tuple[MultiExitModel, object]:
    torch.manual_seed(0)
    cfg = BackboneConfig(
        name=f"tiny-{family}",
        family=family,
        path="random",
        tiny=TinyBackboneConfig(
            num_layers=4, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=200
        ),
        use_pretrained_pooler=False,
    )
    backbone, tok = build_backbone(cfg, train_texts=_texts(300), seed=0)
    model = MultiExitModel(
        backbone, list(exit_layers), num_labels=3, head=head, use_pretrained_pooler=False, lte=lte
    )
    with torch.no_grad():  # random heads are near-uniform: spread their confidences so exits differ
        for name, p in model.heads.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                p.mul_(40.0)
    return model.eval(), tok


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")


CASES = [
    ("bert", HeadSpec(), "maxprob"),
    ("mpnet", HeadSpec(pooling="mean"), "maxprob"),
    ("bert", HeadSpec(kind="shared_pooler"), "maxprob"),
    ("bert", HeadSpec(kind="shared"), "maxprob"),
    ("bert", HeadSpec(kind="fastbert", width=16, attention_heads=2), "maxprob"),
    ("bert", HeadSpec(), "lte"),
]


@pytest.mark.parametrize("family,head,rule_name", CASES)
def test_adaptive_equals_simulation_batched_and_batch1(family, head, rule_name):
    model, tok = _model(family, head=head, lte=rule_name == "lte")
    rule = exits.build_rule(ExitRuleConfig(name=rule_name))
    if rule_name == "lte":
        with torch.no_grad():  # a random LTE module scores near 0.5: spread it
            model.lte.weight.mul_(30.0)
    texts = _texts(24, seed=1)
    ids, mask, types = _batch(tok, texts)
    temps = torch.tensor([1.3, 0.8, 1.0, 1.1])
    with torch.no_grad():
        cached = model(ids, mask, types)
    seen_exits = set()
    if rule_name == "maxprob":
        grid = torch.linspace(0.34, 1.0, 23).tolist()
    else:  # thresholds between the LTE scores the model actually gives
        grid = torch.quantile(cached.lte.flatten(), torch.linspace(0.05, 0.95, 9)).tolist()
    for threshold in grid:
        sim_idx, sim_logits = exits.simulate(rule, cached, threshold, temps)
        with torch.no_grad():
            out = model.adaptive(ids, mask, types, rule, threshold, temps)
        assert torch.equal(out.exit_index, sim_idx), threshold
        assert torch.equal(out.logits.argmax(-1), sim_logits.argmax(-1))
        torch.testing.assert_close(out.logits, sim_logits, atol=1e-4, rtol=1e-4)
        seen_exits |= set(sim_idx.tolist())
        # batch 1, one example at a time (the latency path)
        for i, text in enumerate(texts[:8]):
            one = _batch(tok, [text])
            with torch.no_grad():
                single = model.adaptive(*one, rule, threshold, temps)
            assert int(single.exit_index) == int(sim_idx[i])
            assert int(single.logits.argmax()) == int(sim_logits[i].argmax())
    # the thresholds really exercise early and late exits, so the equality above means something
    assert len(seen_exits) >= 3


def test_static_forward_is_the_last_exit():
    model, tok = _model("bert", exit_layers=(2, 4))
    ids, mask, types = _batch(tok, _texts(6, seed=2))
    with torch.no_grad():
        torch.testing.assert_close(
            model.static_forward(ids, mask, types), model(ids, mask, types).logits[:, -1]
        )


def test_threshold_one_never_exits_early_and_lowest_always_exits_first():
    model, tok = _model("bert")
    ids, mask, types = _batch(tok, _texts(10, seed=3))
    rule = MAXPROB
    with torch.no_grad():
        assert model.adaptive(ids, mask, types, rule, 1.0 + 1e-9).exit_index.tolist() == [3] * 10
        assert model.adaptive(ids, mask, types, rule, 0.0).exit_index.tolist() == [0] * 10
