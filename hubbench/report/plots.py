"""The figures (KINDS): throughput, scaling, speedup, heatmap, memory and state of the timed
modes; pareto, curves, recall and convergence of the quality mode (quality_plots.py). PNG, SVG
and PDF, Agg only.

Every figure is built on a bare `matplotlib.figure.Figure` (no pyplot, no global state), one per
facet (see series.py), with the facet's device, dtype, mode and batch in its title. A cell that
failed or was skipped keeps its place: an x at the foot of the axes in its series' colour, its
status beside it, and a footnote naming it. Legends sit outside the axes so they never hide data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.measure.roofline import too_low_peaks
from hubbench.plan.fields import INFERENCE_MODES
from hubbench.report import style
from hubbench.report.figure import (
    Figured,
    all_seqs,
    col,
    context,
    failure_notes,
    failures,
    footnote,
    legend,
    line_axes,
    mark_crossovers,
    mark_failures,
    never_ran,
    new_figure,
    not_run_note,
    seq_axis,
    split_ran,
    title,
)
from hubbench.report.fits import MIN_POINTS, Crossover, Fit, crossover, fit_exponent
from hubbench.report.forest import Row, forest_figure
from hubbench.report.format import fmt_seq, peak_note
from hubbench.report.heatmap import heat_groups, heatmaps
from hubbench.report.load import norm_value, require_ok, run_label
from hubbench.report.quality_figures import has_curves, has_pareto
from hubbench.report.quality_plots import (
    convergence,
    curves,
    grid_facets,
    has_convergence,
    has_recall,
    pareto,
    recall,
    seq_facets,
    with_setup,
)
from hubbench.report.ratios import metric_ratio, paired, rounds_of
from hubbench.report.series import (
    Facet,
    Series,
    build_series,
    facets,
    speedup_pairs,
    title_parts,
)
from hubbench.report.ticks import log_axis
from hubbench.stats import RatioCI

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

KINDS = (
    "throughput", "scaling", "speedup", "heatmap", "memory", "state",
    "pareto", "curves", "recall", "convergence",
)  # fmt: skip
FORMATS = ("png", "svg", "pdf")  # every format `plot` writes; text stays text in svg and pdf
DEFAULT_FORMATS = ("png", "svg")
HINTS = {
    "throughput": "throughput needs ok cells with tokens/s: run `hubbench run throughput`",
    "scaling": "scaling needs one variant measured at two or more sequence lengths: "
    "run `hubbench run scaling`",
    "speedup": "speedup needs a hub variant and its baseline in one run (hub-gpt with "
    "transformer, hub-jamba with jamba): run `hubbench run throughput`",
    "heatmap": "heatmap needs several hubs x topk values: run `hubbench run hubs`",
    "memory": "memory needs peak_mem_bytes in the run: run `hubbench run throughput` "
    "(memory is recorded for every ok cell)",
    "state": "state needs prefill or decode cells (state_bytes): run `hubbench run decode`",
    "pareto": "pareto needs ok quality cells: run `hubbench run quality`",
    "curves": "curves needs quality cells with learning curves: run `hubbench run quality`",
    "recall": "recall needs ok MQAR quality cells at two or more (seq, kv_pairs) points: run "
    "`hubbench run quality` over a grid of seq and kv_pairs",
    "convergence": "convergence needs ok quality cells at two or more hubs values, one of them "
    "with two or more seeds: run `hubbench run quality` over hubs and seeds",
}


# what a run lacks for a kind, in a few words: `plot` names every kind it left out in one line
LACKS = {
    "throughput": "no tokens/s",
    "scaling": "one n per series",
    "speedup": "no hub beside its baseline",
    "heatmap": "no hubs × topk grid",
    "memory": "no peak memory",
    "state": "no state bytes",
    "pareto": "no ok quality cells",
    "curves": "no learning curves",
    "recall": "fewer than two (n, kv_pairs) points",
    "convergence": "no hubs values with two or more seeds",
}
QUALITY_KINDS = ("pareto", "curves", "recall", "convergence")


def worth_saying(skipped: dict[str, str], df: pd.DataFrame) -> dict[str, str]:
    """The kinds left out that the run's modes could have given, with why. Kinds of other modes
    go unsaid: a timed run has no learning curves, and a training run no decode state, by
    design."""
    modes = {str(m) for m in df["mode"]} if "mode" in df.columns else set()

    def could(kind: str) -> bool:
        if kind in QUALITY_KINDS:
            return "quality" in modes
        return kind != "state" or bool(modes & {"prefill", "decode"})

    return {k: why for k, why in skipped.items() if could(k)}


def not_drawn(skipped: dict[str, str], df: pd.DataFrame) -> str:
    """'heatmap (no hubs × topk grid)': worth_saying in one line, or ''."""
    return "; ".join(f"{k} ({LACKS.get(k, why)})" for k, why in worth_saying(skipped, df).items())


# ---- support checks: a kind is drawable when at least one facet has what it needs ----

QUALITY_CHECKS = {  # they take the facet's rows
    "pareto": has_pareto,
    "curves": has_curves,
    "recall": has_recall,
    "convergence": has_convergence,
}
# kinds whose facets are not the figure fields': recall sweeps kv_pairs on its x axis, so its
# facets leave it out; pareto and curves compare configs of one task, so theirs split by seq too
FACETS: dict[str, Callable[[pd.DataFrame], list[Facet]]] = {
    "recall": grid_facets,
    "pareto": seq_facets,
    "curves": seq_facets,
}


def _has_throughput(series: list[Series]) -> bool:
    return any(s.ok["tokens_per_s"].notna().any() for s in series)


def _has_scaling(series: list[Series]) -> bool:
    return any(s.ok["seq"].nunique() >= 2 for s in series)


def _has_speedup(series: list[Series]) -> bool:
    return any(
        set(h.ok["seq"]) & set(b.ok["seq"]) or len(h.failed) or len(b.failed)
        for h, b, _ in speedup_pairs(series)
        if not (never_ran(h) or never_ran(b))  # flash on CPU: nothing to divide by
    )


def _has_memory(series: list[Series]) -> bool:
    return any(s.ok["peak_mem_bytes"].notna().any() for s in series)


def _has_state(series: list[Series]) -> bool:
    return any("state_bytes" in s.ok and s.ok["state_bytes"].notna().any() for s in series)


def supported(kind: str, df: pd.DataFrame) -> str | None:
    """None if `kind` can be drawn from df, else the reason with the suite that would give it."""
    checks: dict[str, Callable[[list[Series]], bool]] = {
        "throughput": _has_throughput,
        "scaling": _has_scaling,
        "speedup": _has_speedup,
        "memory": _has_memory,
        "state": _has_state,
    }
    if kind == "heatmap":
        ok = any(heat_groups(f.df) for f in facets(df))
    elif kind in QUALITY_CHECKS:
        ok = any(QUALITY_CHECKS[kind](f.df) for f in FACETS.get(kind, facets)(df))
    else:
        ok = any(checks[kind](build_series(f.df)) for f in facets(df))
    return None if ok else f"{HINTS[kind]} (run {run_label(df)} lacks it)"


# ---- the kinds ----


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


def _line_figure(
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


THROUGHPUT = Measure(
    "Throughput", "tokens_per_s", "throughput (tokens/s)", style.si_formatter(),
    ("tokens_per_s_p10", "tokens_per_s_p90"), "p10–p90 of the per-step times",
    quantity="Median throughput (tokens/s)",
)  # fmt: skip


def throughput(facet: Facet) -> Figured:
    series = build_series(facet.df)
    found = crossovers(series)
    out = _line_figure(facet, THROUGHPUT, crossings=_crossing_marks(found))
    out.notes[:0] = [
        "Median tokens/s; error bars span p10–p90 of the per-step times.",
        *_crossover_notes(found, series),
    ]
    out.caption += _crossover_caption(found, series)
    return out


def series_fit(s: Series) -> Fit | None:
    """The series' scaling exponent with its bootstrap interval (rounds paired within a run)."""
    ok = s.ok[s.ok["time_median_s"].notna()]
    rows = [r for _, r in ok.iterrows()]
    together = bool(rows) and paired(rows)
    return fit_exponent(
        col(ok, "seq"), col(ok, "time_median_s"), [rounds_of(r) for r in rows], paired=together
    )


def fits_table(df: pd.DataFrame) -> list[tuple[str, str, Fit]]:
    """(figure title, series label, fit) for every series with two or more n, per facet."""
    out = []
    for facet in facets(df):
        main, _ = title_parts(facet)
        for s in build_series(facet.df):
            fit = series_fit(s)
            if fit is not None:
                out.append((main, s.label, fit))
    return out


def _timed_seqs(s: Series) -> list[int]:
    """The n at which the series has a step time: the points an exponent would be fitted to."""
    return sorted({int(n) for n in s.ok[s.ok["time_median_s"].notna()]["seq"]})


def scaling(facet: Facet) -> Figured:
    series = build_series(facet.df)
    fits = {s.label: series_fit(s) for s in series}
    # series with points but too few for a slope: named, never given an exponent
    short = [s for s in split_ran(series)[0] if fits[s.label] is None and _timed_seqs(s)]

    def suffix(s: Series) -> str:
        f = fits[s.label]
        if f is not None:
            ci = "" if f.low is None else f" [{f.low:.2f}, {f.high:.2f}]"
            return f"  ($\\propto n^{{{f.exponent:.2f}}}${ci})"
        mixed = len(short) < len(split_ran(series)[0])  # others have one: say why this has none
        unfitted = s.label in {x.label for x in short}
        return f"  ({_points(len(_timed_seqs(s)))}: no exponent)" if unfitted and mixed else ""

    decode = facet.fixed.get("mode") == "decode"
    measure = Measure(
        "Scaling",
        "time_median_s",
        "time per generated token (median)" if decode else "step time (median)",
        style.seconds_formatter(),
        ("time_p10_s", "time_p90_s"),
        "p10–p90 of the per-step times",
    )
    found = crossovers(series)
    out = _line_figure(facet, measure, suffix, _crossing_marks(found))
    ranges = {(f.n_lo, f.n_hi) for f in fits.values() if f is not None}
    span = (
        f"{fmt_seq(min(r[0] for r in ranges))}–{fmt_seq(max(r[1] for r in ranges))}"
        if ranges
        else "-"
    )
    what = "Median time per generated token" if decode else "Median step time"
    ran = split_ran(series)[0]
    unfitted = f" No exponent fitted{_too_few(short, ran)}." if short else ""
    exponents = (
        f" Exponents: least-squares slope of log t on log n over the upper half of each series' "
        f"points (n in {span}), with 95% bootstrap intervals (rounds resampled, then steps "
        "within them)."
        if ranges
        else ""
    )
    out.notes[:0] = [
        f"{what}; error bars p10–p90.{exponents}{unfitted}",
        *_crossover_notes(found, series),
    ]
    legend_says = ""
    if ranges:
        legend_says = ", and the legend gives each fitted exponent with its 95% bootstrap interval"
        if short:
            legend_says += f" (no exponent{_too_few(short, ran)})"
    elif short:
        legend_says = f"; no exponent is fitted{_too_few(short, ran)}"
    out.caption = (
        f"{what} against sequence length n (log-log), {context(facet)}; error bars span p10–p90 "
        f"of the per-step times{legend_says}." + _crossover_caption(found, series)
    )
    return out


def _too_few(short: list[Series], ran: list[Series]) -> str:
    """'for hub-gpt: 2 points (n = 256, 2k), a slope needs 3': which series have no exponent
    and why, the n they have (per series when they differ)."""
    seqs = {s.label: _timed_seqs(s) for s in short}

    def at(ns: list[int], each: str = "") -> str:
        return f"{_points(len(ns))}{each} (n = {', '.join(fmt_seq(n) for n in ns)})"

    if len({tuple(ns) for ns in seqs.values()}) == 1:
        ns = next(iter(seqs.values()))
        names = "" if len(short) == len(ran) else " for " + ", ".join(seqs)
        each = " per series" if len(short) > 1 else ""
        return f"{names}: {at(ns, each)}, a slope needs {MIN_POINTS}"
    listed = "; ".join(f"{label} {at(ns)}" for label, ns in seqs.items())
    return f": {listed}; a slope needs {MIN_POINTS}"


def _points(k: int) -> str:
    return f"{k} point{'s' if k != 1 else ''}"


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


def _crossing_marks(found: list[tuple[Series, Series, Crossover | None]]) -> list:
    return [
        (c.n, f"{hub.label} > {base.label}, {c.text()}", hub.style.color)
        for hub, base, c in found
        if c is not None and c.kind == "cross" and c.n is not None
    ]


def _crossover_notes(
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


def _crossover_caption(
    found: list[tuple[Series, Series, Crossover | None]], series: list[Series]
) -> str:
    crossed = [(h, b, c) for h, b, c in found if c is not None and c.n is not None]
    if not crossed or len(all_seqs(split_ran(series)[0])) < 2:
        return ""
    parts = [f"{h.label} overtakes {b.label} at {c.text()}" for h, b, c in crossed]
    return " Dashed lines: " + "; ".join(parts) + "."


def memory(facet: Facet) -> Figured:
    kind = str(facet.fixed.get("mem_kind") or "")
    what = {"cuda_allocated": "CUDA allocated", "cpu_rss": "CPU RSS"}.get(kind, kind)
    measure = Measure(
        "Peak memory",
        "peak_mem_bytes",
        f"peak memory ({what})" if what else "peak memory",
        style.bytes_formatter(),
        binary=True,
        quantity=f"Peak memory ({what})" if what else "Peak memory",
    )
    out = _line_figure(facet, measure)
    out.caption += " One value per cell (the peak over the timed steps), so no error bars."
    return out


def state(facet: Facet) -> Figured:
    measure = Measure(
        "Decode state",
        "state_bytes",
        "state or KV cache per sequence",
        style.bytes_formatter(),
        binary=True,
        quantity="Bytes of decode state or KV cache per sequence",
    )
    out = _line_figure(facet, measure)
    out.notes.insert(
        0,
        "Bytes each sequence carries into the next token after a prompt of n tokens: KV caches "
        "(attention), conv + SSM state (Mamba), hub statistics, member slots and the current "
        "chunk (HubRouter), summed over layers.",
    )
    out.caption += " What a sequence carries into the next token, summed over layers."
    return out


SPEEDUP_NOTE = (
    "Speedup = baseline step time / hub step time (= tokens/s ratio) against the hub's own "
    "baseline (hub-gpt: transformer, hub-jamba: jamba), same cell otherwise; native = naive "
    "attention, optimised = SDPA / flash. Error bars: 95% CI of the ratio of median step "
    "times, from a bootstrap over rounds paired within the run (rounds, then steps)."
)
IDEAL_NOTE = (
    " {what}: the ideal, the same ratio at both cells' speed of light (the step time their FLOPs "
    "and bytes allow at the measured peaks; docs/measurement.md)."
)
NO_IDEAL_NOTE = (
    " No ideal is drawn: no cell has a speed of light (the device's peak FLOP/s and bandwidth "
    "are unknown: `hubbench env --calibrate` measures them; docs/measurement.md)."
)


def _has_ideal(points: dict[tuple[str, str], list[tuple[int, RatioCI | None, str]]]) -> bool:
    """Whether any ratio has its ideal beside it: only then is one drawn, and captioned."""
    return any(ci is not None and ci.ideal is not None for p in points.values() for _, ci, _ in p)


def _ideal_said(
    pairs: list[tuple[Series, Series, str]],
    points: dict[tuple[str, str], list[tuple[int, RatioCI | None, str]]],
    what: str,
) -> str:
    """The notes' sentence on the ideal: what `what` (the dashed lines, the ', ideal' rows)
    shows, or that the run has no speed of light to draw one from."""
    if _has_ideal(points):
        return IDEAL_NOTE.format(what=what)
    rows = [s.ok for h, b, _ in pairs for s in (h, b) if "speed_of_light_s" in s.ok]
    return "" if any(r["speed_of_light_s"].notna().any() for r in rows) else NO_IDEAL_NOTE


def _speedup_points(hub: Series, base: Series) -> list[tuple[int, RatioCI | None, str]]:
    """(n, ratio CI or None, why not) at every n both sides have a row for."""
    out = []
    hub_at = {int(r["seq"]): r for _, r in hub.rows.iterrows()}
    for _, b in base.rows.iterrows():
        h = hub_at.get(int(b["seq"]))
        if h is None:
            continue
        if h["status"] != "ok" or b["status"] != "ok":
            why = f"hub {h['status']}" if h["status"] != "ok" else f"baseline {b['status']}"
            out.append((int(b["seq"]), None, why))
            continue
        # the one ratio of two cells (compare, the gate and the report's headline use it too)
        ci = metric_ratio(schema.metric("tokens_per_s"), h, b)
        if ci is not None and (too_low_peaks(h) or too_low_peaks(b)):
            ci = dataclasses.replace(ci, ideal=None)  # from a peak the cell beat: not drawn
        out.append((int(b["seq"]), ci, "" if ci is not None else "no tokens/s"))
    return sorted(out, key=lambda p: p[0])


STALE_LEAD = "No ideal is drawn where a cell ran faster than its speed of light"


def _ideal_notes(
    pairs: list[tuple[Series, Series, str]],
    points: dict[tuple[str, str], list[tuple[int, RatioCI | None, str]]],
) -> list[str]:
    """Why an ideal is missing, or below the measured ratio, where either happens."""
    notes = []
    series = {s.label: s for h, b, _ in pairs for s in (h, b)}
    over = [(s.label, r) for s in series.values() for _, r in s.ok.iterrows() if too_low_peaks(r)]
    if over:
        where = _listed([f"{label} n={fmt_seq(int(r['seq']))}" for label, r in over])
        lead = f"{STALE_LEAD} ({where})"
        notes.append(f"{peak_note([r for _, r in over], lead)}.")
    above = [f"{h.label} over {b.label} n={fmt_seq(n)}" for h, b, _ in pairs
             for n, ci, _ in points[(h.label, b.label)]
             if ci is not None and ci.ideal is not None and ci.point > ci.ideal]  # fmt: skip
    if above:
        notes.append(
            f"Measured above the ideal ({_listed(above)}): the hub reaches more of its speed of "
            "light than the baseline does of its own; the ideal is the ratio at both speeds of "
            "light, not a bound on the measured one."
        )
    return notes


def _stale_caption(notes: list[str]) -> str:
    if not any(n.startswith(STALE_LEAD) for n in notes):
        return ""
    return (
        " No ideal is drawn where a cell ran faster than its speed of light: the peak it divides "
        "by is too low (rerun `hubbench env --calibrate`)."
    )


def _listed(items: list[str], most: int = 4) -> str:
    return "; ".join(items[:most]) + ("; ..." if len(items) > most else "")


def speedup(facet: Facet) -> Figured:
    every = build_series(facet.df)
    never = split_ran(every)[1]
    pairs = [(h, b, k) for h, b, k in speedup_pairs(every) if not (never_ran(h) or never_ran(b))]
    points = {(h.label, b.label): _speedup_points(h, b) for h, b, _ in pairs}
    seqs = sorted({n for pts in points.values() for n, _, _ in pts})
    if len(seqs) == 1:
        return _speedup_forest(facet, pairs, points, never, seqs[0])
    fig = new_figure()
    ax = line_axes(fig)
    marks, gaps, values = [], [], [1.0]
    ideals: dict[tuple[str, tuple], Any] = {}
    for i, (hub, base, kind) in enumerate(pairs):
        pts = points[(hub.label, base.label)]
        done = [(n, ci) for n, ci, _ in pts if ci is not None]
        dodge = 2 ** (0.035 * (i - (len(pairs) - 1) / 2))  # error bars side by side, not on top
        xs = [n * dodge for n, _ in done]
        ys = [ci.point for _, ci in done]
        values += [v for _, ci in done for v in (ci.low, ci.high)]
        ax.errorbar(xs, ys, yerr=[[ci.point - ci.low for _, ci in done],
                                  [ci.high - ci.point for _, ci in done]],
                    color=base.style.color, marker=hub.style.marker,
                    linestyle=":" if kind == "native" else "-", elinewidth=0.9,
                    label=f"{hub.label} over {base.label} ({kind})")  # fmt: skip
        ideal = tuple((n, round(ci.ideal, 9)) for n, ci in done if ci.ideal is not None)
        if ideal:  # the ratio at both cells' speed of light (none where a cell beat it)
            drawn = ideals.get((hub.label, ideal))
            if drawn is not None:  # naive and SDPA share their FLOPs: one ceiling, one line
                drawn.set_label(f"{hub.label} over {base.label.split(' · ')[0]}, ideal "
                                "(native and optimised)")  # fmt: skip
            else:
                ideals[(hub.label, ideal)] = ax.plot(
                    [n for n, _ in ideal], [v for _, v in ideal], color=base.style.color,
                    linestyle="--", linewidth=1.0, alpha=0.7,
                    label=f"{hub.label} over {base.label} ({kind}), ideal")[0]  # fmt: skip
            values += [v for _, v in ideal]
        for n, _, why in pts:
            if why:
                marks.append((n, why.split()[-1], base.style.color))
                gaps.append(f"{hub.label} over {base.label} n={fmt_seq(n)}: {why}")
    ax.axhline(1.0, color="#777777", linewidth=1.0, zorder=1, label="parity (1×)")
    log_axis(ax, values, style.speedup_formatter())
    ax.set_ylabel("speedup over baseline")
    seq_axis(ax, seqs)
    mark_failures(ax, marks)
    title(fig, "Speedup over attention baselines", facet)
    legend(ax)
    notes = [SPEEDUP_NOTE, *_ideal_notes(pairs, points)]
    notes[0] += _ideal_said(pairs, points, "Dashed")
    if gaps:
        notes.append("Undefined (x at the foot of the axes; a side did not run): "
                     + "; ".join(gaps) + ".")  # fmt: skip
    notes += not_run_note(never)
    dashed = ", dashed lines the ideal ratio at both cells' speed of light," if ideals else ""
    caption = (
        "Speedup of each hub variant over its own baseline (the baseline's step time over the "
        f"hub's) against sequence length n, {context(facet)}; error bars are 95% bootstrap "
        f"intervals of the ratio{dashed} and the grey line is parity."
    )
    return Figured(fig, "", notes, caption + _stale_caption(notes))


def _speedup_forest(
    facet: Facet,
    pairs: list[tuple[Series, Series, str]],
    points: dict[tuple[str, str], list[tuple[int, RatioCI | None, str]]],
    never: list[Series],
    seq: int,
) -> Figured:
    rows, gaps = [], []
    for hub, base, _ in pairs:
        for n, ci, why in points[(hub.label, base.label)]:
            label = f"{hub.label} over {base.label}"
            pick = style.SeriesStyle(base.style.color, hub.style.marker, "-")
            if ci is None:
                rows.append(Row(label, pick, status=why))
                gaps.append(f"{label} n={fmt_seq(n)}: {why}")
            else:
                low, high = (ci.low, ci.high) if ci.bootstrapped else (None, None)
                rows.append(Row(label, pick, ci.point, low, high))
                if ci.ideal is not None:  # the ceiling beside it: no interval, a point
                    dashed = style.SeriesStyle(base.style.color, hub.style.marker, "--")
                    rows.append(Row(f"{label}, ideal", dashed, ci.ideal))
    fig, _ = forest_figure(rows, "speedup over baseline", style.speedup_formatter(),
                           parity=1.0, column_title="ratio",
                           text=lambda v: f"{v:.2f}×")  # fmt: skip
    title(fig, f"Speedup over attention baselines at n = {fmt_seq(seq)}", facet)
    notes = [SPEEDUP_NOTE, *_ideal_notes(pairs, points)]
    notes[0] += _ideal_said(pairs, points, "', ideal' rows")
    if gaps:
        notes.append("Undefined (a side did not run): " + "; ".join(gaps) + ".")
    notes += not_run_note(never)
    rows_say = " (', ideal' rows: the ratio at both cells' speed of light)" if _has_ideal(
        points) else ""  # fmt: skip
    caption = (
        f"Speedup of each hub variant over its own baseline at n = {fmt_seq(seq)} (the "
        f"baseline's step time over the hub's), {context(facet)}; whiskers are 95% bootstrap "
        f"intervals of the ratio{rows_say}, the grey line is parity."
    )
    return Figured(fig, "", notes, caption + _stale_caption(notes))


# ---- entry point ----

DRAW: dict[str, Callable[[Facet], Figured | list[Figured]]] = {
    "throughput": throughput,
    "scaling": scaling,
    "speedup": speedup,
    "heatmap": heatmaps,
    "memory": memory,
    "state": state,
    "pareto": with_setup(pareto),
    "curves": with_setup(curves),
    "recall": recall,
    "convergence": convergence,
}


DPI = 200


@dataclass
class Rendered:
    kind: str
    stem: str  # file name without extension: kind[-variant][-facet]
    figure: Figure
    caption: str = ""  # one or two sentences saying what the figure shows, for the report


@dataclass
class PlotOutcome:
    written: list[Path]
    skipped: dict[str, str]  # kind -> why it was not drawn


def render(
    df: pd.DataFrame, kinds: Sequence[str] | None = None
) -> tuple[list[Rendered], dict[str, str]]:
    """Figures for `kinds` (default: every kind the data supports), one per facet.

    An explicitly requested kind that the data cannot support is a ReportError naming the suite
    that would produce it; by default such kinds are skipped and returned with the reason.
    """
    import matplotlib

    for k in kinds or ():
        if k not in KINDS:
            raise ReportError(f"unknown plot kind {k!r}; valid: {', '.join(KINDS)}")
    require_ok(df, run_label(df))
    skipped: dict[str, str] = {}
    out: list[Rendered] = []
    with matplotlib.rc_context(style.RC):
        for kind in kinds or KINDS:
            reason = supported(kind, df)
            if reason is not None:
                if kinds:
                    raise ReportError(reason)
                skipped[kind] = reason
                continue
            out += _render_kind(kind, df)
    return out, skipped


def _render_kind(kind: str, df: pd.DataFrame) -> list[Rendered]:
    extra = ("mem_kind",) if kind == "memory" else ()
    out = []
    split = FACETS.get(kind, lambda d: facets(d, extra))
    for facet in split(df):
        if supported(kind, facet.df) is not None:
            continue  # another facet of this run has the data; this one does not
        result = DRAW[kind](facet)
        for fig in result if isinstance(result, list) else [result]:
            footnote(fig.fig, fig.fig.axes[0], fig.notes)
            stem = "-".join(p for p in (kind, fig.stem, facet.slug) if p)
            out.append(Rendered(kind, stem, fig.fig, fig.caption))
    return out


# no creation date in the files: the same run gives the same bytes
_METADATA: dict[str, dict[str, None]] = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save(figure: Figure, target: Any, fmt_name: str) -> None:
    """target: a path or a binary file object."""
    import matplotlib

    with matplotlib.rc_context(style.RC):  # fonttype is read when the file is written
        figure.savefig(target, format=fmt_name, dpi=DPI, bbox_inches="tight", pad_inches=0.12,
                       metadata=_METADATA.get(fmt_name))  # fmt: skip


def plot_run(
    df: pd.DataFrame,
    out_dir: Path,
    kinds: Sequence[str] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> PlotOutcome:
    """Render and write every figure as out_dir/<stem>.<format>."""
    for f in formats:
        if f not in FORMATS:
            raise ReportError(f"unknown image format {f!r}; valid: {', '.join(FORMATS)}")
    figures, skipped = render(df, kinds)
    from hubbench.outputs import check_folder

    check_folder(out_dir, "--out")
    written = []
    for r in figures:
        for ext in formats:
            path = out_dir / f"{r.stem}.{ext}"
            save(r.figure, path, ext)
            written.append(path)
    return PlotOutcome(written, skipped)
