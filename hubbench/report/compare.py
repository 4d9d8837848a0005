"""Run B over run A, cell by cell, with bootstrap CIs; rendered as a Rich table or Markdown.

Cells join on their cell fields (load.cell_keys), never on run_id / cell_index, so two runs of a
suite whose sweep was reordered still line up. A change counts as real only when its CI excludes
1; memory has no per-step samples and is deterministic enough that a fixed tolerance stands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.report import format as fmt
from hubbench.report.load import join_fields, labeller, norm_value, run_label
from hubbench.report.stats import CONFIDENCE, RESAMPLES, SEED, RatioCI, ratio_ci

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

DEFAULT_METRICS = ("tokens_per_s", "peak_mem_bytes")
POINT_TOLERANCE = 0.02  # memory within 2% is "unchanged": allocator rounding, not a regression


@dataclass
class CellComparison:
    label: str
    status_a: str | None  # None: the cell is not in that run
    status_b: str | None
    values: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ratios: dict[str, RatioCI] = field(default_factory=dict)


@dataclass
class Comparison:
    run_a: str
    run_b: str
    metrics: list[schema.Column]
    cells: list[CellComparison]
    confidence: float
    resamples: int


def change(metric: schema.Column, ci: RatioCI) -> int:
    """+1 better, -1 worse, 0 within noise (or not decidable)."""
    if ci.bootstrapped:
        moved = ci.excludes(1.0)
    elif metric.time_power == 0:
        moved = 0 if abs(ci.point - 1.0) <= POINT_TOLERANCE else (1 if ci.point > 1 else -1)
    else:
        moved = 0  # a time metric with too few samples: no basis for a call
    return moved if metric.higher_is_better else -moved


def _value(row: Any, col: str) -> float | None:
    v = norm_value(row[col]) if col in row.index else None
    return None if v is None else float(v)


def metric_ratio(
    metric: schema.Column, num: Any, den: Any, *, resamples: int, confidence: float, seed: int
) -> RatioCI | None:
    """CI of num[metric] / den[metric] for two ok rows; None when either value is missing."""
    a, b = _value(num, metric.name), _value(den, metric.name)
    if a is None or b is None or b == 0:
        return None
    return ratio_ci(
        a, b, num["samples_s"], den["samples_s"], metric.time_power,
        resamples=resamples, confidence=confidence, seed=seed,
    )  # fmt: skip


def index_by_cell(df: pd.DataFrame, fields: list[str]) -> dict[str, Any]:
    from hubbench.report.load import cell_keys

    keys = cell_keys(df, fields)
    out: dict[str, Any] = {}
    for key, (_, row) in zip(keys, df.iterrows(), strict=True):
        out.setdefault(key, row)  # a cell listed twice in one run: the first measurement counts
    return out


def explain_no_overlap(a: pd.DataFrame, b: pd.DataFrame, fields: list[str]) -> str:
    """Which cell fields keep two runs apart, e.g. 'dtype: A has bf16, B has fp32'."""
    parts = []
    for f in fields:
        va = {str(norm_value(v)) for v in a[f]}
        vb = {str(norm_value(v)) for v in b[f]}
        if not va & vb:
            parts.append(f"{f}: A has {', '.join(sorted(va))}, B has {', '.join(sorted(vb))}")
    return "; ".join(parts) if parts else "no single field differs; the combinations do"


@dataclass
class Joined:
    """Two runs matched cell by cell (on their cell fields, never on run id or position)."""

    fields: list[str]
    a: dict[str, Any]  # cell key -> row, in A's order
    b: dict[str, Any]


def join_runs(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> Joined:
    """The cells of A and B by key; ReportError naming what keeps them apart when none match."""
    fields = [f for f in join_fields(a) if f in b.columns]
    joined = Joined(fields, index_by_cell(a, fields), index_by_cell(b, fields))
    if not any(k in joined.b for k in joined.a):
        raise ReportError(
            f"no matching cells between {name_a} ({run_label(a)}) and {name_b} "
            f"({run_label(b)}): " + explain_no_overlap(a, b, fields)
        )
    return joined


def compare_runs(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Comparison:
    import pandas as pd

    ms = [schema.metric(m) for m in metrics]
    joined = join_runs(a, b, "A", "B")
    rows_a, rows_b = joined.a, joined.b
    label = labeller(pd.concat([a, b], ignore_index=True), joined.fields)
    cells = []
    for key in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        ra, rb = rows_a.get(key), rows_b.get(key)
        any_row = ra if ra is not None else rb
        c = CellComparison(
            label=label(any_row),
            status_a=None if ra is None else str(ra["status"]),
            status_b=None if rb is None else str(rb["status"]),
        )
        for m in ms:
            c.values[m.name] = (
                None if ra is None else _value(ra, m.name),
                None if rb is None else _value(rb, m.name),
            )
            if c.status_a == "ok" and c.status_b == "ok":
                ci = metric_ratio(m, rb, ra, resamples=resamples, confidence=confidence, seed=seed)
                if ci is not None:
                    c.ratios[m.name] = ci
        cells.append(c)
    return Comparison(run_label(a), run_label(b), ms, cells, confidence, resamples)


def _status_note(c: CellComparison) -> str:
    if c.status_a == c.status_b == "ok":
        return ""
    a = c.status_a or "absent"
    b = c.status_b or "absent"
    return f"{a} → {b}"


def to_rich(cmp: Comparison) -> Table:
    from rich.table import Table
    from rich.text import Text

    conf = f"{100 * cmp.confidence:g}%"
    table = Table(
        title=f"B / A by cell   A = {cmp.run_a}   B = {cmp.run_b}",
        caption=f"\\[brackets]: {conf} bootstrap CI ({cmp.resamples} resamples of per-step times, "
        "ratio of medians); green/red: CI excludes 1",
    )
    table.add_column("cell", style="bold")
    for i, m in enumerate(cmp.metrics):
        if i == 0:  # values for the main metric only; ratios for the rest keep the table narrow
            table.add_column(f"A {m.label}", justify="right")
            table.add_column(f"B {m.label}", justify="right")
        table.add_column(f"B/A {m.label}", justify="right")
    table.add_column("status")
    for c in cmp.cells:
        cells: list[Any] = [Text(c.label)]
        for i, m in enumerate(cmp.metrics):
            va, vb = c.values[m.name]
            if i == 0:
                cells += [fmt.metric_value(m, va), fmt.metric_value(m, vb)]
            ci = c.ratios.get(m.name)
            style = {1: "bold green", -1: "bold red"}.get(change(m, ci), "") if ci else ""
            cells.append(Text(fmt.ratio(ci), style=style))
        cells.append(_status_note(c))
        table.add_row(*cells)
    return table


def to_markdown(cmp: Comparison) -> str:
    conf = f"{100 * cmp.confidence:g}%"
    head = ["cell"]
    for i, m in enumerate(cmp.metrics):
        head += [f"A {m.label}", f"B {m.label}"] if i == 0 else []
        head.append(f"B/A {m.label} [{conf} CI]")
    head.append("status")
    lines = [
        f"### hubbench compare: B = `{cmp.run_b}` over A = `{cmp.run_a}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|",
    ]
    n_better = n_worse = 0
    for c in cmp.cells:
        cells = [c.label]
        for i, m in enumerate(cmp.metrics):
            va, vb = c.values[m.name]
            if i == 0:
                cells += [fmt.metric_value(m, va), fmt.metric_value(m, vb)]
            ci = c.ratios.get(m.name)
            text = fmt.ratio(ci)
            if ci is not None:
                moved = change(m, ci)
                n_better += moved > 0
                n_worse += moved < 0
                mark = {1: "🟢 **", -1: "🔴 **"}.get(moved, "")
                text = f"{mark}{text}{'**' if mark else ''}"
            cells.append(text)
        cells.append(_status_note(c))
        lines.append("| " + " | ".join(fmt.md_cell(x) for x in cells) + " |")
    lines += [
        "",
        f"{n_better} better, {n_worse} worse beyond noise. Brackets: {conf} bootstrap CI "
        f"({cmp.resamples} resamples of each side's per-step times, ratio of medians); "
        f"🟢/🔴: CI excludes 1 (memory: differs by more than {100 * POINT_TOLERANCE:g}%).",
        "",
    ]
    return "\n".join(lines)
