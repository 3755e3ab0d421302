"""Figures logged to MLflow: the exit-layer histogram, the tokens kept per layer (length reduction) and
the accuracy / speed-up Pareto plot.

Figures are built on matplotlib's Agg canvas directly (no pyplot): nothing needs a screen, no global
figure list grows over a sweep, and the caller owns the returned figure. matplotlib is imported inside
the functions so that importing this module costs nothing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

# 2x matplotlib's default of 100: MLflow's log_figure calls savefig() with savefig.dpi="figure", so the
# PNG inherits this and comes out at twice the pixels.
DPI = 200
TITLE_FONTSIZE = 10
_MAX_FIGURE_WIDTH = 13.0  # inches; past ~24 bars the bars narrow instead of the figure growing

# The README's names for the columns the figures plot (see "What speed-up means here").
_AXIS_LABELS = {
    "flops_speedup": "FLOPs speed-up",
    "layer_speedup": "layer speed-up",
    "latency_speedup_mean": "latency speed-up (mean)",
    "latency_speedup_p50": "latency speed-up (p50)",
    "throughput_speedup": "throughput speed-up",
    "score": "score",
    "accuracy": "accuracy",
    "f1": "f1",
    "matthews": "matthews",
    "pearson": "pearson",
    "task_metric": "task metric",
}

_Spot = tuple[float, float, Literal["left", "center", "right"], Literal["bottom", "center", "top"]]

_MIN_ANCHOR_GAP_PT = 10.0  # points closer than this to a labelled one go unlabelled

# Point labels' gids, so callers and tests can tell them from other texts.
THRESHOLD_LABEL_GID = "threshold_label"
OPERATING_LABEL_GID = "operating_label"
OPERATING_POINT_GID = "operating_point"
STATIC_POINT_GID = "static_point"
STATIC_LINE_GID = "static_line"


def axis_label(column: str) -> str:
    """The README's name for a plotted column ("flops_speedup" -> "FLOPs speed-up"); unknown columns
    come back with "_" read as spaces."""
    return _AXIS_LABELS.get(column, column.replace("_", " "))


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _wrap_title(title: str, width_in: float, fontsize: float = TITLE_FONTSIZE) -> str:
    """`title` broken into lines that fit the figure's width: constrained layout makes room for more
    lines but never shortens one, so a long "method backbone task" title would be clipped at the edges."""
    # ~0.6 em per character is a safe upper bound on the mean width of DejaVu Sans text.
    chars = max(20, int((width_in - 0.3) * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in title.splitlines() or [""])


def _bar_width(n_bars: int) -> float:
    return min(_MAX_FIGURE_WIDTH, max(4.0, 0.45 * n_bars + 2.0))


def _bar_chart(ax: Axes, positions: list[int], values: list[float], texts: list[str], color: str) -> None:
    """Bars with their values written on top; the value labels turn vertical, and every k-th tick is
    shown, when the bars are too narrow for them to sit side by side."""
    bars = ax.bar(positions, values, color=color)
    n = max(len(positions), 1)
    width_in = ax.get_figure().get_figwidth()  # type: ignore[union-attr]
    slot_pt = (width_in - 1.2) * 72 / n  # 1.2 in: the y label and tick labels take the rest
    widest = max((len(t) for t in texts), default=0) * 0.6 * 8
    ax.bar_label(bars, labels=texts, fontsize=8, padding=2, rotation=90 if widest > 0.9 * slot_pt else 0)
    step = max(1, math.ceil(n / 24))
    ax.set_xticks(positions[::step])
    ax.set_ylim(0, max(values, default=0.0) * (1.3 if widest > 0.9 * slot_pt else 1.15) or 1.0)
    ax.grid(axis="y", alpha=0.3)


def exit_histogram_figure(counts: Sequence[int], layers: Sequence[int], title: str) -> Figure:
    """Bars of the share of examples leaving at each exit layer (1-indexed), each bar labelled with its count."""
    if len(counts) != len(layers):
        raise ValueError(f"{len(counts)} counts for {len(layers)} layers")
    total = sum(counts)
    fractions = [c / total if total else 0.0 for c in counts]
    width = _bar_width(len(layers))
    fig = _new_figure(width, 3.2)
    ax = fig.add_subplot()
    positions = list(range(len(layers)))
    _bar_chart(ax, positions, fractions, [str(c) for c in counts], "#4C72B0")
    step = max(1, math.ceil(len(layers) / 24))
    ax.set_xticks(positions[::step], [str(layer) for layer in layers][::step])
    ax.set_xlabel("exit layer")
    ax.set_ylabel("fraction of examples")
    ax.set_title(_wrap_title(f"{title}  (n={total})", width), fontsize=TITLE_FONTSIZE)
    return fig


def layer_tokens_figure(mean_tokens: Sequence[float], title: str) -> Figure:
    """Bars of the mean tokens entering each layer (1-indexed) of a length-reducing model."""
    width = _bar_width(len(mean_tokens))
    fig = _new_figure(width, 3.2)
    ax = fig.add_subplot()
    layers = list(range(1, len(mean_tokens) + 1))
    _bar_chart(ax, layers, [float(t) for t in mean_tokens], [f"{t:.1f}" for t in mean_tokens], "#55A868")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean tokens entering the layer")
    ax.set_title(_wrap_title(title, width), fontsize=TITLE_FONTSIZE)
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


def pareto_figure(
    df: pd.DataFrame,
    x: str,
    y: str,
    label_col: str | None,
    title: str,
    *,
    x_label: str | None = None,
    y_label: str | None = None,
    operating_point: tuple[float, float, str] | None = None,
    static_point: tuple[float, float] | None = None,
    max_labels: int = 6,
) -> Figure:
    """Every row as a point (x, y); the Pareto front (max x, max y) drawn as a line, with at most
    `max_labels` of its points labelled by `label_col`, spread along it and never overlapping.

    `operating_point` (x, y, text): the calibrated threshold, a star named `text` in the legend and
    always labelled. `static_point` (x, y): the static model, a diamond with a dotted line at its y.
    The legend sits below the axes so that it never covers a point."""
    import pandas as pd

    data = df[[c for c in dict.fromkeys((x, y, label_col)) if c is not None]].copy()
    data[x] = data[x].astype(float)
    data[y] = data[y].astype(float)
    data = data.dropna(subset=[x, y])
    on_front = pareto_mask(data[x].tolist(), data[y].tolist())
    width = 6.4
    fig = _new_figure(width, 4.6)
    ax = fig.add_subplot()
    ax.scatter(data[x], data[y], color="#8C8C8C", s=22, label=_points_name(label_col), zorder=2)
    # .loc with a bool Series: a plain empty list would select no *columns* of an empty frame
    front = data.loc[pd.Series(on_front, index=data.index, dtype=bool)].sort_values(x, kind="stable")
    ax.plot(front[x], front[y], color="#C44E52", marker="o", markersize=6, label="Pareto front", zorder=3)
    if static_point is not None and _finite(static_point[:2]):
        sx, sy = float(static_point[0]), float(static_point[1])
        ax.axhline(sy, color="black", linestyle=":", linewidth=1.0, zorder=1, gid=STATIC_LINE_GID)
        # linestyle ":" draws nothing for one point but puts the dotted line in the legend's swatch.
        ax.plot([sx], [sy], color="black", marker="D", markersize=6, linestyle=":", linewidth=1.0,
                label="static model", gid=STATIC_POINT_GID, zorder=4)
    operating = None
    if operating_point is not None and _finite(operating_point[:2]):
        ox, oy, otext = float(operating_point[0]), float(operating_point[1]), str(operating_point[2])
        operating = (ox, oy, otext)
        ax.plot([ox], [oy], color="#DD8452", marker="*", markersize=15, markeredgecolor="black",
                markeredgewidth=0.7, linestyle="none", label=otext, gid=OPERATING_POINT_GID, zorder=5)
    ax.margins(x=0.08, y=0.12)  # room inside the axes for the end points' labels
    ax.set_xlabel(x if x_label is None else x_label)
    ax.set_ylabel(y if y_label is None else y_label)
    ax.set_title(_wrap_title(title, width), fontsize=TITLE_FONTSIZE)
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8,
               frameon=False)

    # Labels are placed in display space, so the layout (axes position, limits) must be final first;
    # they are kept out of the layout so that adding them cannot move the axes under them again.
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    placer = _LabelPlacer(ax, renderer, data[x].tolist(), data[y].tolist(), front[x].tolist(),
                          front[y].tolist(), static_point, operating)
    if operating is not None:
        placer.place(operating[0], operating[1], operating[2], OPERATING_LABEL_GID, base=9.0,
                     required=True, fontsize=8, weight="bold")
    if label_col is not None and max_labels > 0 and len(front):
        fx, fy = front[x].tolist(), front[y].tolist()
        for i in _spread_indices(fx, fy, max_labels, _span(data[x]), _span(data[y])):
            if operating is not None and _same_point((fx[i], fy[i]), operating[:2], fx, fy):
                continue  # the operating point's own label already names it
            placer.place(fx[i], fy[i], _short(front[label_col].iloc[i], label_col), THRESHOLD_LABEL_GID,
                         base=5.0, required=False, fontsize=7)
    return fig


def _points_name(label_col: str | None) -> str:
    return "thresholds" if label_col == "threshold" else "runs"


def _finite(values: Sequence[Any]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _span(values: Any) -> float:
    """The range of `values`, or 1 when it is empty or flat (so dividing by it is always safe)."""
    if len(values) == 0:
        return 1.0
    span = float(values.max()) - float(values.min())
    return span if span > 0 else 1.0


def _same_point(p: Sequence[float], q: Sequence[float], xs: list[float], ys: list[float]) -> bool:
    tol_x = 1e-3 * (max(xs) - min(xs) or 1.0)
    tol_y = 1e-3 * (max(ys) - min(ys) or 1.0)
    return abs(p[0] - q[0]) <= tol_x and abs(p[1] - q[1]) <= tol_y


def _spread_indices(xs: list[float], ys: list[float], k: int, x_span: float, y_span: float) -> list[int]:
    """Up to `k` indices of the curve (xs, ys), sorted by x, evenly spaced by arc length (with both axes
    scaled to their plotted range, so a flat stretch and a steep one count the same), ends first.

    Arc length rather than x alone: threshold curves bunch many points near speed-up 1, and evenly
    spaced x values would pick the same few points there."""
    n = len(xs)
    if n <= k:
        order = list(range(n))
    else:
        arc = [0.0]
        for i in range(1, n):
            arc.append(arc[-1] + math.hypot((xs[i] - xs[i - 1]) / x_span, (ys[i] - ys[i - 1]) / y_span))
        targets = [arc[-1] * j / (k - 1) for j in range(k)] if k > 1 else [0.0]
        chosen: list[int] = []
        for t in targets:
            free = [i for i in range(n) if i not in chosen]
            chosen.append(min(free, key=lambda i: abs(arc[i] - t)))
        order = sorted(chosen)
    if len(order) <= 2:
        return order
    # The ends are placed first so that they are the last to be dropped for lack of room.
    return [order[0], order[-1], *order[1:-1]]


class _LabelPlacer:
    """Puts point labels where they overlap no other label and stay inside the axes, preferring spots
    that cover no marker and no line either; a label that fits nowhere is dropped (unless required)."""

    def __init__(
        self,
        ax: Axes,
        renderer: RendererBase,
        xs: list[float],
        ys: list[float],
        front_x: list[float],
        front_y: list[float],
        static_point: tuple[float, float] | None,
        operating: tuple[float, float, str] | None,
    ) -> None:
        from matplotlib.path import Path
        from matplotlib.transforms import Bbox

        self.ax = ax
        self.renderer = renderer
        self.px_per_pt = ax.get_figure().dpi / 72  # type: ignore[union-attr]
        self.axes_box: Bbox = ax.get_window_extent(renderer)
        self.placed: list[Bbox] = []
        self.anchors: list[Any] = []  # display positions of the points labelled so far
        to_px = ax.transData.transform
        markers: list[tuple[float, float, float]] = [(x, y, 3.0) for x, y in zip(xs, ys, strict=True)]
        markers += [(x, y, 4.0) for x, y in zip(front_x, front_y, strict=True)]
        self.lines: list[Path] = []
        if len(front_x) > 1:
            self.lines.append(Path(to_px(list(zip(front_x, front_y, strict=True)))))
        if static_point is not None and _finite(static_point[:2]):
            markers.append((float(static_point[0]), float(static_point[1]), 5.0))
            sy = to_px([(0.0, float(static_point[1]))])[0][1]
            self.lines.append(Path([(self.axes_box.x0, sy), (self.axes_box.x1, sy)]))
        if operating is not None:
            markers.append((operating[0], operating[1], 8.0))
        self.marker_boxes = []
        for mx, my, radius_pt in markers:
            cx, cy = to_px([(mx, my)])[0]
            r = radius_pt * self.px_per_pt
            self.marker_boxes.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))

    def place(
        self, x: float, y: float, text: str, gid: str, *, base: float, required: bool, **font: Any
    ) -> Annotation | None:
        anchor = self.ax.transData.transform((x, y))
        too_close = _MIN_ANCHOR_GAP_PT * self.px_per_pt
        if not required and any(math.dist(anchor, a) < too_close for a in self.anchors):
            return None  # a label here could not say which of the two points it names
        ann = self.ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(0, 0), gid=gid, zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
            **font,
        )
        ann.set_in_layout(False)
        best: tuple[int, Bbox, _Spot] | None = None
        for candidate in _candidates(base):
            box = self._try(ann, candidate)
            if not self._fits(box):
                continue
            soft = self._soft_hits(box)
            if best is None or soft < best[0]:
                best = (soft, box, candidate)
            if soft == 0:
                break
        if best is None and required:
            first = _candidates(base)[0]
            best = (0, self._try(ann, first), first)
        if best is None:
            ann.remove()
            return None
        self.placed.append(self._try(ann, best[2]))
        self.anchors.append(anchor)
        return ann

    def _try(self, ann: Annotation, candidate: _Spot) -> Bbox:
        dx, dy, ha, va = candidate
        ann.xyann = (dx, dy)
        ann.set_horizontalalignment(ha)
        ann.set_verticalalignment(va)
        return ann.get_window_extent(self.renderer)

    def _fits(self, box: Bbox) -> bool:
        a = self.axes_box
        inside = box.x0 >= a.x0 and box.x1 <= a.x1 and box.y0 >= a.y0 and box.y1 <= a.y1
        gap = 2 * self.px_per_pt  # the labels' white boxes reach ~1.5 pt past the text
        padded = box.expanded(1.0, 1.0).padded(gap)
        return inside and not any(padded.overlaps(other) for other in self.placed)

    def _soft_hits(self, box: Bbox) -> int:
        hits = sum(box.overlaps(m) for m in self.marker_boxes)
        return hits + sum(line.intersects_bbox(box, filled=False) for line in self.lines)


def _candidates(base: float) -> list[_Spot]:
    """Offsets (points) and alignments around a point: the four diagonals first (clear of the marker
    and of a monotone curve through it), then the sides, then the same ring farther out."""
    spots: list[_Spot] = []
    for d in (base, 2.2 * base):
        spots += [
            (d, d, "left", "bottom"),
            (-d, -d, "right", "top"),
            (d, -d, "left", "top"),
            (-d, d, "right", "bottom"),
            (0.0, 1.3 * d, "center", "bottom"),
            (0.0, -1.3 * d, "center", "top"),
            (1.3 * d, 0.0, "left", "center"),
            (-1.3 * d, 0.0, "right", "center"),
        ]
    return spots


def _short(value: Any, column: str | None = None) -> str:
    """A point's label: numbers compactly, named after their column ("t=0.9" for a threshold)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value)
    text = f"{value:.3g}"  # three digits tell neighbouring labelled thresholds apart; more is clutter
    if column is None:
        return text
    return f"{'t' if column == 'threshold' else column}={text}"
