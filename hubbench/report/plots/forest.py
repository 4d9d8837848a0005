"""The chart of a facet measured at one sequence length: one row per series (a forest plot).

At a single n a line plot stacks every series on one x position. Here each series gets its own
row, in the order of the line plots' legends (baselines first, hub variants last), with its point
on a log value axis, its whiskers (the same p10-p90 or bootstrap interval the line plots draw)
and its value in a column at the right. A cell that did not run keeps its row: an x at the
left edge in the series' colour, its status beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbench.report import style
from hubbench.report.plots.figure import BOTTOM, TOP, new_figure
from hubbench.report.plots.ticks import log_axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class Row:
    label: str
    style: style.SeriesStyle
    value: float | None = None  # None: the cell did not run; `status` says why
    low: float | None = None  # interval ends in the value's units (None: no interval)
    high: float | None = None
    status: str = "ok"


ROW_HEIGHT = 0.27  # inches per series (0.36 when a label takes two lines)
CHAR = 8 * 0.52 / 72  # inches per character of an 8 pt label (DejaVu Sans, on average)
WRAP = 30  # characters: a longer "hub over baseline" label breaks after "over"


def forest_figure(
    rows: list[Row],
    xlabel: str,
    formatter: Any,
    *,
    binary: bool = False,
    parity: float | None = None,
    column_title: str = "",
    text: Callable[[float], str] | None = None,
) -> tuple[Figure, Axes]:
    """The figure and its axes, rows drawn; the caller adds title, notes and caption.

    text: how a number reads in the column (default: the tick formatter's spelling).
    """
    spell = text or (lambda v: str(formatter(v, None)))
    labels = [_wrap(r.label) for r in rows]
    lines = max(lb.count("\n") + 1 for lb in labels)
    left = 0.2 + CHAR * max(len(part) for lb in labels for part in lb.split("\n"))
    column = 0.25 + CHAR * max(len(_column_text(r, spell)) for r in rows)
    width = max(style.WIDTH, left + 1.9 + column)
    row = ROW_HEIGHT if lines == 1 else 0.36
    fig = new_figure(width, TOP + BOTTOM + 0.15 + row * len(rows))
    w, h = fig.get_figwidth(), fig.get_figheight()
    ax = fig.add_axes((left / w, BOTTOM / h, (w - left - column) / w, (h - TOP - BOTTOM) / h))
    values = [] if parity is None else [parity]
    for y, r in enumerate(rows):
        values += [v for v in (r.value, r.low, r.high) if v is not None]
        _row(ax, y, r, spell)
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first series on top, as in the legends
    ax.tick_params(axis="y", length=0)
    ax.grid(False, axis="y")
    if parity is not None:
        ax.axvline(parity, color="#777777", linewidth=1.0, zorder=1)
    log_axis(ax, values, formatter, axis="x", binary=binary)
    ax.set_xlabel(xlabel)
    if column_title:
        ax.annotate(column_title, (1, 1), xycoords="axes fraction", xytext=(8, 3),
                    textcoords="offset points", fontsize=style.NOTE_SIZE, color="#444444",
                    va="bottom")  # fmt: skip
    return fig, ax


def _row(ax: Axes, y: int, r: Row, spell: Callable[[float], str]) -> None:
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transAxes, ax.transData)
    if r.value is None:
        ax.plot([0.03], [y], transform=trans, marker="x", color=r.style.color, markersize=6,
                markeredgewidth=1.8, linestyle="none", clip_on=False)  # fmt: skip
        ax.text(0.06, y, r.status, transform=trans, va="center", fontsize=7.5, color=r.style.color)
    else:
        xerr = None
        if r.low is not None and r.high is not None:
            xerr = [[max(0.0, r.value - r.low)], [max(0.0, r.high - r.value)]]
        ax.errorbar([r.value], [y], xerr=xerr, color=r.style.color, marker=r.style.marker,
                    markersize=5.5, linestyle="none", elinewidth=1.4, capsize=3)  # fmt: skip
    ax.annotate(_column_text(r, spell), (1, y), xycoords=trans, xytext=(8, 0),
                textcoords="offset points", va="center", fontsize=7.5, color="#222222",
                annotation_clip=False)  # fmt: skip


def _column_text(r: Row, spell: Callable[[float], str]) -> str:
    """The number beside a row: its value (the whiskers show the interval), or its status."""
    return r.status if r.value is None else spell(r.value)


def _wrap(label: str) -> str:
    if len(label) <= WRAP or " over " not in label:
        return label
    return label.replace(" over ", " over\n", 1)
