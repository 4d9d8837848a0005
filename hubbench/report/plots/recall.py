"""recall: held-out MQAR accuracy of each config over the (n, key-value pairs) grid of the run.

`kv_pairs` is a figure field (a facet holds one), so `recall` draws from `grid_facets`: the facets
of the run with kv_pairs left out of what splits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubbench.report.format import fmt_seq
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
    Pooled,
    floor_name,
    gap_note,
    hows,
    leak_note,
    lines,
    percent,
    pool,
    quality_rows,
    setup,
    unmeasured,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.series import Facet, facets

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

GRID_FIELD = "kv_pairs"  # a figure field that `recall` puts on its x axis instead


def grid_facets(df: pd.DataFrame) -> list[Facet]:
    """The run's facets with kv_pairs left out of what splits them (recall sweeps it)."""
    if GRID_FIELD not in df.columns:
        return facets(df)
    df = df.reset_index(drop=True)
    masked = df.assign(**{GRID_FIELD: None})
    return [
        Facet({**f.fixed, GRID_FIELD: None}, f.split, df.loc[f.df.index]) for f in facets(masked)
    ]


def grid_points(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return sorted({(int(r["seq"]), int(r[GRID_FIELD])) for r in rows
                   if r.get("seq") is not None and r.get(GRID_FIELD) is not None})  # fmt: skip


def _mqar(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [r for r in quality_rows(df) if r.get("task") == "mqar"]


def has_recall(df: pd.DataFrame) -> bool:
    ok = [r for r in _mqar(df) if r.get("status") == "ok" and r.get("eval_accuracy") is not None]
    return len(grid_points(ok)) >= 2


def recall(facet: Facet) -> Figured:
    rows = _mqar(facet.df)
    points = grid_points(rows)
    at = {p: i for i, p in enumerate(points)}
    fig = new_figure()
    ax = line_axes(fig)
    found = lines(rows, ("seq", GRID_FIELD))
    marks, gaps, pooled = [], [], []
    for i, line in enumerate(found):
        dodge = 0.06 * (i - (len(found) - 1) / 2)  # error bars side by side, not on top
        more_marks, more_gaps, more_pooled = _line(ax, line, [(p, at[p] + dodge) for p in points])
        marks += more_marks
        gaps += more_gaps
        pooled += more_pooled
    chance = _chance(ax, rows, at)
    ax.set_xticks(range(len(points)), [_tick(p) for p in points])
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.set_ylim(0, 1.04)
    ax.yaxis.set_major_formatter(percent())
    ax.grid(False, axis="x")
    ax.set_xlabel("sequence length n / key-value pairs")
    ax.set_ylabel("held-out MQAR accuracy")
    mark_failures(ax, marks, log_y=False)
    title(fig, "MQAR recall over the task grid", facet)
    legend(ax)
    how = hows(pooled)
    trained = setup(facet)
    notes = [
        f"Mean held-out accuracy over seeds; error bars: {how}, cut at 0 and 100%."
        + (f" Dashed: {_floor_words(rows)}." if chance else "")
        + (f" Trained: {trained}." if trained else ""),
        *gap_note(gaps),
        *leak_note(found, "accuracy"),
    ]
    caption = (
        "Held-out MQAR accuracy of each config at every (sequence length n, key-value pairs) "
        f"point of the run, the mean over its seeds with {how} as error bars"
        + (f"; the dashed line is {floor_name(rows)}." if chance else ".")
    )
    return Figured(fig, "", notes, caption)


def _line(
    ax: Axes, line: Line, at: list[tuple[tuple[int, int], float]]
) -> tuple[list[tuple[float, str, str]], list[str], list[Pooled]]:
    """Draw one config's mean accuracy over its seeds at each grid point (at: the point and
    where it goes on the x axis); the marks and notes of its cells that gave no accuracy, and
    the pooled values drawn."""
    marks, gaps, pooled, xs, ys, lo, hi = [], [], [], [], [], [], []
    for p, x in at:
        here = [r for r in line.rows if (r["seq"], r[GRID_FIELD]) == p]
        got = pool(r.get("eval_accuracy") for r in here if r.get("status") == "ok")
        more_marks, more_gaps = unmeasured(line, here, x, _tick(p))
        marks += more_marks
        gaps += more_gaps
        if got is None:
            continue
        pooled.append(got)
        xs.append(x)
        ys.append(got.mean)
        lo.append(got.mean - max(got.low, 0.0))  # an accuracy stays within 0-100%
        hi.append(min(got.high, 1.0) - got.mean)
    if xs:
        ax.errorbar(xs, ys, yerr=[lo, hi], label=line.name, elinewidth=0.9, capsize=2.5,
                    markerfacecolor="white" if line.leaks else line.style.color,
                    **line.style.kwargs())  # fmt: skip
    else:
        ax.plot([], [], label=line.name + " (no ok cells)", **line.style.kwargs())
    return marks, gaps, pooled


def _tick(point: tuple[int, int]) -> str:
    return f"{fmt_seq(point[0])}/{point[1]}"


def _chance(ax: Axes, rows: list[dict[str, Any]], at: dict[tuple[int, int], int]) -> bool:
    """The dashed chance line, where the rows record it; whether one was drawn."""
    base = {}
    for r in rows:
        p = (r.get("seq"), r.get(GRID_FIELD))
        if p in at and r.get("baseline_quality") is not None:
            base.setdefault(at[p], float(r["baseline_quality"]))
    if base:
        xs = sorted(base)
        ax.plot(xs, [base[x] for x in xs], color="#999999", linestyle="--", linewidth=1,
                marker="none", zorder=1, label=floor_name(rows))  # fmt: skip
    return bool(base)


def _floor_words(rows: list[dict[str, Any]]) -> str:
    name = floor_name(rows)
    if name == "chance":
        return "chance (1 / the number of values)"
    return f"the {name} (the best guesser that binds no key to its value)"


register(Kind(
    "recall", recall, has_recall,
    hint="recall needs ok MQAR quality cells at two or more (seq, kv_pairs) points: run "
    "`hubbench run quality` over a grid of seq and kv_pairs",
    lacks="fewer than two (n, kv_pairs) points",
    modes=frozenset({"quality"}),
    split=grid_facets,
))  # fmt: skip
