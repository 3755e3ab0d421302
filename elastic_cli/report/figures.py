"""The report's accuracy / speed-up figure, twice: a PNG (matplotlib, for papers and the MLflow UI) and an
interactive, self-contained HTML page (plotly, its JavaScript inlined so that it opens offline).

Each row is one colour: its Pareto front as a line, its dominated thresholds as faint dots, its operating
point as a star, and the two oracles as diamonds (open: the consistent oracle, full-depth predictions at
the fewest layers; filled: the correct oracle, the earliest right exit). A static model (one point) is a
square at speed-up 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from elastic_cli import plots
from elastic_cli.report.table import Series, X, Y

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# plotly's and matplotlib's default qualitative palette (Tableau 10), so both figures colour rows alike
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
ORACLE_NAMES = {"consistency": "consistent oracle", "correct": "correct oracle"}
FRONT_GROUP = "front"  # the `meta` of each row's front trace in the HTML: one per row


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def png_figure(drawn: Sequence[Series], title: str, x_label: str, y_label: str) -> Figure:
    """Every row's front, thresholds, operating point and oracles on one axes."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10.5, 6.0), dpi=plots.DPI)
    ax = fig.add_subplot()
    for i, s in enumerate(drawn):
        c = color(i)
        if len(s.points) == 1:
            ax.plot(s.points[X], s.points[Y], "s", color=c, markersize=8, label=s.label)
            continue
        ax.plot(s.points[X], s.points[Y], ".", color=c, alpha=0.25, markersize=4)
        ax.plot(s.front[X], s.front[Y], "-o", color=c, markersize=3, linewidth=1.5, label=s.label)
        if s.operating is not None:
            ax.plot(s.operating[0], s.operating[1], "*", color=c, markersize=14, markeredgecolor="black")
        for kind, (ox, oy) in s.oracles.items():
            face = "none" if kind == "consistency" else c
            ax.plot(ox, oy, "D", markersize=7, markerfacecolor=face, markeredgecolor=c, markeredgewidth=1.5)
    keys = [
        Line2D([], [], marker="*", linestyle="", color="grey", markeredgecolor="black", markersize=12),
        Line2D([], [], marker="D", linestyle="", markerfacecolor="none", markeredgecolor="grey"),
        Line2D([], [], marker="D", linestyle="", color="grey"),
    ]
    # beside the axes, not on them: the fronts fill the plot from corner to corner
    rows = ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="Pareto front", title_fontsize=8
    )
    ax.add_artist(rows)
    ax.legend(
        keys,
        ["operating point", "consistent oracle", "correct oracle"],
        loc="lower left",
        bbox_to_anchor=(1.02, 0.0),
        fontsize=8,
    )
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=plots.TITLE_FONTSIZE)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def html_figure(drawn: Sequence[Series], title: str, x_label: str, y_label: str) -> Any:
    """The same figure in plotly: hover shows the threshold, score, speed-up and exit shares. Each row
    is a legend group (clicking it hides the row); its front is the trace whose meta is FRONT_GROUP."""
    import plotly.graph_objects as go

    fig = go.Figure()
    where = f"{y_label} %{{y:.4f}}<br>{x_label} %{{x:.2f}}x"
    hover = (
        f"<b>%{{fullData.legendgroup}}</b><br>threshold %{{customdata[0]}}<br>{where}<br>%{{customdata[1]}}"
    )
    for i, s in enumerate(drawn):
        c = color(i)
        single = len(s.points) == 1  # a static model
        # plain lists: numpy arrays would be written base64-encoded, unreadable in the page's source
        fig.add_scatter(
            x=s.points[X].tolist(),
            y=s.points[Y].tolist(),
            customdata=_hover_data(s.points),
            hovertemplate=hover + "<extra></extra>",
            mode="markers",
            name=f"{s.label}: thresholds",
            showlegend=False,
            opacity=0.35,
            meta="thresholds",
            legendgroup=s.label,
            marker=dict(color=c),
        )
        fig.add_scatter(
            x=s.front[X].tolist(),
            y=s.front[Y].tolist(),
            customdata=_hover_data(s.front),
            hovertemplate=hover + "<extra></extra>",
            mode="markers" if single else "lines+markers",
            name=s.label,
            meta=FRONT_GROUP,
            legendgroup=s.label,
            line=dict(color=c),
            marker=dict(color=c, symbol="square" if single else "circle", size=10 if single else 6),
        )
        marks = [] if s.operating is None or single else [("operating", s.operating[2], *s.operating[:2])]
        marks += [(f"oracle_{kind}", ORACLE_NAMES[kind], ox, oy) for kind, (ox, oy) in s.oracles.items()]
        for meta, text, x, y in marks:
            fig.add_scatter(
                x=[x],
                y=[y],
                hovertemplate=f"<b>{s.label}</b><br>{text}<br>{where}<extra></extra>",
                mode="markers",
                name=f"{s.label}: {text}",
                showlegend=False,
                meta=meta,
                legendgroup=s.label,
                marker=_MARKS[meta](c),
            )
    fig.update_layout(
        title=title,
        xaxis_title=x_label,
        yaxis_title=y_label,
        template="plotly_white",
        legend=dict(title="Pareto front (click to hide)"),
        annotations=[
            dict(
                text="★ operating point   ◇ consistent oracle   ◆ correct oracle   · every threshold",
                xref="paper",
                yref="paper",
                x=0,
                y=-0.13,
                showarrow=False,
                font=dict(size=11),
            )
        ],
        margin=dict(b=90),
    )
    return fig


# the markers of a row's single points, in the row's colour
_MARKS = {
    "operating": lambda c: dict(color=c, symbol="star", size=16, line=dict(color="black", width=1)),
    "oracle_consistency": lambda c: dict(
        color="rgba(0,0,0,0)", symbol="diamond", size=11, line=dict(color=c, width=2)
    ),
    "oracle_correct": lambda c: dict(color=c, symbol="diamond", size=11, line=dict(color=c, width=2)),
}


def _hover_data(points: Any) -> list[list[str]]:
    """[threshold, exit shares] per point, for the hover text."""
    return [[_threshold(t), str(e)] for t, e in zip(points["threshold"], points["exits"])]


def _threshold(value: Any) -> str:
    from elastic_cli import run_record

    try:
        return run_record.threshold_text(float(value))
    except (TypeError, ValueError):
        return str(value)
