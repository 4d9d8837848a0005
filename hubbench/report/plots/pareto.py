"""pareto: held-out quality against training throughput, one point per config (its seeds
pooled), and the front of the configs no other beats on both; a config that leaks stays off it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubbench.report import style
from hubbench.report.plots.figure import Figured, context, legend, line_axes, new_figure, title
from hubbench.report.plots.quality import (
    Line,
    Pooled,
    facet_task,
    floor_name,
    gap_note,
    hows,
    lines,
    percent,
    pool,
    quality_rows,
    seq_facets,
    unmeasured,
    with_setup,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.plots.ticks import log_axis
from hubbench.report.seeds import configs, pareto_front, quality_metric
from hubbench.report.series import Facet

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def front_of(
    points: Sequence[tuple[float, float]], leaks: Sequence[bool], higher: bool
) -> list[int]:
    """Indices (into points) of the Pareto front of the points that do not leak, sorted by x:
    a model that is not causal can look better than any valid one, so it never joins."""
    valid = [i for i, leak in enumerate(leaks) if not leak]
    return [valid[j] for j in pareto_front([points[i] for i in valid], higher)]


def pareto(facet: Facet) -> Figured:
    task = facet_task(facet)
    column, label, higher = quality_metric(task)
    rows = quality_rows(facet.df)
    fig = new_figure()
    ax = line_axes(fig)
    points, leaks, pooled, gaps, xs_all = [], [], [], [], []
    for line in lines(rows, ()):
        gaps += unmeasured(line, line.rows, 0, "")[1]
        drawn = _config(ax, line, column, higher)
        if drawn is not None:
            point, got, bar = drawn
            points.append(point)
            leaks.append(line.leaks)
            pooled.append(got)
            xs_all += bar
    front = front_of(points, leaks, higher)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#777777",
                linewidth=1, zorder=0, label="Pareto front")  # fmt: skip
    base = next((r["baseline_quality"] for r in rows if r.get("baseline_quality") is not None),
                None)  # fmt: skip
    if base is not None:
        ax.axhline(float(base), color="#999999", linestyle="--", linewidth=1,
                   label=floor_name(rows) if higher else "unigram model")  # fmt: skip
    log_axis(ax, xs_all, style.si_formatter(), axis="x")
    ax.set_xlabel("training throughput (tokens/s)")
    ax.set_ylabel(label)
    if higher:
        ax.yaxis.set_major_formatter(percent())
    title(fig, f"Quality against training speed: {task}", facet)
    legend(ax)
    floor = floor_name(rows) if higher else "the unigram model"
    shown = Shown(len(front) > 1, any(leaks), base is not None, floor)
    notes, caption = _words(facet, higher, pooled, gaps, shown)
    return Figured(fig, task, notes, caption)


def _config(
    ax: Axes, line: Line, column: str, higher: bool
) -> tuple[tuple[float, float], Pooled, list[float]] | None:
    """Draw one config's point: the median training tokens/s (bars: its lowest p10 to highest
    p90) against its seeds' mean quality; ((x, y), the pooled quality, the bar's ends), or None
    (then only its name is drawn) when it has no quality or no tokens/s."""
    got = pool(r.get(column) for r in line.ok)
    speed = [float(r["tokens_per_s"]) for r in line.ok if r.get("tokens_per_s") is not None]
    if got is None or not speed:
        ax.plot([], [], label=line.name + " (no ok cells)", linestyle="none",
                marker=line.style.marker, color=line.style.color)  # fmt: skip
        return None
    x = statistics.median(speed)
    lo = min(float(r.get("tokens_per_s_p10") or r["tokens_per_s"]) for r in line.ok)
    hi = max(float(r.get("tokens_per_s_p90") or r["tokens_per_s"]) for r in line.ok)
    y_lo, y_hi = (max(got.low, 0.0), min(got.high, 1.0)) if higher else (got.low, got.high)
    ax.errorbar(x, got.mean, xerr=[[x - lo], [hi - x]],
                yerr=[[got.mean - y_lo], [y_hi - got.mean]], color=line.style.color,
                marker=line.style.marker, markersize=7, linestyle="none", capsize=3,
                elinewidth=0.9, markerfacecolor="white" if line.leaks else line.style.color,
                label=line.name)  # fmt: skip
    return (x, got.mean), got, [lo, hi]


@dataclass(frozen=True)
class Shown:
    """What a pareto figure draws besides its points, for its notes and caption."""

    front: bool  # the Pareto front, a grey line (two or more configs on it)
    leaks: bool  # hollow points: configs that are not causal
    base: bool  # the dashed line of chance (the recall-free ceiling) or the unigram model
    floor: str = "chance"  # what that line is


def _words(
    facet: Facet, higher: bool, pooled: list[Pooled], gaps: list[str], shown: Shown
) -> tuple[list[str], str]:
    """The figure's notes and caption, naming only what it draws."""
    how = hows(pooled)
    seeds = max((p.n for p in pooled), default=0)
    what = "accuracy" if higher else "bits per byte"
    floor = shown.floor if higher else "the unigram model (bits per byte of the byte frequencies)"
    first = (
        f"One point per config, its seeds pooled (up to {seeds}): x the median training tokens/s "
        f"(bars: lowest p10 to highest p90 of its updates), y the mean held-out {what} (bars: "
        f"{how})."
    )
    if shown.front:
        first += " Grey line: the Pareto front, the configs no other beats on both axes."
    if shown.base:
        first += f" Dashed: {floor}."
    notes = [first, *gap_note(gaps, "not drawn")]
    if shown.leaks:
        notes.append("Hollow, (leaks): the trained model failed the causality checks or is "
                     "not causal; its quality is not a valid result, and it stays off the "
                     "front.")  # fmt: skip
    said = [f"the mean over its seeds with {how} as error bars"]  # only what is drawn
    if shown.front:
        said.append("the grey line joins the configs no other config beats on both")
    if shown.leaks:
        said.append("hollow points (not causal) stay off it" if shown.front else
                    "hollow points are not causal")  # fmt: skip
    if shown.base:
        said.append(f"the dashed line is {shown.floor}")
    caption = (
        f"Held-out {what} against training throughput, {context(facet)}: one point per config, "
        + "; ".join(said)
        + "."
    )
    return notes, caption


def has_pareto(df: pd.DataFrame) -> bool:
    return any(c.rows for c in configs(df))


register(Kind(
    "pareto", with_setup(pareto), has_pareto,
    hint="pareto needs ok quality cells: run `hubbench run quality`",
    lacks="no ok quality cells",
    modes=frozenset({"quality"}),
    split=seq_facets,
))  # fmt: skip
