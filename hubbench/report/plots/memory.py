"""memory and state: bytes per cell against n, the peak over the timed steps (memory, one figure
per kind of memory measured) and the decode state a sequence carries into its next token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubbench.report import style
from hubbench.report.plots.figure import Figured
from hubbench.report.plots.lines import Measure, line_figure
from hubbench.report.plots.registry import Kind, register
from hubbench.report.series import Facet, build_series, facets

if TYPE_CHECKING:
    import pandas as pd


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
    out = line_figure(facet, measure)
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
    out = line_figure(facet, measure)
    out.notes.insert(
        0,
        "Bytes each sequence carries into the next token after a prompt of n tokens: KV caches "
        "(attention), conv + SSM state (Mamba), hub statistics, member slots and the current "
        "chunk (HubRouter), summed over layers.",
    )
    out.caption += " What a sequence carries into the next token, summed over layers."
    return out


def has_memory(df: pd.DataFrame) -> bool:
    return any(s.ok["peak_mem_bytes"].notna().any() for s in build_series(df))


def has_state(df: pd.DataFrame) -> bool:
    return any("state_bytes" in s.ok and s.ok["state_bytes"].notna().any()
               for s in build_series(df))  # fmt: skip


def by_memory_kind(df: pd.DataFrame) -> list[Facet]:
    """The run's facets, split by mem_kind too: CUDA allocated and CPU RSS are not one axis."""
    return facets(df, ("mem_kind",))


register(Kind(
    "memory", memory, has_memory,
    hint="memory needs peak_mem_bytes in the run: run `hubbench run throughput` "
    "(memory is recorded for every ok cell)",
    lacks="no peak memory",
    split=by_memory_kind,
))  # fmt: skip
register(Kind(
    "state", state, has_state,
    hint="state needs prefill or decode cells (state_bytes): run `hubbench run decode`",
    lacks="no state bytes",
    modes=frozenset({"prefill", "decode"}),
))  # fmt: skip
