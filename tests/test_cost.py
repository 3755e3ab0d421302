"""FLOP counts (by hand, against AdapLeR's fitted BERT-base formula and against torch's own counter), the
speedups of an adaptive run, and ExitCosts: what a cascade of separately trained models pays at each exit
(every model run at its own token count) against a multi-exit model's shared layers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

from elastic_cli.cost import (
    EncoderDims,
    ExitCosts,
    example_flops,
    head_flops,
    layer_flops,
    layer_matmul_flops,
    speedups,
    static_flops,
)

# 2 layers, hidden 4, intermediate 8, 2 heads, 3 labels
TINY = EncoderDims(num_layers=2, hidden=4, intermediate=8, heads=2, num_labels=3)
BERT_BASE = EncoderDims(num_layers=12, hidden=768, intermediate=3072, heads=12, num_labels=3)


def test_tiny_config_by_hand():
    # one layer at n=5, counted by hand:
    #   matmuls 8*5*4*4 + 4*5*4*8 + 4*25*4 = 640 + 640 + 400 = 1680
    #   attention scores 7 ops * 2 heads * 25 = 350
    #   per token: biases 5*4+8 = 28, residuals 8, LayerNorms 2*7*4 = 56, GELU 5*8 = 40 -> 132 * 5 = 660
    assert layer_flops(np.array([5]), TINY)[0] == 1680 + 350 + 660
    # pooler 2*16 + 2*4 = 40, classifier (2*4+1)*3 = 27
    assert head_flops(TINY) == 67  # every head kind's own count: tests/test_heads.py
    # embeddings 9*4*5 = 180; static = 180 + 2 layers + 1 head
    assert static_flops(np.array([5]), TINY)[0] == 180 + 2 * 2690 + 67
    # one layer and one head (an early exit), then both layers and both heads
    got = example_flops(np.array([5, 5]), np.array([1, 2]), np.array([1, 2]), TINY)
    np.testing.assert_array_equal(got, [180 + 2690 + 67, 180 + 2 * 2690 + 2 * 67])


def test_bert_base_matches_adaplers_fitted_formula():
    # AdapLeR: FLOPs_BERT(n) = 37,872 n^2 + 170,216,500 n + 1,181,953 + 1,537 C (METHODS.md section 5)
    n = np.array([1.0, 2.0, 3.0])
    quad, lin, const = np.polyfit(n, static_flops(n, BERT_BASE), 2)
    assert quad == pytest.approx(37_872, rel=1e-9)
    assert lin == pytest.approx(170_216_500, rel=1e-3)
    assert const == pytest.approx(1_181_953 + 1_537 * 3, rel=1e-3)
    # at n=128, BERT-base is about 22.4 GFLOPs
    assert static_flops(np.array([128]), BERT_BASE)[0] / 1e9 == pytest.approx(22.42, abs=0.01)


@pytest.mark.parametrize("n_tokens", [1, 7, 19])
def test_matmul_count_matches_torch_modules(n_tokens):
    config = BertConfig(
        vocab_size=50,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=40,
        attn_implementation="eager",
    )
    layer = BertModel(config).eval().encoder.layer[0]
    dims = EncoderDims(num_layers=1, hidden=24, intermediate=40, heads=3, num_labels=2)

    linear_flops = []

    def count(module, inputs, output):
        tokens = inputs[0].shape[:-1].numel()
        linear_flops.append(2 * module.in_features * module.out_features * tokens)

    handles = [m.register_forward_hook(count) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    hidden = torch.randn(1, n_tokens, 24)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(hidden)
    for h in handles:
        h.remove()

    assert len(linear_flops) == 6  # q, k, v, attention output, intermediate, output
    attention_matmuls = 2 * 2 * n_tokens * n_tokens * 24  # Q K^T and probs V, over all heads
    expected = layer_matmul_flops(np.array([n_tokens]), dims)[0]
    assert sum(linear_flops) + attention_matmuls == expected
    # torch's own counter sees every matmul, attention included
    assert counter.get_total_flops() == expected


def test_speedup_is_a_ratio_of_totals():
    # a short example that exits early and a long one that runs to the end
    n_tokens = np.array([2, 60])
    layers_run = np.array([1, 2])
    heads_run = np.array([1, 2])
    result = speedups(n_tokens, layers_run, heads_run, TINY)

    static = static_flops(n_tokens, TINY)
    adaptive = example_flops(n_tokens, layers_run, heads_run, TINY)
    assert result["flops_speedup"] == pytest.approx(static.sum() / adaptive.sum())
    mean_of_ratios = float(np.mean(static / adaptive))
    assert abs(result["flops_speedup"] - mean_of_ratios) > 0.2  # the two definitions really differ here
    assert result["flops_speedup"] < mean_of_ratios  # the long example dominates the total
    assert result["layer_speedup"] == pytest.approx(2 / 1.5)
    assert result["mean_layers"] == 1.5
    assert result["static_gflops_per_example"] == pytest.approx(static.mean() / 1e9)
    assert result["adaptive_gflops_per_example"] == pytest.approx(adaptive.mean() / 1e9)


def test_static_run_has_speedup_one_and_extra_flops_count():
    n_tokens = np.array([3, 9, 30])
    full = speedups(n_tokens, np.full(3, 2), np.ones(3, dtype=int), TINY)
    assert full["flops_speedup"] == pytest.approx(1.0)
    assert full["layer_speedup"] == 1.0
    with_predictors = speedups(
        n_tokens, np.full(3, 2), np.ones(3, dtype=int), TINY, extra_flops=np.full(3, 1e3)
    )
    assert with_predictors["flops_speedup"] < 1.0


def test_layer_tokens_prices_each_layer_at_its_length():
    n_tokens = np.array([5, 5])
    # example 0: 5 tokens then 2; example 1 stops after layer 1 (its second column is ignored)
    layer_tokens = np.array([[5, 2], [5, 5]])
    got = example_flops(n_tokens, np.array([2, 1]), np.array([1, 1]), TINY, layer_tokens=layer_tokens)
    per_layer = layer_flops(np.array([5, 2]), TINY)
    embed_and_head = 180 + 67
    np.testing.assert_allclose(got, [embed_and_head + per_layer.sum(), embed_and_head + per_layer[0]])
    same = example_flops(n_tokens, np.array([2, 1]), np.array([1, 1]), TINY, layer_tokens=np.full((2, 2), 5))
    np.testing.assert_allclose(same, example_flops(n_tokens, np.array([2, 1]), np.array([1, 1]), TINY))


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="layers_run"):
        example_flops(np.array([5]), np.array([3]), np.array([1]), TINY)
    with pytest.raises(ValueError, match="one entry per example"):
        example_flops(np.array([5, 6]), np.array([1]), np.array([1, 1]), TINY)
    with pytest.raises(ValueError, match="layer_tokens"):
        example_flops(np.array([5]), np.array([1]), np.array([1]), TINY, layer_tokens=np.ones((1, 3)))


def test_dims_of_adapter():
    adapter = SimpleNamespace(num_layers=6, hidden_size=384, intermediate_size=1536, num_heads=12)
    dims = EncoderDims.of(adapter, num_labels=2)
    assert dims == EncoderDims(6, 384, 1536, 12, 2)


def test_deberta_disentangled_attention_matches_torchs_flop_counter():
    from tiny_models import tiny_hf_model

    from elastic_cli.models.adapters import make_adapter

    model = tiny_hf_model("deberta", "eager", num_layers=2)
    adapter = make_adapter("deberta", model)
    d = EncoderDims.of(adapter, num_labels=2)
    assert d.relative_terms == 2 and d.relative_span > 0
    n = 9
    ids = torch.randint(5, 90, (1, n))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    # the base model is embeddings + layers: every matmul is a layer's
    assert counter.get_total_flops() == d.num_layers * layer_matmul_flops(np.array([n]), d)[0]
    plain = EncoderDims(
        num_layers=2, hidden=d.hidden, intermediate=d.intermediate, heads=d.heads, num_labels=2
    )
    assert layer_flops(np.array([n]), d)[0] > layer_flops(np.array([n]), plain)[0]


# ---------------------------------------------------------------- cascades (ExitCosts)

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
    return float(static_flops(n, DIMS_3[member])[0])


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
    want = speedups(tokens, np.asarray(exit_layers)[exit_index], exit_index + 1, d)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
