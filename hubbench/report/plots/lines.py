"""What the line figures share (throughput, scaling, memory, state): one line per series
against n, with its p10-p90 band, or a forest of one row per series when a facet holds a single
n; and the crossovers of each hub with its baseline, marked as dashed lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hubbench.plan.fields import INFERENCE_MODES
from hubbench.report.fits import Crossover, crossover
from hubbench.report.format import fmt_seq
from hubbench.report.load import norm_value
from hubbench.report.plots.figure import (
    Figured,
    all_seqs,
    col,
    context,
    failure_notes,
    failures,
    legend,
    line_axes,
    mark_crossovers,
    mark_failures,
    never_ran,
    new_figure,
    seq_axis,
    split_ran,
    title,
)
from hubbench.report.plots.forest import Row, forest_figure
from hubbench.report.plots.ticks import log_axis
from hubbench.report.series import Facet, Series, build_series, speedup_pairs


@dataclass
class Measure:
    """What a line or forest figure draws: one column of the rows, with its units and band."""

    what: str  # title, e.g. "Throughput"
    column: str
    label: str  # value-axis label
    formatter: Any
    band: tuple[str, str] | None = None  # columns of the interval ends (p10, p90)
    band_text: str = ""  # what the band is, for the caption ("p10–p90 of the per-step times")
    binary: bool = False  # bytes: powers-of-two ticks
    quantity: str = ""  # the values in a caption's words (default: what), never the axis label


def line_figure(
    facet: Facet,
    m: Measure,
    label_suffix: Callable[[Series], str] | None = None,
    crossings: Sequence[tuple[float, str, str]] = (),
) -> Figured:
    """Shared body of throughput / scaling / memory / state: one line per series against n, or
    one row per series when the facet holds a single n."""
    import numpy as np

    every = build_series(facet.df)
    series, _ = split_ran(every)  # a series that never ran is only named in the notes
    seqs = all_seqs(series)
    if len(seqs) == 1:
        return _forest(facet, m, series, every, seqs[0])
    fig = new_figure()
    ax = line_axes(fig)
    marks, values = [], []
    for s in series:
        ok = s.ok[s.ok[m.column].notna()]
        label = s.label + (label_suffix(s) if label_suffix else "")
        if len(ok):
            x, y = col(ok, "seq"), col(ok, m.column)
            yerr = None
            values += list(y)
            if m.band is not None:
                lo_v, hi_v = col(ok, m.band[0]), col(ok, m.band[1])
                yerr = np.vstack([np.nan_to_num(y - lo_v), np.nan_to_num(hi_v - y)]).clip(0)
                values += list(y - yerr[0]) + list(y + yerr[1])
            ax.errorbar(x, y, yerr=yerr, label=label, elinewidth=0.9, **s.style.kwargs())
        else:
            ax.plot([], [], label=label + " (no ok cells)", **s.style.kwargs())
        marks += [(seq, status, s.style.color) for seq, status, _ in failures(s)]
    log_axis(ax, values, m.formatter, binary=m.binary)
    ax.set_ylabel(m.label)
    seq_axis(ax, seqs)
    if facet.fixed.get("mode") in INFERENCE_MODES:  # n is the prompt decoding follows
        ax.set_xlabel("prompt length n (tokens)")
    mark_crossovers(ax, list(crossings))
    mark_failures(ax, marks)
    title(fig, m.what, facet)
    legend(ax)
    bars = f"; error bars span {m.band_text}" if m.band_text else ""
    caption = f"{m.quantity or m.what} against sequence length n, {context(facet)}{bars}."
    return Figured(fig, "", failure_notes(every), caption)


def _forest(
    facet: Facet, m: Measure, series: list[Series], every: list[Series], seq: int
) -> Figured:
    rows = []
    for s in series:
        r = s.rows.iloc[0]
        value = norm_value(r[m.column]) if r["status"] == "ok" else None
        if value is None:
            why = "not recorded" if r["status"] == "ok" else str(r["status"])
            rows.append(Row(s.label, s.style, status=why))
            continue
        low = high = None
        if m.band is not None:
            low, high = norm_value(r[m.band[0]]), norm_value(r[m.band[1]])
        rows.append(Row(s.label, s.style, float(value), low, high))
    column = "median" if m.band is not None else ""
    fig, _ = forest_figure(rows, m.label, m.formatter, binary=m.binary, column_title=column)
    title(fig, f"{m.what} at n = {fmt_seq(seq)}", facet)
    bars = f"; whiskers span {m.band_text}" if m.band_text else ""
    caption = (
        f"{m.quantity or m.what} of each series at n = {fmt_seq(seq)}, {context(facet)}{bars}."
    )
    return Figured(fig, "", failure_notes(every, "x at the left edge"), caption)


def crossovers(series: list[Series]) -> list[tuple[Series, Series, Crossover | None]]:
    """(hub, its baseline, where the hub's step time drops below it) for each speedup pair."""
    out = []
    for hub, base, _ in speedup_pairs(series):
        if never_ran(hub) or never_ran(base):
            continue
        both = hub.ok.merge(base.ok, on="seq", suffixes=("_h", "_b"))
        c = crossover(col(both, "seq"), col(both, "time_median_s_h"), col(both, "time_median_s_b"))
        out.append((hub, base, c))
    return out


def crossing_marks(found: list[tuple[Series, Series, Crossover | None]]) -> list:
    return [
        (c.n, f"{hub.label} > {base.label}, {c.text()}", hub.style.color)
        for hub, base, c in found
        if c is not None and c.kind == "cross" and c.n is not None
    ]


def crossover_notes(
    found: list[tuple[Series, Series, Crossover | None]], series: list[Series]
) -> list[str]:
    if len(all_seqs(split_ran(series)[0])) < 2:
        return []
    marked = any(c is not None and c.n is not None for _, _, c in found)  # a line is drawn
    notes = []
    for hub in dict.fromkeys(h.label for h, _, _ in found):
        parts = [
            f"vs {b.label}: {'fewer than two common n' if c is None else c.text()}"
            for h, b, c in found
            if h.label == hub
        ]
        crossed = any(c is not None and c.n is not None for h, _, c in found if h.label == hub)
        where = " (dashed lines)" if crossed and marked else ""
        marked = marked and not crossed  # said once, on the first hub that crosses
        notes.append(f"Crossover{where}, {hub} faster from: " + "; ".join(parts) + ".")
    return notes


def crossover_caption(
    found: list[tuple[Series, Series, Crossover | None]], series: list[Series]
) -> str:
    crossed = [(h, b, c) for h, b, c in found if c is not None and c.n is not None]
    if not crossed or len(all_seqs(split_ran(series)[0])) < 2:
        return ""
    parts = [f"{h.label} overtakes {b.label} at {c.text()}" for h, b, c in crossed]
    return " Dashed lines: " + "; ".join(parts) + "."
