"""throughput: median tokens/s of every series against n, with the crossovers of each hub and
its baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubbench.report import style
from hubbench.report.plots.figure import Figured
from hubbench.report.plots.lines import (
    Measure,
    crossing_marks,
    crossover_caption,
    crossover_notes,
    crossovers,
    line_figure,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.series import Facet, build_series

if TYPE_CHECKING:
    import pandas as pd


def throughput(facet: Facet) -> Figured:
    measure = Measure(
        "Throughput", "tokens_per_s", "throughput (tokens/s)", style.si_formatter(),
        ("tokens_per_s_p10", "tokens_per_s_p90"), "p10–p90 of the per-step times",
        quantity="Median throughput (tokens/s)",
    )  # fmt: skip
    series = build_series(facet.df)
    found = crossovers(series)
    out = line_figure(facet, measure, crossings=crossing_marks(found))
    out.notes[:0] = [
        "Median tokens/s; error bars span p10–p90 of the per-step times.",
        *crossover_notes(found, series),
    ]
    out.caption += crossover_caption(found, series)
    return out


def has_throughput(df: pd.DataFrame) -> bool:
    return any(s.ok["tokens_per_s"].notna().any() for s in build_series(df))


register(Kind(
    "throughput", throughput, has_throughput,
    hint="throughput needs ok cells with tokens/s: run `hubbench run throughput`",
    lacks="no tokens/s",
))  # fmt: skip
