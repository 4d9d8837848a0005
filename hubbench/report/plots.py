"""The five figures: throughput, scaling, speedup, heatmap, memory; PNG and SVG, Agg only.

Every figure is built on a bare `matplotlib.figure.Figure` (no pyplot, no global state), one per
facet (see series.py), with the facet's device, dtype, mode and batch in its title. A cell that
failed or was skipped keeps its place: an x at the foot of the axes in its series' colour, its
status beside it, and a footnote naming it. Legends sit outside the axes so they never hide data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.config import INFERENCE_MODES
from hubbench.errors import ReportError
from hubbench.report import style
from hubbench.report.figure import (
    Figured,
    all_seqs,
    bytes_axis,
    col,
    failure_notes,
    failures,
    footnote,
    legend,
    mark_failures,
    minor_labels,
    new_figure,
    seq_axis,
    title,
)
from hubbench.report.fits import Fit, crossover, fit_exponent
from hubbench.report.format import fmt_seq
from hubbench.report.heatmap import heat_groups, heatmaps
from hubbench.report.load import require_ok, run_label
from hubbench.report.series import (
    Facet,
    Series,
    build_series,
    facets,
    speedup_pairs,
    title_parts,
)
from hubbench.report.stats import paired, ratio_ci, rounds_of

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

KINDS = ("throughput", "scaling", "speedup", "heatmap", "memory", "state")
FORMATS = ("png", "svg")
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
}


# ---- support checks: a kind is drawable when at least one facet has what it needs ----


def _has_throughput(series: list[Series]) -> bool:
    return any(s.ok["tokens_per_s"].notna().any() for s in series)


def _has_scaling(series: list[Series]) -> bool:
    return any(s.ok["seq"].nunique() >= 2 for s in series)


def _has_speedup(series: list[Series]) -> bool:
    return any(
        set(h.ok["seq"]) & set(b.ok["seq"]) or len(h.failed) or len(b.failed)
        for h, b, _ in speedup_pairs(series)
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
    else:
        ok = any(checks[kind](build_series(f.df)) for f in facets(df))
    return None if ok else f"{HINTS[kind]} (run {run_label(df)} lacks it)"


# ---- the kinds ----


def _line_figure(
    facet: Facet,
    what: str,
    column: str,
    ylabel: str,
    yformatter: Any,
    band: tuple[str, str] | None,
    label_suffix: Callable[[Series], str] | None = None,
) -> Figured:
    """Shared body of throughput / scaling / memory: one line per series against n."""
    import numpy as np

    series = build_series(facet.df)
    fig = new_figure()
    ax = fig.add_axes((0.1, 0.16, 0.56, 0.68))
    marks = []
    for s in series:
        ok = s.ok[s.ok[column].notna()]
        label = s.label + (label_suffix(s) if label_suffix else "")
        if len(ok):
            x, y = col(ok, "seq"), col(ok, column)
            yerr = None
            if band is not None:
                lo_v, hi_v = col(ok, band[0]), col(ok, band[1])
                yerr = np.vstack([np.nan_to_num(y - lo_v), np.nan_to_num(hi_v - y)]).clip(0)
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                label=label,
                capsize=2.5,
                linewidth=1.6,
                markersize=5,
                elinewidth=1.0,
                **s.style.kwargs(),
            )
        else:
            ax.plot([], [], label=label + " (no ok cells)", **s.style.kwargs())
        marks += [(seq, status, s.style.color) for seq, status, _ in failures(s)]
    if column == "peak_mem_bytes":
        bytes_axis(ax)
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(yformatter)
        minor_labels(ax, yformatter)
    ax.set_ylabel(ylabel)
    seq_axis(ax, all_seqs(series))
    if facet.fixed.get("mode") in INFERENCE_MODES:  # n is the prompt decoding follows
        ax.set_xlabel("prompt length n (tokens)")
    mark_failures(ax, marks)
    title(fig, ax, what, facet)
    legend(ax)
    return Figured(fig, "", failure_notes(series))


def throughput(facet: Facet) -> Figured:
    out = _line_figure(
        facet,
        "Throughput",
        "tokens_per_s",
        "throughput (tokens/s)",
        style.si_formatter(),
        ("tokens_per_s_p10", "tokens_per_s_p90"),
    )
    out.notes.insert(0, "Median tokens/s; error bars span p10–p90 of the per-step times.")
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


def scaling(facet: Facet) -> Figured:
    series = build_series(facet.df)
    fits = {s.label: series_fit(s) for s in series}

    def suffix(s: Series) -> str:
        f = fits[s.label]
        if f is None:
            return ""
        ci = "" if f.low is None else f" [{f.low:.2f}, {f.high:.2f}]"
        return f"  ($\\propto n^{{{f.exponent:.2f}}}${ci})"

    decode = facet.fixed.get("mode") == "decode"
    out = _line_figure(
        facet,
        "Scaling",
        "time_median_s",
        "time per generated token (median)" if decode else "step time (median)",
        style.seconds_formatter(),
        ("time_p10_s", "time_p90_s"),
        suffix,
    )
    ranges = {(f.n_lo, f.n_hi) for f in fits.values() if f is not None}
    span = (
        f"{fmt_seq(min(r[0] for r in ranges))}–{fmt_seq(max(r[1] for r in ranges))}"
        if ranges
        else "-"
    )
    what = "Median time per generated token" if decode else "Median step time"
    notes = [
        f"{what}; error bars p10–p90. Exponents: least-squares slope of log t on log n "
        f"over the upper half of each series' points (n in {span}), with 95% bootstrap "
        "intervals (rounds resampled, then steps within them).",
        *_crossover_notes(series),
    ]
    out.notes[:0] = notes
    return out


def _crossover_notes(series: list[Series]) -> list[str]:
    hubs = [s for s in series if s.is_hub]
    bases = [s for s in series if s.is_attention_baseline]
    notes = []
    for h in hubs:
        parts = []
        for b in bases:
            both = h.ok.merge(b.ok, on="seq", suffixes=("_h", "_b"))
            c = crossover(
                col(both, "seq"), col(both, "time_median_s_h"), col(both, "time_median_s_b")
            )
            parts.append(f"vs {b.label}: {'fewer than two common n' if c is None else c.text()}")
        if parts:
            notes.append(f"Crossover, {h.label} faster from: " + "; ".join(parts) + ".")
    return notes


def memory(facet: Facet) -> Figured:
    kind = str(facet.fixed.get("mem_kind") or "")
    what = {"cuda_allocated": "CUDA allocated", "cpu_rss": "CPU RSS"}.get(kind, kind)
    ylabel = f"peak memory ({what})" if what else "peak memory"
    return _line_figure(
        facet, "Peak memory", "peak_mem_bytes", ylabel, style.bytes_formatter(), None
    )


def state(facet: Facet) -> Figured:
    out = _line_figure(
        facet,
        "Decode state",
        "state_bytes",
        "state or KV cache per sequence",
        style.bytes_formatter(),
        None,
    )
    out.notes.insert(
        0,
        "Bytes each sequence carries into the next token after a prompt of n tokens: KV caches "
        "(attention), conv + SSM state (Mamba), hub statistics, member slots and the current "
        "chunk (HubRouter), summed over layers.",
    )
    return out


def speedup(facet: Facet) -> Figured:
    series = build_series(facet.df)
    pairs = speedup_pairs(series)
    fig = new_figure()
    ax = fig.add_axes((0.1, 0.16, 0.5, 0.68))
    marks, gaps = [], []
    for hub, base, kind in pairs:
        xs, ys, lo, hi = [], [], [], []
        for seq in sorted(set(hub.rows["seq"]) | set(base.rows["seq"])):
            h = hub.rows[hub.rows["seq"] == seq].iloc[0] if seq in set(hub.rows["seq"]) else None
            b = base.rows[base.rows["seq"] == seq].iloc[0] if seq in set(base.rows["seq"]) else None
            if h is None or b is None:
                continue
            if h["status"] != "ok" or b["status"] != "ok":
                who = "hub" if h["status"] != "ok" else "baseline"
                status = str(h["status"] if who == "hub" else b["status"])
                marks.append((int(seq), status, base.style.color))
                gaps.append(f"{hub.label} over {base.label} n={fmt_seq(int(seq))}: {who} {status}")
                continue
            ci = ratio_ci(h["tokens_per_s"], b["tokens_per_s"], rounds_of(h), rounds_of(b), -1,
                          paired=paired([h, b]))  # fmt: skip
            xs.append(int(seq))
            ys.append(ci.point)
            lo.append(ci.point - ci.low)
            hi.append(ci.high - ci.point)
        linestyle = ":" if kind == "native" else "-"
        ax.errorbar(
            xs,
            ys,
            yerr=[lo, hi],
            color=base.style.color,
            marker=hub.style.marker,
            linestyle=linestyle,
            linewidth=1.8,
            markersize=5.5,
            capsize=2.5,
            label=f"{hub.label} over {base.label} ({kind})",
        )
    ax.axhline(1.0, color="#777777", linewidth=1.0, zorder=1, label="parity (1×)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(style.speedup_formatter())
    minor_labels(ax, style.speedup_formatter())
    ax.set_ylabel("speedup over baseline")
    seqs = sorted({int(x) for h, b, _ in pairs for x in [*h.rows["seq"], *b.rows["seq"]]})
    seq_axis(ax, seqs)
    mark_failures(ax, marks)
    title(fig, ax, "Speedup over attention baselines", facet)
    legend(ax)
    notes = [
        "Speedup = baseline step time / hub step time (= tokens/s ratio) against the hub's own "
        "baseline (hub-gpt: transformer, hub-jamba: jamba), same cell otherwise; native = naive "
        "attention, optimised = SDPA / flash. Error bars: 95% CI of the ratio of median step "
        "times, from a bootstrap over rounds paired within the run (rounds, then steps).",
    ]
    if gaps:
        notes.append(
            "Undefined (x at the foot of the axes; a side did not run): " + "; ".join(gaps)
        )
    return Figured(fig, "", notes)


# ---- entry point ----

DRAW: dict[str, Callable[[Facet], Figured | list[Figured]]] = {
    "throughput": throughput,
    "scaling": scaling,
    "speedup": speedup,
    "heatmap": heatmaps,
    "memory": memory,
    "state": state,
}


DPI = 200


@dataclass
class Rendered:
    kind: str
    stem: str  # file name without extension: kind[-variant][-facet]
    figure: Figure


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
    for facet in facets(df, extra):
        if supported(kind, facet.df) is not None:
            continue  # another facet of this run has the data; this one does not
        result = DRAW[kind](facet)
        for fig in result if isinstance(result, list) else [result]:
            footnote(fig.fig, fig.fig.axes[0], fig.notes)
            stem = "-".join(p for p in (kind, fig.stem, facet.slug) if p)
            out.append(Rendered(kind, stem, fig.fig))
    return out


def save(figure: Figure, target: Any, fmt_name: str) -> None:
    """target: a path or a binary file object."""
    figure.savefig(target, format=fmt_name, dpi=DPI, bbox_inches="tight", pad_inches=0.15)


def plot_run(
    df: pd.DataFrame,
    out_dir: Path,
    kinds: Sequence[str] | None = None,
    formats: Sequence[str] = FORMATS,
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
