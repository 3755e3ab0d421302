"""Analytic FLOPs per example and the speed-up accounting.

Convention (ELUE's): FLOPs = 2 x multiply-accumulates for every matrix product, plus one FLOP per
elementwise operation that we count. With n tokens, hidden h, intermediate f, a heads and C labels:

    encoder layer   matmuls      8 n h^2      Q, K, V and output projections (4 x 2 n h h)
                                 4 n f h      feed-forward up and down (2 x 2 n h f)
                                 4 n^2 h      Q K^T and softmax(.) V over all heads (2 x 2 n n h)
                    elementwise  7 a n^2      per attention score: scale, mask add, softmax (max, subtract,
                                              exp, sum, divide)
                                 (21 h + 6 f) n   biases (5 h + f), two residual adds (2 h),
                                              two LayerNorms (7 per element: mean, centre, square, sum,
                                              normalise, scale, shift: 14 h), GELU (5 per element: 5 f)
    embeddings      9 h n        lookups are free; the sum of word, position and type embeddings (2 h) and
                                 the embedding LayerNorm (7 h)
    exit head       2 h^2 + 2 h  pooler dense + bias + tanh (when the head has a pooler)
                    (2 h + 1) C  classifier with bias
    FastBERT head   (2 h w + 2 w) n        Linear(h -> w) + tanh on every token
                    4 w^2 n + 4 w n + 7 a n   keys and values of every token, the [CLS] query's scores,
                                           softmax and weighted sum (only the [CLS] row is read)
                    4 w^2 + 2 w            the [CLS] query and output projections
                    2 w^2 + 2 w + (2 w + 1) C   Linear(w -> w) + tanh, classifier
    LTE module      2 p + 1 per head       BERxiT's Linear(pooled -> 1) + sigmoid
    AdapLeR CP      (2 h w + 8 w + 7) n    per layer, on the n tokens alive before it: Dense(h -> w) + bias,
                                           GELU, Dense(w -> 1) + bias, the softmax over tokens (5 per
                                           token) and the threshold test; w = 32
    DeBERTa         per disentangled term (c2p, p2c), with span s of relative positions:
                    4 s h^2    the relative embeddings' projection (2 s rows; counted per example,
                               as at batch 1: in a batch it is shared)
                    4 n s h + 2 a n^2   scores against them, then scaling and adding them in
Mean pooling (n h additions) and the final softmax are not counted: both are under 0.01% of one layer.

Cross-check against AdapLeR's fitted BERT-base formula (METHODS.md section 5),
FLOPs_BERT(n) = 37,872 n^2 + 170,216,500 n + 1,181,953 + 1,537 C. For 12 x 768/3072/12 heads this
module gives 37,872 n^2 (identical: 12 x (4 x 768 + 7 x 12)), 170,290,944 n (+0.04%: our LayerNorm
and GELU counts are about 6,100 FLOPs per token per layer above what the TF profiler counted) and
1,181,184 + 1,537 C (their constant has 769 more, h + 1, an elementwise op of the pooler we do not count).

With token dropping (AdapLeR), layer l runs on the n_l tokens that entered it and the predictor before
it on the tokens alive before its drop (n_0 = the input length before layer 1). AdapLeR's fitted formula,
FLOPs_AdapLeR = 1,183,537 + 1,537 (C - 1) + 6,152 n_0 + sum_l (3,156 n_l^2 + 14,233,554 n_l), charges its
predictors about 48,850 FLOPs per token per layer; this module charges 49,415 (2 x 768 x 32 + 263).

Speed-ups are ratios of totals, sum(static) / sum(adaptive), as AdapLeR and ELUE compute them; the mean
of per-example ratios would weight short examples as much as long ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

ATTN_SCORE_OPS = 7  # scale, mask add, softmax as max, subtract, exp, sum, divide
_LAYERNORM_OPS = 7  # mean, centre, square, sum, normalise, scale, shift (per element)
_GELU_OPS = 5  # x / sqrt(2), erf, + 1, x *, * 0.5 (per element)


@dataclass(frozen=True)
class EncoderDims:
    """The dimensions that set an encoder's FLOPs."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    num_labels: int
    # what one exit head costs; each head kind prices itself (elastic_cli/models/heads.py); None: a pooler
    # and a classifier of width `hidden` (the `pooler` kind)
    head: HeadCost | None = None
    lte: bool = False  # BERxiT's learning-to-exit module runs beside every head
    relative_span: int = 0  # DeBERTa: relative positions attended to (pos_ebd_size); 0 for the others
    predictor: int = 0  # AdapLeR: width of the contribution predictor before every layer (0: none)
    relative_terms: int = 0  # DeBERTa: disentangled terms (c2p, p2c)

    @classmethod
    def of(cls, adapter: Any, num_labels: int) -> EncoderDims:
        """Read the dimensions from a backbone adapter (num_layers, hidden_size, intermediate_size, num_heads)."""
        # the adapter's relative-attention sizes (DeBERTa's); an object without that method has none
        relative_attention = getattr(adapter, "relative_attention", None)
        span, terms = relative_attention() if relative_attention is not None else (0, 0)
        return cls(
            num_layers=int(adapter.num_layers),
            hidden=int(adapter.hidden_size),
            intermediate=int(adapter.intermediate_size),
            heads=int(adapter.num_heads),
            num_labels=int(num_labels),
            relative_span=span,
            relative_terms=terms,
        )


def _tokens(n_tokens: np.ndarray | float) -> np.ndarray:
    n = np.asarray(n_tokens, dtype=np.float64)
    if np.any(n < 0):
        raise ValueError("token counts must be >= 0")
    return n


def layer_matmul_flops(n_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """The matrix-product FLOPs (2 x MACs) of one encoder layer at n tokens."""
    n = _tokens(n_tokens)
    h, f = d.hidden, d.intermediate
    relative = d.relative_terms * (4.0 * d.relative_span * h * h + 4.0 * n * d.relative_span * h)
    return 8.0 * n * h * h + 4.0 * n * h * f + 4.0 * n * n * h + relative


def layer_elementwise_flops(n_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """Biases, attention softmax, residual adds, LayerNorms and GELU of one encoder layer at n tokens."""
    n = _tokens(n_tokens)
    h, f = d.hidden, d.intermediate
    per_token = (5 * h + f) + 2 * h + 2 * _LAYERNORM_OPS * h + _GELU_OPS * f
    score_ops = ATTN_SCORE_OPS + 2 * d.relative_terms  # DeBERTa scales and adds each disentangled term
    return float(score_ops * d.heads) * n * n + float(per_token) * n


def layer_flops(n_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """FLOPs of one encoder layer per example at n tokens."""
    return layer_matmul_flops(n_tokens, d) + layer_elementwise_flops(n_tokens, d)


def embedding_flops(n_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """Embedding sum and LayerNorm; the lookups themselves cost nothing."""
    return float(2 * d.hidden + _LAYERNORM_OPS * d.hidden) * _tokens(n_tokens)


@dataclass(frozen=True)
class HeadCost:
    """One exit head's FLOPs on one example, `fixed` + `per_token` x n (the FastBERT head attends over
    the tokens), and the width of the pooled vector that BERxiT's LTE module reads."""

    fixed: float
    per_token: float = 0.0
    pooled: int = 0


def pooler_flops(hidden: int) -> float:
    """Dense (hidden x hidden) + bias + tanh."""
    return 2.0 * hidden * hidden + 2.0 * hidden


def classifier_flops(width: int, num_labels: int) -> float:
    """Linear(width -> num_labels) with bias."""
    return (2.0 * width + 1.0) * num_labels


def head_flops(d: EncoderDims, n_tokens: np.ndarray | float = 0.0) -> np.ndarray:
    """One exit head on one example (at n tokens), with the LTE module when there is one."""
    head = d.head or HeadCost(
        pooler_flops(d.hidden) + classifier_flops(d.hidden, d.num_labels), 0.0, d.hidden
    )
    flops: np.ndarray = head.per_token * _tokens(n_tokens) + head.fixed
    if d.lte:
        flops = flops + 2.0 * head.pooled + 1.0
    return flops


def predictor_flops(n_tokens: np.ndarray | float, d: EncoderDims) -> np.ndarray:
    """One contribution predictor (AdapLeR's CP) on n tokens: Dense(h -> w), GELU, Dense(w -> 1), the
    softmax over the tokens and the threshold test."""
    w = d.predictor
    per_token = 2.0 * d.hidden * w + w + _GELU_OPS * w + 2.0 * w + 1.0 + 5.0 + 1.0
    return per_token * _tokens(n_tokens) if w else np.zeros_like(_tokens(n_tokens))


def reduced_flops(n_tokens: np.ndarray, layer_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """FLOPs per example of a model that drops tokens between layers: layer_tokens [N, num_layers] are the
    tokens entering each layer; every layer runs, with its predictor on the tokens alive before its drop,
    and one final head."""
    n = _tokens(n_tokens)
    entering = _tokens(layer_tokens)
    before_drop = np.concatenate([n[:, None], entering[:, :-1]], axis=1)
    predictors = predictor_flops(before_drop, d).sum(axis=1)
    layers = np.full(n.shape[0], d.num_layers)
    return example_flops(n, layers, np.ones_like(layers), d, entering) + predictors


def _check_counts(name: str, counts: np.ndarray, upper: int, size: int) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.shape != (size,):
        raise ValueError(f"{name} must have one entry per example ({size}), got shape {arr.shape}")
    if np.any(arr < 0) or np.any(arr > upper):
        raise ValueError(f"{name} must be within [0, {upper}]")
    return arr.astype(np.int64)


def example_flops(
    n_tokens: np.ndarray,
    layers_run: np.ndarray,
    heads_run: np.ndarray,
    d: EncoderDims,
    layer_tokens: np.ndarray | None = None,
) -> np.ndarray:
    """FLOPs per example: embeddings at n_tokens, the first layers_run layers, heads_run exit heads.

    layer_tokens [N, num_layers], when given, is the token count entering each layer (length reduction);
    otherwise every layer runs on n_tokens.
    """
    n = _tokens(n_tokens)
    if n.ndim != 1:
        raise ValueError(f"n_tokens must be one count per example, got shape {n.shape}")
    layers = _check_counts("layers_run", layers_run, d.num_layers, n.shape[0])
    heads = _check_counts("heads_run", heads_run, np.iinfo(np.int64).max, n.shape[0])
    if layer_tokens is None:
        encoder = layers * layer_flops(n, d)
    else:
        per_layer_tokens = _tokens(layer_tokens)
        if per_layer_tokens.shape != (n.shape[0], d.num_layers):
            raise ValueError(
                f"layer_tokens must have shape [examples, layers] = {(n.shape[0], d.num_layers)}, "
                f"got {per_layer_tokens.shape}"
            )
        ran = np.arange(d.num_layers)[None, :] < layers[:, None]
        encoder = (layer_flops(per_layer_tokens, d) * ran).sum(axis=1)
    return embedding_flops(n, d) + encoder + heads * head_flops(d, n)


def static_flops(n_tokens: np.ndarray, d: EncoderDims) -> np.ndarray:
    """The static model: all layers at full length and one final head."""
    n = _tokens(n_tokens)
    # the static model has no LTE module: it never decides to exit
    return embedding_flops(n, d) + d.num_layers * layer_flops(n, d) + head_flops(replace(d, lte=False), n)


def ratio_of_totals(static: np.ndarray, adaptive: np.ndarray) -> float:
    """sum(static) / sum(adaptive): the FLOPs speed-up."""
    total = float(np.sum(adaptive))
    if total <= 0:
        raise ValueError("adaptive FLOPs must be positive to form a speed-up")
    return float(np.sum(static)) / total


def speedups(
    n_tokens: np.ndarray,
    layers_run: np.ndarray,
    heads_run: np.ndarray,
    d: EncoderDims,
    layer_tokens: np.ndarray | None = None,
    extra_flops: np.ndarray | None = None,
) -> dict[str, float]:
    """FLOPs and layer speed-ups of an adaptive run against the static model on the same examples.

    extra_flops: per-example FLOPs outside the encoder and exit heads (token-importance predictors,
    routers), added to the adaptive side.
    """
    adaptive = example_flops(n_tokens, layers_run, heads_run, d, layer_tokens)
    if extra_flops is not None:
        adaptive = adaptive + np.asarray(extra_flops, dtype=np.float64)
    static = static_flops(n_tokens, d)
    mean_layers = float(np.mean(layers_run))
    return {
        "flops_speedup": ratio_of_totals(static, adaptive),
        "layer_speedup": d.num_layers / mean_layers if mean_layers > 0 else float("inf"),
        "mean_layers": mean_layers,
        "static_gflops_per_example": float(np.mean(static)) / 1e9,
        "adaptive_gflops_per_example": float(np.mean(adaptive)) / 1e9,
    }


@dataclass(frozen=True)
class ExitCosts:
    """What every example costs if it leaves at each exit, beside what the reference model costs.

    One shape for both kinds of adaptive model: the exits of one multi-exit model (leaving at exit e runs
    the layers up to it and e + 1 heads) and the members of a cascade (leaving at model j runs models
    0..j in full, nothing reused, each at its own token count). The reference is the static model: the
    full backbone, or a cascade's last (super) model alone.
    """

    exit_flops: np.ndarray  # [N, E] FLOPs of example n leaving at exit e
    reference_flops: np.ndarray  # [N]
    exit_layers: np.ndarray  # [E] layers run when leaving at exit e (summed over a cascade's models)
    reference_layers: int

    @classmethod
    def multi_exit(
        cls, n_tokens: np.ndarray, exit_layers: list[int] | np.ndarray, d: EncoderDims
    ) -> ExitCosts:
        tokens = _tokens(n_tokens)
        n = tokens.shape[0]
        layers = np.asarray(exit_layers, dtype=np.int64)
        flops = (
            np.stack(
                [
                    example_flops(tokens, np.full(n, int(k)), np.full(n, j + 1), d)
                    for j, k in enumerate(layers)
                ],
                axis=1,
            )
            if len(layers)
            else np.zeros((n, 0))
        )
        return cls(flops, static_flops(tokens, d), layers, d.num_layers)

    @classmethod
    def cascade(cls, n_tokens: list[np.ndarray], dims: list[EncoderDims]) -> ExitCosts:
        """Members smallest first; n_tokens[j] are example lengths under member j's own tokenizer."""
        if len(n_tokens) != len(dims) or not dims:
            raise ValueError("a cascade needs one token-count array per member")
        own = np.stack([static_flops(t, d) for t, d in zip(n_tokens, dims, strict=True)], axis=1)
        layers = np.cumsum([d.num_layers for d in dims])
        return cls(np.cumsum(own, axis=1), own[:, -1], layers, dims[-1].num_layers)

    def at(self, exit_index: np.ndarray, adaptive: np.ndarray | None = None) -> dict[str, float]:
        """Speed-ups when example n leaves at exit_index[n] (ratio of totals for FLOPs); `adaptive`, when
        given, is what each example really cost (a length-reducing model's FLOPs depend on the tokens kept)."""
        idx = np.asarray(exit_index, dtype=np.int64)
        if adaptive is None:
            adaptive = self.exit_flops[np.arange(idx.shape[0]), idx]
        mean_layers = float(self.exit_layers[idx].mean())
        return {
            "flops_speedup": ratio_of_totals(self.reference_flops, adaptive),
            "layer_speedup": self.reference_layers / mean_layers if mean_layers > 0 else float("inf"),
            "mean_layers": mean_layers,
            "static_gflops_per_example": float(np.mean(self.reference_flops)) / 1e9,
            "adaptive_gflops_per_example": float(np.mean(adaptive)) / 1e9,
        }
