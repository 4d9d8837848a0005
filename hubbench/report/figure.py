"""Drawing helpers every figure shares: the canvas, titles, the n axis, legends and the
marked gaps where a cell failed or was skipped.

Figures are bare `matplotlib.figure.Figure` objects (no pyplot, no global state), rendered by Agg.
A failed or skipped cell keeps its place: an x at the foot of the axes in its series' colour,
its status beside it, and a footnote naming it. Legends sit outside the axes so they never hide
data.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench.report import style
from hubbench.report.format import fmt_seq
from hubbench.report.load import norm_value, run_label
from hubbench.report.series import Facet, Series, title_parts

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class Figured:
    """What a drawing function hands back: the figure, its file stem and its notes."""

    fig: Figure
    stem: str
    notes: list[str] = field(default_factory=list)


def new_figure(width: float = 7.4, height: float = 4.3) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)  # Agg explicitly: no display, same pixels on every machine
    return fig


def title(fig: Figure, ax: Axes | None, what: str, facet: Facet) -> None:
    main, shape = title_parts(facet)
    sub = " · ".join(p for p in (shape, f"run {run_label(facet.df)}") if p)
    if ax is not None:
        ax.set_title(f"{what} — {main}", loc="left", fontweight="bold", pad=20)
        ax.annotate(
            sub,
            (0, 1),
            xycoords="axes fraction",
            xytext=(0, 7),
            textcoords="offset points",
            fontsize=8.5,
            color="#444444",
        )
    else:
        fig.suptitle(
            f"{what} — {main}", x=0.02, y=0.995, ha="left", va="top", fontweight="bold", fontsize=11
        )
        fig.text(0.02, 1 - 0.3 / fig.get_figheight(), sub, fontsize=8.5, color="#444444", va="top")


def seq_axis(ax: Axes, seqs: Sequence[int]) -> None:
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted({int(s) for s in seqs})
    if len(ticks) > 9:  # keep the axis readable: powers of two only
        pow2 = [t for t in ticks if t & (t - 1) == 0]
        ticks = pow2[:: max(1, len(pow2) // 8)] if pow2 else ticks[:: len(ticks) // 8]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(style.seq_formatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(seqs), max(seqs)
    ax.set_xlim(lo / 1.35, hi * 1.35)
    ax.set_xlabel("sequence length n (tokens)")


def legend(ax: Axes, title: str | None = None) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            title=title,
            alignment="left",
            borderaxespad=0.0,
        )


def failures(s: Series) -> list[tuple[int, str, str]]:
    """(seq, status, message) of a series' failed / skipped cells."""
    return [
        (int(r["seq"]), str(r["status"]), str(norm_value(r["message"]) or ""))
        for _, r in s.failed.iterrows()
    ]


def mark_failures(ax: Axes, marks: list[tuple[int, str, str]], log_y: bool = True) -> None:
    """x markers in a band under the data: (seq, status, colour), stacked where they coincide.

    The status goes right of its x, or left when a neighbour on the right would collide, or is
    left to the footnote when both sides are taken.
    """
    from matplotlib.transforms import blended_transform_factory

    marks = list(dict.fromkeys(marks))
    if not marks:
        return
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    placed: dict[tuple[int, int], tuple[str, str]] = {}  # (seq, level) -> (status, colour)
    depth: dict[int, int] = {}
    for seq, status, colour in marks:
        level = depth.get(seq, 0)
        depth[seq] = level + 1
        placed[(seq, level)] = (status, colour)
    for (seq, level), (status, colour) in placed.items():
        y = 0.035 + 0.06 * level
        ax.plot([seq], [y], transform=trans, marker="x", color=colour, markersize=7,
                markeredgewidth=2.0, linestyle="none", clip_on=False, zorder=5)  # fmt: skip
        right = any(s > seq and s <= seq * 2.5 for s, lv in placed if lv == level)
        left = any(s < seq and s >= seq / 2.5 for s, lv in placed if lv == level)
        if right and left:
            continue
        ax.annotate(status, (seq, y), xycoords=trans, xytext=(-5, -3) if right else (5, -3),
                    ha="right" if right else "left", textcoords="offset points", fontsize=7.5,
                    color=colour)  # fmt: skip
    band = 0.06 * max(depth.values()) + 0.04  # fraction of the axes kept free for the markers
    lo, hi = ax.get_ylim()
    if log_y:
        span = math.log10(hi) - math.log10(lo)
        ax.set_ylim(10 ** (math.log10(lo) - span * band / (1 - band)), hi)
    else:
        ax.set_ylim(lo - (hi - lo) * band / (1 - band), hi)


def failure_notes(series: list[Series]) -> list[str]:
    items = []
    for s in series:
        for seq, status, message in failures(s):
            why = f" ({textwrap.shorten(message, 60)})" if message else ""
            items.append(f"{s.label} n={fmt_seq(seq)}: {status}{why}")
    if not items:
        return []
    shown = items[:8]
    more = f"; +{len(items) - 8} more" if len(items) > 8 else ""
    return ["Not measured (x at the foot of the axes): " + "; ".join(shown) + more + "."]


def footnote(fig: Figure, ax: Axes, notes: list[str]) -> None:
    if not notes:
        return
    text = "\n".join(textwrap.fill(n, 120) for n in notes)
    ax.annotate(
        text,
        (0, 0),
        xycoords="axes fraction",
        xytext=(0, -40),
        textcoords="offset points",
        va="top",
        ha="left",
        fontsize=7.5,
        color="#333333",
        annotation_clip=False,
    )


def all_seqs(series: list[Series]) -> list[int]:
    return sorted({int(x) for s in series for x in s.rows["seq"]})


def col(df: pd.DataFrame, name: str) -> Any:
    import numpy as np

    return np.asarray(df[name].astype(float))


def minor_labels(ax: Axes, formatter: Any) -> None:
    """Label minor log ticks so that a narrow axis still has three or more labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = ax.get_ylim()
    span = math.log10(hi) - math.log10(lo)
    decades = math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1  # labelled majors
    if span >= 1.2 and decades >= 3:
        ax.yaxis.set_minor_formatter(NullFormatter())
        return
    if span >= 1.2:
        keep: tuple[float, ...] = (2.0, 5.0)
    elif span >= 0.6:
        keep = (2.0, 3.0, 5.0)
    else:
        keep = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    if span < 0.25:  # a narrow band: label every minor tick, halves included
        from matplotlib.ticker import LogLocator

        ax.yaxis.set_minor_locator(LogLocator(subs=[x / 2 for x in range(2, 20)]))
        keep = tuple(x / 2 for x in range(2, 20))

    def label(y: float, pos: Any) -> str:
        mantissa = round(y / 10 ** math.floor(math.log10(y)), 6)
        return formatter(y, pos) if mantissa in keep else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def bytes_axis(ax: Axes) -> None:
    """Powers of two on a memory axis: 512 MiB, 1 GiB, 2 GiB read better than 954 MiB."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(LogLocator(base=2, numticks=9))
    ax.yaxis.set_major_formatter(style.bytes_formatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
