"""The MLflow figures: 2x resolution, README axis names, few non-overlapping threshold labels, the
calibrated operating point and the static model marked, titles and tick labels that fit.

Pure matplotlib on the Agg canvas: no MLflow, no models."""

from __future__ import annotations

import io
import itertools
import math
import struct

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text

from elastic_cli import plots


def _curve(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """A threshold curve like evaluate's: high thresholds near speed-up 1, accuracy falling off."""
    t = np.linspace(0.05, 1.0, n)[::-1]
    speed = 1 + 2.5 * (1 - t) ** 1.5
    score = 0.845 - 0.25 * (1 - t) ** 3 + np.random.default_rng(seed).normal(0, 0.003, n)
    return pd.DataFrame({"threshold": t, "flops_speedup": speed, "score": score})


def _figure(df: pd.DataFrame | None = None, **kwargs) -> Figure:
    df = _curve() if df is None else df
    kwargs.setdefault("x_label", plots.axis_label("flops_speedup"))
    kwargs.setdefault("y_label", "accuracy")
    kwargs.setdefault("operating_point", (1.8, 0.83, "calibrated t=0.90"))
    kwargs.setdefault("static_point", (1.0, 0.846))
    return plots.pareto_figure(df, "flops_speedup", "score", "threshold", "pabee bert-base sst2", **kwargs)


def _texts(fig: Figure, gid: str) -> list[Text]:
    return [t for t in fig.axes[0].texts if t.get_gid() == gid]


def _line(fig: Figure, gid: str) -> Line2D:
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == gid]
    return line


def _png_size(fig: Figure) -> tuple[int, int]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # no dpi: what MLflow's log_figure does
    width, height = struct.unpack(">II", buf.getvalue()[16:24])  # the IHDR chunk
    return width, height


def _no_overlaps(texts: list[Text], fig: Figure) -> None:
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_axis_label_uses_the_readme_names() -> None:
    assert plots.axis_label("flops_speedup") == "FLOPs speed-up"
    assert plots.axis_label("layer_speedup") == "layer speed-up"
    assert plots.axis_label("latency_speedup_p50") == "latency speed-up (p50)"
    assert plots.axis_label("throughput_speedup") == "throughput speed-up"
    assert plots.axis_label("task_metric") == "task metric"
    for name in ("score", "accuracy", "f1", "matthews", "pearson"):
        assert plots.axis_label(name) == name
    assert plots.axis_label("mean_exit_layer") == "mean exit layer"


@pytest.mark.parametrize(
    "make",
    [
        lambda: _figure(),
        lambda: plots.exit_histogram_figure([3, 5, 2], [4, 8, 12], "exit layers"),
        lambda: plots.layer_tokens_figure([128.0, 90.5, 40.25], "tokens kept"),
    ],
    ids=["pareto", "exit_histogram", "layer_tokens"],
)
def test_figures_are_200_dpi_and_save_at_twice_the_pixels(make) -> None:
    fig = make()
    assert fig.dpi == 200
    width_in, height_in = fig.get_size_inches()
    assert _png_size(fig) == (round(width_in * 100 * 2), round(height_in * 100 * 2))


def test_pareto_axes_are_named_as_given_or_after_the_columns() -> None:
    ax = _figure().axes[0]
    assert ax.get_xlabel() == "FLOPs speed-up"
    assert ax.get_ylabel() == "accuracy"
    ax = plots.pareto_figure(_curve(), "flops_speedup", "score", "threshold", "t").axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("flops_speedup", "score")


@pytest.mark.parametrize("max_labels", [6, 3, 1, 0])
def test_pareto_labels_at_most_max_labels_of_a_30_point_curve(max_labels: int) -> None:
    fig = _figure(max_labels=max_labels)
    labels = _texts(fig, plots.THRESHOLD_LABEL_GID)
    assert len(labels) <= max_labels
    assert len(labels) >= min(max_labels, 2)  # a 30-point curve has room for at least its two ends
    # besides those, only the operating point's own label
    assert len(fig.axes[0].texts) == len(labels) + 1


def test_pareto_labels_include_both_ends_of_the_front() -> None:
    df = _curve()
    fig = _figure(df, operating_point=None)
    mask = plots.pareto_mask(df["flops_speedup"].tolist(), df["score"].tolist())
    front = df[mask].sort_values("flops_speedup")
    labelled = {t.xy for t in _texts(fig, plots.THRESHOLD_LABEL_GID)}  # type: ignore[attr-defined]
    for end in (front.iloc[0], front.iloc[-1]):
        assert (end["flops_speedup"], end["score"]) in labelled
    assert "t=0.05" in {t.get_text() for t in _texts(fig, plots.THRESHOLD_LABEL_GID)}


@pytest.mark.parametrize(
    "df",
    [
        _curve(),
        _curve(seed=3),
        # 30 points bunched into a small corner: most labels must move or go
        pd.DataFrame(
            {
                "threshold": np.linspace(0.5, 1.0, 30),
                "flops_speedup": np.r_[np.linspace(1.0, 1.05, 29), 3.0],
                "score": np.r_[np.linspace(0.85, 0.84, 29), 0.6],
            }
        ),
    ],
    ids=["curve", "curve_seed3", "bunched"],
)
@pytest.mark.parametrize("max_labels", [6, 30])
def test_pareto_labels_do_not_overlap_after_drawing(df: pd.DataFrame, max_labels: int) -> None:
    fig = _figure(df, max_labels=max_labels, operating_point=(1.02, 0.845, "calibrated t=0.90"))
    fig.canvas.draw()  # the layout the PNG gets, after the labels were placed
    texts = list(fig.axes[0].texts)
    assert _texts(fig, plots.OPERATING_LABEL_GID)
    _no_overlaps(texts, fig)
    # nor do two labels name points so close that a reader could not tell which is which
    anchors = [fig.axes[0].transData.transform(t.xy) for t in texts]  # type: ignore[attr-defined]
    for a, b in itertools.combinations(anchors, 2):
        assert math.dist(a, b) >= 10 * fig.dpi / 72
    axes_box = fig.axes[0].get_window_extent()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for t in texts:
        box = t.get_window_extent(renderer)
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1


def test_operating_and_static_points_are_drawn_where_given() -> None:
    fig = _figure(operating_point=(1.8, 0.83, "calibrated t=0.90"), static_point=(1.0, 0.846))
    ax = fig.axes[0]
    operating = _line(fig, plots.OPERATING_POINT_GID)
    assert operating.get_xydata().tolist() == [[1.8, 0.83]]  # type: ignore[union-attr]
    assert operating.get_label() == "calibrated t=0.90"
    assert operating.get_marker() == "*"
    (label,) = _texts(fig, plots.OPERATING_LABEL_GID)
    assert label.get_text() == "calibrated t=0.90"
    assert label.xy == (1.8, 0.83)  # type: ignore[attr-defined]
    static = _line(fig, plots.STATIC_POINT_GID)
    assert static.get_xydata().tolist() == [[1.0, 0.846]]  # type: ignore[union-attr]
    assert static.get_label() == "static model"
    level = _line(fig, plots.STATIC_LINE_GID)
    assert set(level.get_ydata()) == {0.846}  # type: ignore[arg-type]
    assert level.get_linestyle() == ":"
    (legend,) = fig.legends
    names = [t.get_text() for t in legend.get_texts()]
    assert "calibrated t=0.90" in names and "static model" in names
    # both stay inside the plotted range
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert x0 < 1.0 < x1 and y0 < 0.846 < y1


def test_operating_point_is_labelled_even_without_point_labels() -> None:
    fig = plots.pareto_figure(
        _curve(), "flops_speedup", "score", None, "t", operating_point=(2.0, 0.8, "calibrated t=0.50")
    )
    assert [t.get_text() for t in fig.axes[0].texts] == ["calibrated t=0.50"]


def test_pareto_legend_does_not_cover_the_axes() -> None:
    fig = _figure()
    fig.canvas.draw()
    (legend,) = fig.legends
    assert not legend.get_window_extent().overlaps(fig.axes[0].get_window_extent())


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({"threshold": [0.9], "flops_speedup": [1.4], "score": [0.8]}),
        pd.DataFrame(
            {
                "threshold": [0.9, 0.8, 0.7, 0.6],
                "flops_speedup": [1.2, float("nan"), 1.8, 2.0],
                "score": [0.85, 0.8, float("nan"), 0.7],
            }
        ),
        pd.DataFrame({"threshold": [0.9, 0.8, 0.7], "flops_speedup": [1.0, 1.0, 1.0], "score": [0.8, 0.7, 0.6]}),
        pd.DataFrame({"threshold": [0.9, 0.8], "flops_speedup": [1.5, 1.5], "score": [0.8, 0.8]}),
        pd.DataFrame({"threshold": [], "flops_speedup": [], "score": []}),
    ],
    ids=["one_row", "nan_rows", "equal_x", "duplicates", "empty"],
)
def test_pareto_odd_frames_still_draw(df: pd.DataFrame) -> None:
    fig = _figure(df)
    fig.canvas.draw()
    assert len(_texts(fig, plots.THRESHOLD_LABEL_GID)) <= 6
    _no_overlaps(list(fig.axes[0].texts), fig)
    assert _png_size(fig)[0] > 0


def test_pareto_non_finite_reference_points_are_left_out() -> None:
    fig = _figure(operating_point=(math.nan, 0.8, "calibrated t=0.90"), static_point=(1.0, math.nan))
    gids = {ln.get_gid() for ln in fig.axes[0].lines}
    assert plots.OPERATING_POINT_GID not in gids and plots.STATIC_POINT_GID not in gids


def test_pareto_positional_call_of_the_old_signature() -> None:
    # stages/evaluate.py, stages/calibrate.py and hydra_callbacks.py call it so
    df = pd.DataFrame({"label": ["a", "b", "c"], "flops_speedup": [1.0, 1.5, 2.0], "accuracy": [0.9, 0.85, 0.7]})
    fig = plots.pareto_figure(df, "flops_speedup", "accuracy", "label", "sweep")
    assert {t.get_text() for t in _texts(fig, plots.THRESHOLD_LABEL_GID)} <= {"a", "b", "c"}
    assert fig.axes[0].get_title() == "sweep"


LONG_TITLE = "pabee bert-base-uncased sst2 validation: exits after patience 3, with a title this long on purpose"


@pytest.mark.parametrize(
    "make",
    [
        lambda: plots.exit_histogram_figure([3, 5, 2], [4, 8, 12], LONG_TITLE),
        lambda: plots.layer_tokens_figure([128.0, 90.5], LONG_TITLE),
        lambda: plots.pareto_figure(_curve(), "flops_speedup", "score", "threshold", LONG_TITLE * 2),
    ],
    ids=["exit_histogram", "layer_tokens", "pareto"],
)
def test_long_titles_are_not_clipped(make) -> None:
    fig = make()
    fig.canvas.draw()
    title = fig.axes[0].title
    box = title.get_window_extent()
    assert "\n" in title.get_text()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert title.get_text().replace("\n", " ").startswith(LONG_TITLE)


@pytest.mark.parametrize("n", [12, 24, 48])
@pytest.mark.parametrize("kind", ["exit_histogram", "layer_tokens"])
def test_bar_tick_and_value_labels_do_not_overlap(kind: str, n: int) -> None:
    if kind == "exit_histogram":
        fig = plots.exit_histogram_figure([12345] * n, list(range(1, n + 1)), "pabee bert-base sst2")
    else:
        fig = plots.layer_tokens_figure([127.5] * n, "pabee bert-base sst2")
    fig.canvas.draw()
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    if n <= 24:
        assert len(ticks) == n  # every bar named
    _no_overlaps(ticks, fig)
    _no_overlaps(list(ax.texts), fig)  # the values on the bars
    assert min(t.get_fontsize() for t in ticks) >= 8
