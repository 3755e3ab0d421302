"""Cascades of separately trained models (E-LANG's swift/super pair, SWEET's multi-model baseline):
the energy router, the cascade's cost accounting, the adaptive path against the rule on cached logits,
backbone truncation and the super-fraction target (the cascade folder's files: test_checkpoint.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from tiny_models import tiny_hf_model

from elastic_cli import calibration, checkpoint, cost, exits
from elastic_cli.config import BackboneConfig, ExitRuleConfig, TinyBackboneConfig
from elastic_cli.cost import EncoderDims, ExitCosts
from elastic_cli.data import Batch, Encoded, Split, batches, encode
from elastic_cli.errors import UserError
from elastic_cli.exits import EnergyExitConfig
from elastic_cli.models.adapters import BackboneAdapter, make_adapter
from elastic_cli.models.cascade import Cascade, Member
from elastic_cli.models.loading import build_backbone
from elastic_cli.models.multi_exit import MultiExitModel

MAXPROB = exits.build_rule(ExitRuleConfig(name="maxprob"))


def _energy(temperature: float = 1.0) -> exits.Energy:
    rule = exits.build_rule(EnergyExitConfig(temperature=temperature))
    assert isinstance(rule, exits.Energy)
    return rule


# ---------------------------------------------------------------- 1. the energy router


def test_energy_score_is_t_logsumexp_z_over_t() -> None:
    # logits whose logsumexp is known in closed form: log(1 + 2 + 3) = log 6
    z = torch.tensor([[math.log(1.0), math.log(2.0), math.log(3.0)], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(_energy(1.0).score(z), torch.tensor([math.log(6.0), math.log(3.0)]).double())
    # T = 2: 2 log(sum exp(z / 2)) = 2 log(1 + sqrt 2 + sqrt 3), and 2 log 3 for equal logits
    expected_t2 = torch.tensor([2 * math.log(1 + math.sqrt(2) + math.sqrt(3)), 2 * math.log(3.0)]).double()
    torch.testing.assert_close(_energy(2.0).score(z), expected_t2)
    # a plain rule config (no YAML) takes E-LANG's default T = 1
    plain = exits.build_rule(ExitRuleConfig(name="energy"))
    torch.testing.assert_close(
        plain.decide(exits.ExitSignals(z[:, None]), 1.5)[:, 0], torch.tensor([True, False])
    )


def test_energy_routes_e_langs_examples() -> None:
    # E-LANG's README threshold 1.31 on 2-class logits: confident (+3, -3) stays with the swift model,
    # near-uniform (0.1, -0.1) goes on to the super model
    swift = torch.tensor([[3.0, -3.0], [0.1, -0.1]])
    rule = _energy(1.0)
    s = rule.score(swift)
    assert s[0].item() == pytest.approx(3.0 + math.log1p(math.exp(-6.0)), abs=1e-6)  # ~3.0025
    assert s[1].item() == pytest.approx(math.log(2 * math.cosh(0.1)), abs=1e-6)  # ~0.698
    assert s[0].item() == pytest.approx(3.0025, abs=1e-4)
    assert s[1].item() == pytest.approx(0.6981, abs=1e-4)
    # with T = 2 the confident score is 3 + 2 log(1 + e^-3)
    assert _energy(2.0).score(swift)[0].item() == pytest.approx(
        3.0 + 2 * math.log1p(math.exp(-3.0)), abs=1e-6
    )
    signals = exits.ExitSignals(torch.stack([swift, torch.zeros(2, 2)], dim=1))  # [N, 2 models, C]
    idx, chosen = exits.simulate(rule, signals, 1.31)
    assert idx.tolist() == [0, 1]  # swift keeps the first, super takes the second
    torch.testing.assert_close(chosen, torch.tensor([[3.0, -3.0], [0.0, 0.0]]))


def test_energy_decisions_and_swift_super_split() -> None:
    # scores 0.5, 1.0, ..., 3.0 by construction: equal logits c give s = c + log C (T = 1)
    c = 2
    targets = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    swift = (targets - math.log(c)).unsqueeze(1).expand(-1, c).clone()
    signals = exits.ExitSignals(torch.stack([swift, swift + 10.0], dim=1))
    rule = _energy(1.0)
    torch.testing.assert_close(rule.score(swift), targets)
    for t, n_super in [(0.0, 0), (0.75, 1), (1.75, 3), (2.9, 5), (3.5, 6)]:
        stay = exits.decisions(rule, signals, t)[:, 0]
        assert stay.tolist() == (targets >= t).tolist()  # go on iff s < t
        idx, _ = exits.simulate(rule, signals, t)
        assert int((idx == 1).sum()) == n_super, t
    # a score exactly at the threshold stays (s >= t)
    s0 = float(rule.score(swift)[2])
    assert bool(exits.decisions(rule, signals, s0)[2, 0])
    # with T = 2 equal logits c score 2 log(C e^{c/2}) = c + 2 log C: log C above the T = 1 score
    rule2 = _energy(2.0)
    torch.testing.assert_close(rule2.score(swift), targets + math.log(c))
    idx2, _ = exits.simulate(rule2, signals, 1.75)
    assert int((idx2 == 1).sum()) == 2  # only s + log 2 < 1.75, i.e. s in {0.5, 1.0}


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_energy_refuses_a_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(UserError, match="temperature"):
        exits.build_rule(EnergyExitConfig(temperature=temperature))


def _grid_case(seed: int) -> tuple[exits.Energy, exits.ExitSignals, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 3, 4, generator=g) * 3.0  # float32, as cached logits are
    logits[:, -1] += 100.0  # the last model never decides: its scores must not set the grid
    signals = exits.ExitSignals(logits)
    rule = _energy(1.5)
    return rule, signals, rule.grid(4, 3, 25, signals)


def test_energy_grid_is_ascending_and_ends_with_all_go_on() -> None:
    rule, signals, grid = _grid_case(0)
    assert grid.dtype == torch.float64
    assert torch.all(grid[1:] > grid[:-1])  # strictly ascending
    assert len(grid) <= 25
    assert float(grid[-1]) < 50.0  # placed on the first two models' scores only
    last, _ = exits.simulate(rule, signals, float(grid[-1]))
    assert last.tolist() == [2] * 40  # every example goes on to the last model
    # a larger threshold only sends more examples on, and the grid walks through them
    mean_exit = [float(exits.simulate(rule, signals, float(t))[0].double().mean()) for t in grid]
    assert all(a <= b for a, b in zip(mean_exit, mean_exit[1:], strict=False))
    assert len(set(mean_exit)) > 5
    assert mean_exit[1] < 0.1  # the low end keeps (nearly) everything at the first model


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_energy_grid_first_point_keeps_every_example_at_the_first_model(seed: int) -> None:
    # the lowest point is the lowest score as `decide` computes it (in the logits' dtype): computed in
    # float64 it sat an ulp above the float32 score of that example and sent it on (seed 0)
    rule, signals, grid = _grid_case(seed)
    first, _ = exits.simulate(rule, signals, float(grid[0]))
    assert first.tolist() == [0] * 40
    # the calibration path (all thresholds at once, in the logits' dtype) must agree
    idx = calibration.exit_indices(rule, signals, [float(grid[0])], None)
    assert idx[0].tolist() == [0] * 40


# ---------------------------------------------------------------- 2. cost accounting

DIMS_3 = [
    EncoderDims(num_layers=2, hidden=32, intermediate=64, heads=2, num_labels=3),
    EncoderDims(num_layers=4, hidden=48, intermediate=96, heads=4, num_labels=3),
    EncoderDims(num_layers=6, hidden=64, intermediate=128, heads=4, num_labels=3),
]
# the same four examples under three tokenizers: lengths differ per member
TOKENS_3 = [np.array([5, 9, 12, 7]), np.array([6, 11, 15, 7]), np.array([4, 8, 10, 9])]


def _own(member: int, example: int) -> float:
    """One member's static FLOPs on one example at that member's own length."""
    n = np.array([TOKENS_3[member][example]], dtype=np.float64)
    return float(cost.static_flops(n, DIMS_3[member])[0])


def test_cascade_costs_pay_every_model_run_at_its_own_length() -> None:
    costs = ExitCosts.cascade(TOKENS_3, DIMS_3)
    exit_index = np.array([0, 1, 2, 1])
    expected = np.array([sum(_own(j, n) for j in range(k + 1)) for n, k in enumerate(exit_index)])
    np.testing.assert_allclose(costs.exit_flops[np.arange(4), exit_index], expected, rtol=1e-12)
    # every exit of every example, not only the ones taken
    for n in range(4):
        np.testing.assert_allclose(costs.exit_flops[n], np.cumsum([_own(j, n) for j in range(3)]), rtol=1e-12)
    # the reference is the last model alone at its own lengths
    reference = np.array([_own(2, n) for n in range(4)])
    np.testing.assert_allclose(costs.reference_flops, reference, rtol=1e-12)
    assert costs.exit_layers.tolist() == [2, 6, 12]
    assert costs.reference_layers == 6
    out = costs.at(exit_index)
    assert out["flops_speedup"] == pytest.approx(reference.sum() / expected.sum(), rel=1e-12)
    assert out["mean_layers"] == pytest.approx((2 + 6 + 12 + 6) / 4)
    assert out["layer_speedup"] == pytest.approx(6 / ((2 + 6 + 12 + 6) / 4))
    assert out["adaptive_gflops_per_example"] == pytest.approx(expected.mean() / 1e9)
    # everything at the last model costs more than the last model alone
    assert costs.at(np.full(4, 2))["flops_speedup"] < 1.0


def test_cascade_costs_refuse_mismatched_members() -> None:
    with pytest.raises(ValueError):
        ExitCosts.cascade(TOKENS_3[:2], DIMS_3)
    with pytest.raises(ValueError):
        ExitCosts.cascade([], [])


def test_sweet_multi_model_counts_cumulative_layers() -> None:
    # SWEET's MM baseline: models of 1, 4, 6, 12 layers of BERT-base, all reading the same tokens
    dims = [
        EncoderDims(num_layers=k, hidden=768, intermediate=3072, heads=12, num_labels=3)
        for k in (1, 4, 6, 12)
    ]
    tokens = [np.array([20, 40, 60])] * 4
    costs = ExitCosts.cascade(tokens, dims)
    assert costs.exit_layers.tolist() == [1, 5, 11, 23]
    at_second = costs.at(np.array([1, 1, 1]))
    assert at_second["mean_layers"] == 5.0  # 1 + 4: nothing of the first model is reused
    assert at_second["layer_speedup"] == pytest.approx(12 / 5)
    # every example at the last model ran 23 layers: slower than BERT-base alone (SWEET's MM evaluation
    # counted these as 12)
    at_last = costs.at(np.array([3, 3, 3]))
    assert at_last["mean_layers"] == 23.0
    assert at_last["layer_speedup"] == pytest.approx(12 / 23)
    assert at_last["flops_speedup"] < 1.0
    assert costs.at(np.array([0, 0, 0]))["layer_speedup"] == 12.0


def test_multi_exit_costs_agree_with_speedups() -> None:
    d = EncoderDims(num_layers=4, hidden=32, intermediate=64, heads=2, num_labels=3)
    tokens = np.array([5, 17, 9, 30, 12])
    exit_layers = [1, 2, 4]
    exit_index = np.array([0, 2, 1, 2, 0])
    got = ExitCosts.multi_exit(tokens, exit_layers, d).at(exit_index)
    want = cost.speedups(tokens, np.asarray(exit_layers)[exit_index], exit_index + 1, d)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key


def test_threshold_curve_prices_a_cascade_and_names_its_models() -> None:
    # two models; swift scores (T = 1, equal logits): 0.5, 1.5, 2.5, 3.5; swift right on rows 0 and 2
    swift_scores = torch.tensor([0.5, 1.5, 2.5, 3.5])
    swift = (swift_scores - math.log(3)).unsqueeze(1).expand(-1, 3).clone()
    swift[0, 1] += 1e-3  # a tiny margin sets the argmax without moving the score much
    swift[2, 2] += 1e-3
    swift[[1, 3], 2] += 1e-3
    super_ = torch.eye(3)[[1, 0, 2, 1]] * 5.0  # super is right everywhere
    labels = np.array([1, 0, 2, 1])
    signals = exits.ExitSignals(torch.stack([swift, super_], dim=1))
    d_swift = EncoderDims(num_layers=2, hidden=32, intermediate=64, heads=2, num_labels=3)
    d_super = EncoderDims(num_layers=4, hidden=64, intermediate=128, heads=4, num_labels=3)
    tokens = [np.array([5, 6, 7, 8]), np.array([6, 8, 7, 11])]
    costs = ExitCosts.cascade(tokens, [d_swift, d_super])
    thresholds = [0.0, 2.0, 3.0, 4.0]
    curve = calibration.threshold_curve(
        _energy(), signals, labels, [2, 6], thresholds, None, costs=costs, exit_names=["swift", "super"]
    )
    assert curve["super_fraction"].tolist() == [0.0, 0.5, 0.75, 1.0]
    assert curve["exit_frac_swift"].tolist() == [1.0, 0.5, 0.25, 0.0]
    # t = 2: rows 0, 1 go on (right at super), 2 and 3 stay (right, wrong); t = 3: only row 3 stays
    assert curve["accuracy"].tolist() == [0.5, 0.75, 0.75, 1.0]
    assert curve["mean_exit_layer"].tolist() == [2.0, 4.0, 5.0, 6.0]
    for t, row in zip(thresholds, curve.itertuples(), strict=True):
        idx = exits.simulate(_energy(), signals, t)[0].numpy()
        assert row.flops_speedup == pytest.approx(costs.at(idx)["flops_speedup"], rel=1e-12)
        assert row.layer_speedup == pytest.approx(4 / costs.exit_layers[idx].mean())


# ---------------------------------------------------------------- 3. adaptive cascade == simulation

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "zo", "pe", "ti", "mo", "nu", "re"]


def _words(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        "".join(SYLLABLES[int(i)] for i in torch.randint(0, len(SYLLABLES), (int(k),), generator=g))
        for k in torch.randint(1, 4, (n,), generator=g)
    ]


VOCAB_WORDS = _words(60, seed=0)


def _texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(VOCAB_WORDS[int(i)] for i in torch.randint(0, len(VOCAB_WORDS), (int(k),), generator=g))
        for k in torch.randint(2, 12, (n,), generator=g)
    ]


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
    train_texts = _texts(200, seed=100)
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
    texts = _texts(16, seed=7)
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
    texts = _texts(9, seed=8)
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
    enc = _encoded(cascade, _texts(3, seed=9))
    group = _groups(cascade, enc, 3, [0, 1, 2])[0]
    with pytest.raises(ValueError, match="batches"):
        cascade.adaptive(group[:2], MAXPROB, 0.5)
    backbone, tok = build_backbone(
        BackboneConfig(
            name="t", family="bert", path="random", tiny=TinyBackboneConfig(num_layers=2, vocab_size=60)
        ),
        train_texts=_texts(50, seed=1),
    )
    two_exits = MultiExitModel(backbone, [1, 2], 3, use_pretrained_pooler=False)
    with pytest.raises(ValueError, match="single exit"):
        Cascade([Member("two-exit", two_exits, tok, 32, Path("x"))])
    with pytest.raises(ValueError):
        Cascade([])


# ---------------------------------------------------------------- 4. truncation (SWEET's multi-model members)


def _tiny(family: str, layers: int = 4) -> tuple[BackboneAdapter, object]:
    cfg = BackboneConfig(
        name=f"tiny-{family}",
        family=family,
        path="random",
        tiny=TinyBackboneConfig(
            num_layers=layers, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=80
        ),
        use_pretrained_pooler=False,
    )
    return build_backbone(cfg, train_texts=_texts(100, seed=3), seed=4)


def _hidden_after(adapter: BackboneAdapter, k: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    state = adapter.embed(ids, mask)
    for i in range(k):
        state = adapter.layer(i, state)
    return state.hidden


@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert", "albert", "deberta"])
def test_truncated_backbone_keeps_the_first_layers(family: str) -> None:
    full, tok = _tiny(family)
    enc = tok(_texts(5, seed=11), padding=True, return_tensors="pt")
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
    full, _ = _tiny("bert")
    with pytest.raises(UserError, match="layers"):
        full.truncate(k)
    assert full.num_layers == 4


def test_albert_with_several_layer_groups_cannot_be_truncated() -> None:
    adapter = make_adapter("albert", tiny_hf_model("albert-groups", num_layers=4))
    with pytest.raises(UserError, match="ALBERT"):
        adapter.truncate(2)
    assert adapter.num_layers == 4


def _meta(model: MultiExitModel, family: str) -> checkpoint.CheckpointMeta:
    return checkpoint.CheckpointMeta(
        method="static",
        backbone=f"tiny-{family}",
        family=family,
        task="sst2",
        seed=0,
        exit_layers=model.exit_layers,
        num_labels=3,
        label_names=["a", "b", "c"],
        pooling="cls",
        max_seq_length=32,
        format=checkpoint.FORMAT,
    )


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_truncated_model_round_trips_through_a_checkpoint(tmp_path: Path, family: str) -> None:
    backbone, tok = _tiny(family)
    backbone.truncate(2)
    torch.manual_seed(0)
    model = MultiExitModel(backbone, [2], num_labels=3, use_pretrained_pooler=False).eval()
    checkpoint.save(tmp_path / "m", model, tok, OmegaConf.create({}), _meta(model, family))
    loaded, tok2, meta = checkpoint.load(tmp_path / "m", torch.device("cpu"))
    assert loaded.backbone.num_layers == 2
    assert len(loaded.backbone._layer_list()) == 2
    assert meta.exit_layers == [2]
    enc = tok2(_texts(4, seed=12), padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.static_forward(*args), model.static_forward(*args))


# ---------------------------------------------------------------- 5. choosing a super fraction


def _curve() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "threshold": [0.1, 0.2, 0.25, 0.3, 0.4, 0.5],
            "accuracy": [0.80, 0.84, 0.83, 0.86, 0.90, 0.91],
            "layer_speedup": [3.0, 2.5, 2.6, 2.0, 1.5, 1.0],
            "super_fraction": [0.05, 0.15, 0.20, 0.25, 0.40, 1.00],
        }
    )


@pytest.mark.parametrize(
    "target,threshold",
    [(0.25, 0.3), (0.2, 0.2), (0.5, 0.4), (1.0, 0.5), (0.05, 0.1)],
)
def test_super_fraction_picks_the_most_accurate_row_within_the_target(
    target: float, threshold: float
) -> None:
    row = calibration.choose_threshold(
        _curve(), "super_fraction", reference_accuracy=0.91, super_fraction=target
    )
    assert row["threshold"] == threshold
    assert bool(row["target_met"])
    assert row["super_fraction"] <= target


def test_super_fraction_ties_go_to_the_faster_row() -> None:
    curve = _curve()
    curve.loc[2, "accuracy"] = 0.86  # now equal to the 0.25-fraction row, and faster
    row = calibration.choose_threshold(curve, "super_fraction", reference_accuracy=0.91, super_fraction=0.25)
    assert row["threshold"] == 0.25


def test_super_fraction_out_of_reach_gives_the_fastest_row_unmet() -> None:
    row = calibration.choose_threshold(
        _curve(), "super_fraction", reference_accuracy=0.91, super_fraction=0.01
    )
    assert row["threshold"] == 0.1
    assert not row["target_met"]
