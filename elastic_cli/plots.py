"""Figures logged to MLflow: the exit-layer histogram, the tokens kept per layer (length reduction) and
the accuracy / speed-up Pareto plot.

Figures are built on matplotlib's Agg canvas directly (no pyplot): nothing needs a screen, no global
figure list grows over a sweep, and the caller owns the returned figure. matplotlib is imported inside
the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def exit_histogram_figure(counts: Sequence[int], layers: Sequence[int], title: str) -> Figure:
    """Bars of the share of examples leaving at each exit layer (1-indexed), each bar labelled with its count."""
    if len(counts) != len(layers):
        raise ValueError(f"{len(counts)} counts for {len(layers)} layers")
    total = sum(counts)
    fractions = [c / total if total else 0.0 for c in counts]
    fig = _new_figure(max(4.0, 0.45 * len(layers) + 2.0), 3.2)
    ax = fig.add_subplot()
    positions = list(range(len(layers)))
    bars = ax.bar(positions, fractions, color="#4C72B0")
    ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8, padding=2)
    ax.set_xticks(positions, [str(layer) for layer in layers])
    ax.set_xlabel("exit layer")
    ax.set_ylabel("fraction of examples")
    ax.set_ylim(0, max(fractions, default=0.0) * 1.15 or 1.0)
    ax.set_title(f"{title}  (n={total})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def layer_tokens_figure(mean_tokens: Sequence[float], title: str) -> Figure:
    """Bars of the mean tokens entering each layer (1-indexed) of a length-reducing model."""
    fig = _new_figure(max(4.0, 0.45 * len(mean_tokens) + 2.0), 3.2)
    ax = fig.add_subplot()
    layers = list(range(1, len(mean_tokens) + 1))
    bars = ax.bar(layers, list(mean_tokens), color="#55A868")
    ax.bar_label(bars, labels=[f"{t:.1f}" for t in mean_tokens], fontsize=8, padding=2)
    ax.set_xticks(layers, [str(layer) for layer in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean tokens entering the layer")
    ax.set_ylim(0, max(mean_tokens, default=0.0) * 1.15 or 1.0)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def pareto_mask(xs: Sequence[float], ys: Sequence[float]) -> list[bool]:
    """True for the points no other point beats on both axes (both maximised); NaN points are never on it."""
    points = list(zip(xs, ys, strict=True))

    def valid(p: tuple[float, float]) -> bool:
        return not (math.isnan(p[0]) or math.isnan(p[1]))

    def dominated(p: tuple[float, float]) -> bool:
        return any(
            valid(q) and q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points
        )

    return [valid(p) and not dominated(p) for p in points]


def pareto_figure(df: pd.DataFrame, x: str, y: str, label_col: str | None, title: str) -> Figure:
    """Every row as a point (x, y), labelled by `label_col`; the Pareto front (max x, max y) drawn as a line."""
    data = df[[c for c in (x, y, label_col) if c is not None]].copy()
    data[x] = data[x].astype(float)
    data[y] = data[y].astype(float)
    data = data.dropna(subset=[x, y])
    on_front = pareto_mask(data[x].tolist(), data[y].tolist())
    fig = _new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    ax.scatter(data[x], data[y], color="#8C8C8C", s=22, label="runs", zorder=2)
    front = data[on_front].sort_values(x)
    ax.plot(front[x], front[y], color="#C44E52", marker="o", markersize=6, label="Pareto front", zorder=3)
    if label_col is not None:
        for px, py, text in zip(data[x], data[y], data[label_col], strict=True):
            ax.annotate(_short(text), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
