"""scaling: median step time against n (log-log), each series with its fitted exponent and
95% bootstrap interval (hubbench.report.fits); `fits_table` lists the exponents for `plot` and
the HTML report."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hubbench.report import style
from hubbench.report.fits import MIN_POINTS, Fit, fit_exponent
from hubbench.report.format import fmt_seq
from hubbench.report.plots.figure import Figured, col, context, split_ran
from hubbench.report.plots.lines import (
    Measure,
    crossing_marks,
    crossover_caption,
    crossover_notes,
    crossovers,
    line_figure,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.ratios import paired, rounds_of
from hubbench.report.series import Facet, Series, build_series, facets, title_parts

if TYPE_CHECKING:
    import pandas as pd


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
    out = line_figure(facet, measure, _suffix(series, fits, short), crossing_marks(found))
    what = "Median time per generated token" if decode else "Median step time"
    said, legend_says = _exponent_words(fits, short, split_ran(series)[0])
    out.notes[:0] = [f"{what}; error bars p10–p90.{said}", *crossover_notes(found, series)]
    out.caption = (
        f"{what} against sequence length n (log-log), {context(facet)}; error bars span p10–p90 "
        f"of the per-step times{legend_says}." + crossover_caption(found, series)
    )
    return out


def _suffix(
    series: list[Series], fits: dict[str, Fit | None], short: list[Series]
) -> Callable[[Series], str]:
    """A series' legend label ends with its exponent and interval, or, where other series have
    one, with why it has none."""

    def suffix(s: Series) -> str:
        f = fits[s.label]
        if f is not None:
            ci = "" if f.low is None else f" [{f.low:.2f}, {f.high:.2f}]"
            return f"  ($\\propto n^{{{f.exponent:.2f}}}${ci})"
        mixed = len(short) < len(split_ran(series)[0])  # others have one: say why this has none
        unfitted = s.label in {x.label for x in short}
        return f"  ({_points(len(_timed_seqs(s)))}: no exponent)" if unfitted and mixed else ""

    return suffix


def _exponent_words(
    fits: dict[str, Fit | None], short: list[Series], ran: list[Series]
) -> tuple[str, str]:
    """What the notes say of the exponents (how they were fitted, which series have none), and
    what the caption says the legend gives."""
    ranges = {(f.n_lo, f.n_hi) for f in fits.values() if f is not None}
    span = (
        f"{fmt_seq(min(r[0] for r in ranges))}–{fmt_seq(max(r[1] for r in ranges))}"
        if ranges
        else "-"
    )
    unfitted = f" No exponent fitted{_too_few(short, ran)}." if short else ""
    exponents = (
        f" Exponents: least-squares slope of log t on log n over the upper half of each series' "
        f"points (n in {span}), with 95% bootstrap intervals (rounds resampled, then steps "
        "within them)."
        if ranges
        else ""
    )
    legend_says = ""
    if ranges:
        legend_says = ", and the legend gives each fitted exponent with its 95% bootstrap interval"
        if short:
            legend_says += f" (no exponent{_too_few(short, ran)})"
    elif short:
        legend_says = f"; no exponent is fitted{_too_few(short, ran)}"
    return exponents + unfitted, legend_says


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


def has_scaling(df: pd.DataFrame) -> bool:
    return any(s.ok["seq"].nunique() >= 2 for s in build_series(df))


register(Kind(
    "scaling", scaling, has_scaling,
    hint="scaling needs one variant measured at two or more sequence lengths: "
    "run `hubbench run scaling`",
    lacks="one n per series",
))  # fmt: skip
