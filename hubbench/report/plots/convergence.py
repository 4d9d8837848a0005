"""convergence: the fraction of each config's seeds that converged against the number of hubs M."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hubbench.report import style
from hubbench.report.plots.figure import (
    Figured,
    legend,
    line_axes,
    mark_failures,
    new_figure,
    title,
)
from hubbench.report.plots.quality import (
    Line,
    gap_note,
    leak_note,
    lines,
    percent,
    quality_rows,
    setup,
    unmeasured,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.series import Facet

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def converged_counts(rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(converged, seeds with a verdict) over ok rows."""
    verdicts = [bool(r["converged"]) for r in rows
                if r.get("status") == "ok" and r.get("converged") is not None]  # fmt: skip
    return sum(verdicts), len(verdicts)


def _hub_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [r for r in quality_rows(df) if r.get("hubs") is not None]


def has_convergence(df: pd.DataFrame) -> bool:
    rows = [r for r in _hub_rows(df) if r.get("status") == "ok" and r.get("converged") is not None]
    if len({r["hubs"] for r in rows}) < 2:
        return False
    return any(
        converged_counts(r for r in line.rows if r["hubs"] == m)[1] >= 2
        for line in lines(rows, ("hubs",))
        for m in {r["hubs"] for r in line.rows}
    )


def convergence(facet: Facet) -> Figured:
    rows = _hub_rows(facet.df)
    hubs = sorted({int(r["hubs"]) for r in rows})
    fig = new_figure()
    ax = line_axes(fig)
    found = lines(rows, ("hubs",))
    marks, gaps = [], []
    taken: dict[tuple[int, float], int] = {}  # (M, fraction) -> labels already there
    for i, line in enumerate(found):
        dodge = 2 ** (0.04 * (i - (len(found) - 1) / 2))
        more_marks, more_gaps = _line(ax, line, [(m, m * dodge) for m in hubs], taken)
        marks += more_marks
        gaps += more_gaps
    _hubs_axis(ax, hubs)
    ax.set_ylim(-0.04, 1.06)
    ax.yaxis.set_major_formatter(percent())
    ax.set_ylabel("seeds converged")
    mark_failures(ax, marks, log_y=False)
    title(fig, "Convergence against the number of hubs", facet)
    legend(ax)
    threshold = next((str(r["converge_threshold"]) for r in rows
                      if r.get("converge_threshold")), "the task's threshold")  # fmt: skip
    trained = setup(facet)
    notes = [
        f"Share of seeds whose trained model reached {threshold}; the labels give converged/seeds."
        + (f" Trained: {trained}." if trained else ""),
        *_without_hubs(facet.df),
        *gap_note(gaps),
        *leak_note(found, "convergence"),
    ]
    caption = (
        f"Fraction of seeds that converged ({threshold}) against the number of hubs M, one line "
        "per config; each point is labelled converged/seeds."
    )
    return Figured(fig, str(facet.fixed.get("task") or ""), notes, caption)


def _line(
    ax: Axes, line: Line, at: list[tuple[int, float]], taken: dict[tuple[int, float], int]
) -> tuple[list[tuple[float, str, str]], list[str]]:
    """Draw one config's fraction converged at each M (at: M and where its point goes), each
    point labelled converged/seeds; the marks and notes of its cells that gave no verdict."""
    marks, gaps, xs, ys, counts = [], [], [], [], []
    for m, x in at:
        here = [r for r in line.rows if r["hubs"] == m]
        k, n = converged_counts(here)
        more_marks, more_gaps = unmeasured(line, here, x, f"M={m}")
        marks += more_marks
        gaps += more_gaps
        if n == 0:
            continue
        xs.append(x)
        ys.append(k / n)
        counts.append(f"{k}/{n}")
    if not xs:
        ax.plot([], [], label=line.name + " (no ok cells)", **line.style.kwargs())
        return marks, gaps
    ax.plot(xs, ys, label=line.name, markersize=5.5,
            markerfacecolor="white" if line.leaks else line.style.color,
            **line.style.kwargs())  # fmt: skip
    for x, y, text in zip(xs, ys, counts, strict=True):
        spot = (round(math.log2(x)), round(y, 3))
        level = taken.get(spot, 0)  # lines that meet: their counts stack, not overlap
        taken[spot] = level + 1
        below = y > 0.8
        ax.annotate(text, (x, y), xytext=(6, (-9 - 8 * level) if below else (5 + 8 * level)),
                    textcoords="offset points", fontsize=style.NOTE_SIZE,
                    color=line.style.color, ha="left", va="center",
                    annotation_clip=False)  # fmt: skip
    return marks, gaps


def _hubs_axis(ax: Axes, hubs: list[int]) -> None:
    """M on a log2 axis, ticked at the values the run has."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(hubs, [str(m) for m in hubs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(hubs[0] / 1.4, hubs[-1] * 1.4)
    ax.set_xlabel("hubs M")


def _without_hubs(df: pd.DataFrame) -> list[str]:
    """The configs without hubs (the attention baseline) as counts: they have no M to sit at."""
    rows = [r for r in quality_rows(df) if r.get("hubs") is None]
    parts = []
    for line in lines(rows, ("hubs",)):
        k, n = converged_counts(line.rows)
        if n:
            parts.append(f"{line.label} {k}/{n}")
    return ["Without hubs (no M): " + "; ".join(parts) + " converged."] if parts else []


register(Kind(
    "convergence", convergence, has_convergence,
    hint="convergence needs ok quality cells at two or more hubs values, one of them "
    "with two or more seeds: run `hubbench run quality` over hubs and seeds",
    lacks="no hubs values with two or more seeds",
    modes=frozenset({"quality"}),
))  # fmt: skip
