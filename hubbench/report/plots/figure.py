"""Drawing helpers every figure shares: the canvas, titles, the n axis, legends and the
marked gaps where a cell failed or was skipped.

Figures are bare `matplotlib.figure.Figure` objects (no pyplot, no global state), rendered by Agg.
A failed cell keeps its place: an x at the foot of the axes in its series' colour, its status
beside it, and a footnote naming it; a series that never ran (every cell skipped, e.g. flash-attn
on CPU) takes no legend slot and no marks, only its name in one "not run" line. Legend and notes
sit under the axes so they never hide data and the figure keeps its width (style.WIDTH).
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
    caption: str = ""  # what the figure shows, in words (the report's figcaption)


def new_figure(width: float = style.WIDTH, height: float = style.AXES_HEIGHT + 1.25) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=None)
    FigureCanvasAgg(fig)  # Agg explicitly: no display, same pixels on every machine
    return fig


TOP, BOTTOM = 0.75, 0.5  # inches above the axes (title, two subtitle lines) and below (n axis)


def line_axes(fig: Figure, left: float = 0.72) -> Axes:
    """The one axes of a line figure, placed in inches so every figure kind lines up."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    return fig.add_axes((left / w, BOTTOM / h, (w - left - 0.1) / w, (h - TOP - BOTTOM) / h))


MARGIN = 0.08  # inches: title and notes start this far from the figure's left edge


def title(fig: Figure, what: str, facet: Facet) -> None:
    """`what` in bold at the top left; under it the facet (device, dtype, mode, batch), then the
    model shape and the run. Figure-level text, so a chart with long row labels lines up too."""
    main, shape = title_parts(facet)
    sub = " · ".join(p for p in (shape, f"run {run_label(facet.df)}") if p)
    h = fig.get_figheight()
    fig.text(MARGIN / fig.get_figwidth(), 1 - 0.06 / h, what, ha="left", va="top",
             fontweight="bold", fontsize=10)  # fmt: skip
    fig.text(MARGIN / fig.get_figwidth(), 1 - 0.27 / h, f"{main}\n{sub}", ha="left", va="top",
             fontsize=style.NOTE_SIZE + 0.5, color="#444444", linespacing=1.3)  # fmt: skip


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


BELOW = 34  # points from the axes' foot to what goes under them (past tick labels and x label)


def legend(ax: Axes, title: str | None = None) -> None:
    """Under the axes, one or two columns: it never covers data, and the figure keeps its width."""
    from matplotlib.transforms import ScaledTranslation

    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    shift = ScaledTranslation(0, -BELOW / 72, ax.figure.dpi_scale_trans)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(0.0, 0.0),
        bbox_transform=ax.transAxes + shift,
        ncols=2 if max(len(lb) for lb in labels) <= 28 and len(labels) > 2 else 1,
        title=title,
        alignment="left",
        borderaxespad=0.0,
        columnspacing=1.2,
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


def never_ran(s: Series) -> bool:
    """Every cell of the series was skipped: nothing of it was ever measured."""
    return len(s.rows) > 0 and bool((s.rows["status"] == "skipped").all())


def split_ran(series: list[Series]) -> tuple[list[Series], list[Series]]:
    """(series with at least one cell that ran or failed, series that never ran)."""
    return [s for s in series if not never_ran(s)], [s for s in series if never_ran(s)]


def _why(message: str) -> str:
    """The reason of a skip, short: up to the first ': ' (what follows is often an install hint)."""
    head = message.split(": ")[0] if ": " in message else message
    return textwrap.shorten(head, 60, placeholder="…")


def not_run_note(never: list[Series]) -> list[str]:
    """One line for every series that never ran, grouped by reason."""
    if not never:
        return []
    groups: dict[str, list[str]] = {}
    for s in never:
        messages = [m for _, _, m in failures(s) if m]
        groups.setdefault(_why(messages[0]) if messages else "", []).append(s.label)
    parts = [", ".join(names) + (f" ({why})" if why else "") for why, names in groups.items()]
    return ["Not run: " + "; ".join(parts) + "."]


def failure_notes(series: list[Series], where: str = "x at the foot of the axes") -> list[str]:
    """Failed cells of the series that ran, then the series that never ran, in one line."""
    ran, never = split_ran(series)
    items = []
    for s in ran:
        for seq, status, message in failures(s):
            why = f" ({textwrap.shorten(message, 60)})" if message and message != status else ""
            items.append(f"{s.label} n={fmt_seq(seq)}: {status}{why}")
    notes = not_run_note(never)
    if not items:
        return notes
    shown = items[:8]
    more = f"; +{len(items) - 8} more" if len(items) > 8 else ""
    return [f"Not measured ({where}): " + "; ".join(shown) + more + ".", *notes]


def footnote(fig: Figure, ax: Axes, notes: list[str]) -> None:
    """The notes under the legend (or under the x label when there is none), wrapped to width."""
    if not notes:
        return
    width = round(fig.get_figwidth() * 72 / (style.NOTE_SIZE * 0.52))  # characters per line
    text = "\n".join(textwrap.fill(n, width, break_on_hyphens=False) for n in notes)
    leg = ax.get_legend()
    anchor: Any = ("axes fraction", leg) if leg is not None else "axes fraction"
    ax.annotate(
        text,
        (0, 0),
        xycoords=anchor,
        xytext=((MARGIN - ax.get_position().x0 * fig.get_figwidth()) * 72, -8 if leg else -BELOW),
        textcoords="offset points",
        va="top",
        ha="left",
        fontsize=style.NOTE_SIZE,
        color="#333333",
        annotation_clip=False,
        linespacing=1.3,
    )


def mark_crossovers(ax: Axes, crossings: list[tuple[float, str, str]]) -> None:
    """A dashed vertical line at each crossover n (colour of the hub), its label along it."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for n, label, colour in crossings:
        line = ax.axvline(n, color=colour, linestyle=(0, (4, 2.5)), linewidth=1.0, zorder=1.5,
                          alpha=0.9)  # fmt: skip
        line.set_gid("crossover")
        ax.annotate(label, (n, 0.98), xycoords=trans, xytext=(2, 0), textcoords="offset points",
                    rotation=90, ha="left", va="top", fontsize=style.NOTE_SIZE - 0.5,
                    color=colour, gid="crossover-label",
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "alpha": 0.75,
                          "edgecolor": "none"})  # fmt: skip


def context(facet: Facet) -> str:
    """'NVIDIA H200, bf16, forward, batch 8': the facet in a caption's words."""
    return title_parts(facet)[0].replace(" · ", ", ")


def all_seqs(series: list[Series]) -> list[int]:
    return sorted({int(x) for s in series for x in s.rows["seq"]})


def col(df: pd.DataFrame, name: str) -> Any:
    import numpy as np

    return np.asarray(df[name].astype(float))
