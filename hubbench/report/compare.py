"""Run B over run A, cell by cell, with bootstrap CIs; rendered as a Rich table or Markdown.

Cells join on their cell fields (load.cell_keys), never on run_id / cell_index, so two runs of a
suite whose sweep was reordered still line up. A change counts as real only when its whole CI
lies beyond 1 +/- min_effect (MIN_EFFECT, chosen from A/A runs: docs/measurement.md); memory has
no per-step samples and is deterministic enough that a fixed tolerance stands in. Verdicts are
words (better / worse / same), so they read without colour in pipes and CI logs. Rows measured
in different environments still join, with a warning; `gate` refuses those that differ in what
measures (ENV_REFUSE: device, torch, CUDA, threads) and only notes a different host. When the
noise sentinel says B's machine was slower (report.machine), a time metric that got worse is
not called worse: the verdict says 'machine changed, N× slower' instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.report import format as fmt
from hubbench.report.load import join_fields, labeller, norm_value, run_label
from hubbench.report.machine import Machine, machine_change
from hubbench.report.ratios import metric_ratio, row_metric
from hubbench.stats import CONFIDENCE, RESAMPLES, SEED, RatioCI

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

DEFAULT_METRICS = ("tokens_per_s", "peak_mem_bytes")
# Memory has no per-step samples: a change within these fractions is "the same" (A/A data in
# docs/measurement.md). CUDA's allocator counts bytes exactly; CPU resident memory moves with
# glibc's arenas from run to run.
MEMORY_TOLERANCE = {"cuda_allocated": 0.02, "cpu_rss": 0.20}
DEFAULT_MEMORY_TOLERANCE = 0.02
MIN_EFFECT = 0.05  # a call needs its CI beyond 1 +/- 5% (A/A data: docs/measurement.md)
# Compared rows should share these. A different device, torch, CUDA or thread count changes
# what is measured (gate refuses it); a different host name alone (CI runners) does not.
ENV_REFUSE = ("device_name", "torch_version", "cuda_version", "threads")
ENV_WARN = ("host", "glibc_tunables")
VERDICT = {1: "better", -1: "worse", 0: "same"}


@dataclass
class CellComparison:
    label: str
    status_a: str | None  # None: the cell is not in that run
    status_b: str | None
    values: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ratios: dict[str, RatioCI] = field(default_factory=dict)
    mem_kind: str | None = None


@dataclass
class Comparison:
    run_a: str
    run_b: str
    metrics: list[schema.Column]
    cells: list[CellComparison]
    confidence: float
    resamples: int
    min_effect: float = MIN_EFFECT
    warnings: list[str] = field(default_factory=list)
    machine: Machine | None = None  # what the sentinels say about B's machine against A's

    def held(self, metric: schema.Column, moved: int) -> bool:
        """A time metric called worse that B's slower machine could explain, or better that its
        faster machine could: not called."""
        if self.machine is None or metric.time_power == 0:
            return False
        return (moved < 0 and self.machine.slower) or (moved > 0 and self.machine.faster)


def env_mismatch(a: pd.DataFrame, b: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """'host: A has x, B has y' for each of `fields` whose values differ between the runs."""
    out = []
    for f in fields:
        va = sorted({str(v) for v in map(norm_value, a[f]) if v is not None})
        vb = sorted({str(v) for v in map(norm_value, b[f]) if v is not None})
        if va and vb and va != vb:
            out.append(f"{f}: A has {', '.join(va)}, B has {', '.join(vb)}")
    return out


def memory_tolerance(mem_kind: str | None) -> float:
    return MEMORY_TOLERANCE.get(str(mem_kind), DEFAULT_MEMORY_TOLERANCE)


def change(
    metric: schema.Column,
    ci: RatioCI,
    min_effect: float = MIN_EFFECT,
    mem_kind: str | None = None,
) -> int:
    """+1 better, -1 worse, 0 within noise plus min_effect (or not decidable)."""
    if ci.bootstrapped:
        moved = ci.beyond(min_effect)
    elif metric.time_power == 0:
        tolerance = memory_tolerance(mem_kind)
        moved = 0 if abs(ci.point - 1.0) <= tolerance else (1 if ci.point > 1 else -1)
    else:
        moved = 0  # a time metric with too few samples: no basis for a call
    return moved if metric.higher_is_better else -moved


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
    if _disjoint(a, b, "threads"):  # runs on machines of other sizes: join, and say so
        fields.remove("threads")
    joined = Joined(fields, index_by_cell(a, fields), index_by_cell(b, fields))
    if not any(k in joined.b for k in joined.a):
        raise ReportError(
            f"no matching cells between {name_a} ({run_label(a)}) and {name_b} "
            f"({run_label(b)}): " + explain_no_overlap(a, b, fields)
        )
    return joined


def _disjoint(a: pd.DataFrame, b: pd.DataFrame, field: str) -> bool:
    values = [{norm_value(v) for v in df[field]} - {None} for df in (a, b)]
    return bool(values[0] and values[1]) and not values[0] & values[1]


def compare_runs(
    a: pd.DataFrame,
    b: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    min_effect: float = MIN_EFFECT,
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
            mem_kind=norm_value(any_row.get("mem_kind")),
        )
        for m in ms:
            c.values[m.name] = (
                None if ra is None else row_metric(ra, m.name),
                None if rb is None else row_metric(rb, m.name),
            )
            if c.status_a == "ok" and c.status_b == "ok":
                ci = metric_ratio(m, rb, ra, resamples=resamples, confidence=confidence, seed=seed)
                if ci is not None:
                    c.ratios[m.name] = ci
        cells.append(c)
    warnings = [
        f"different environments: {w}" for w in env_mismatch(a, b, (*ENV_REFUSE, *ENV_WARN))
    ]
    machine = machine_change(a, b, resamples=resamples, confidence=confidence, seed=seed)
    warnings += [machine.line()] if machine.changed else []
    return Comparison(
        run_label(a), run_label(b), ms, cells, confidence, resamples, min_effect, warnings, machine
    )


def verdicts(cmp: Comparison, c: CellComparison) -> str:
    """'tokens/s worse, peak memory better', or 'same' (each metric beyond noise + effect)."""
    calls = []
    for m in cmp.metrics:
        ci = c.ratios.get(m.name)
        moved = change(m, ci, cmp.min_effect, c.mem_kind) if ci is not None else 0
        if cmp.held(m, moved) and cmp.machine is not None:
            calls.append(f"{m.label}: {cmp.machine.short()}")
        elif moved:
            calls.append(f"{m.label} {VERDICT[moved]}")
    if not c.ratios:
        return "-"
    return ", ".join(calls) or "same"


def _rule(cmp: Comparison) -> str:
    conf = f"{100 * cmp.confidence:g}%"
    return (
        f"{conf} CI from {cmp.resamples} two-stage bootstrap resamples (rounds, then steps "
        f"within them); a change is called when the CI lies beyond 1 ± {100 * cmp.min_effect:g}%"
        f" (memory: beyond {100 * MEMORY_TOLERANCE['cpu_rss']:g}% of CPU RSS, "
        f"{100 * MEMORY_TOLERANCE['cuda_allocated']:g}% of CUDA allocated)"
    )


def _status_note(c: CellComparison) -> str:
    if c.status_a == c.status_b == "ok":
        return ""
    a = c.status_a or "absent"
    b = c.status_b or "absent"
    return f"{a} → {b}"


def rich_columns(cmp: Comparison) -> tuple[list[str], list[str]]:
    """(the headers that must stay, those that may go, least wanted first) when to_rich's
    table is fitted to a narrow console (hubbench.cli.fit)."""
    main, *rest = cmp.metrics
    keep = ["cell", f"B/A {main.label}", "verdict"]
    drop = ["ideal", f"A {main.label}", *(f"B/A {m.label}" for m in rest), f"B {main.label}"]
    return keep, [*drop, "status"]


def to_rich(cmp: Comparison) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"B / A by cell   A = {cmp.run_a}   B = {cmp.run_b}",
        caption="\\[brackets]: " + _rule(cmp),
    )
    table.add_column("cell", style="bold")  # wraps at spaces, never inside a word
    for i, m in enumerate(cmp.metrics):
        if i == 0:  # values for the main metric only; ratios for the rest keep the table narrow
            table.add_column(f"A {m.label}", justify="right", no_wrap=True)
            table.add_column(f"B {m.label}", justify="right", no_wrap=True)
        table.add_column(f"B/A {m.label}", justify="right", no_wrap=True)
        if m.time_power:  # the same ratio at both sides' speed of light
            table.add_column("ideal", justify="right", no_wrap=True)
    table.add_column("verdict")
    table.add_column("status")
    for c in cmp.cells:
        cells: list[Any] = [Text(c.label)]
        for i, m in enumerate(cmp.metrics):
            va, vb = c.values[m.name]
            if i == 0:
                cells += [fmt.metric_value(m, va), fmt.metric_value(m, vb)]
            ci = c.ratios.get(m.name)
            moved = change(m, ci, cmp.min_effect, c.mem_kind) if ci else 0
            worse = "yellow" if cmp.held(m, moved) else "bold red"
            cells.append(Text(fmt.ratio(ci), style={1: "bold green", -1: worse}.get(moved, "")))
            if m.time_power:
                cells.append(fmt.ideal(ci))
        cells += [Text(verdicts(cmp, c)), _status_note(c)]
        table.add_row(*cells)
    return table


def to_markdown(cmp: Comparison) -> str:
    conf = f"{100 * cmp.confidence:g}%"
    head = ["cell"]
    for i, m in enumerate(cmp.metrics):
        head += [f"A {m.label}", f"B {m.label}"] if i == 0 else []
        head.append(f"B/A {m.label} [{conf} CI]")
        head += ["ideal"] if m.time_power else []
    head += ["verdict", "status"]
    lines = [
        f"### hubbench compare: B = `{cmp.run_b}` over A = `{cmp.run_a}`",
        "",
        *(f"> ⚠️ {w}" for w in cmp.warnings),
        *([""] if cmp.warnings else []),
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|",
    ]
    n_better = n_worse = n_held = 0
    for c in cmp.cells:
        cells = [c.label]
        for i, m in enumerate(cmp.metrics):
            va, vb = c.values[m.name]
            if i == 0:
                cells += [fmt.metric_value(m, va), fmt.metric_value(m, vb)]
            ci = c.ratios.get(m.name)
            text = fmt.ratio(ci)
            if ci is not None:
                moved = change(m, ci, cmp.min_effect, c.mem_kind)
                n_held += cmp.held(m, moved)
                moved = 0 if cmp.held(m, moved) else moved
                n_better += moved > 0
                n_worse += moved < 0
                mark = {1: "🟢 **", -1: "🔴 **"}.get(moved, "")
                text = f"{mark}{text}{'**' if mark else ''}"
            cells.append(text)
            cells += [fmt.ideal(ci)] if m.time_power else []
        cells += [verdicts(cmp, c), _status_note(c)]
        lines.append("| " + " | ".join(fmt.md_cell(x) for x in cells) + " |")
    lines += [
        "",
        f"{n_better} better, {n_worse} worse beyond noise"
        + (f", {n_held} not called: {cmp.machine.words()}" if n_held and cmp.machine else "")
        + f". Brackets: {_rule(cmp)}.",
        "",
    ]
    return "\n".join(lines)
