"""speedup: each hub variant's tokens/s over its own baseline's, with the 95% bootstrap interval
of the ratio (rounds paired within the run, hubbench.report.ratios) and the ideal ratio at both
cells' speed of light beside it; a forest of ratios when the run holds a single n."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.report import style
from hubbench.report.format import fmt_seq, peak_note
from hubbench.report.peaks import too_low_peaks
from hubbench.report.plots.figure import (
    Figured,
    context,
    legend,
    line_axes,
    mark_failures,
    never_ran,
    new_figure,
    not_run_note,
    seq_axis,
    split_ran,
    title,
)
from hubbench.report.plots.forest import Row, forest_figure
from hubbench.report.plots.registry import Kind, register
from hubbench.report.plots.ticks import log_axis
from hubbench.report.ratios import metric_ratio
from hubbench.report.series import Facet, Series, build_series, speedup_pairs
from hubbench.stats import RatioCI

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

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
        dodge = 2 ** (0.035 * (i - (len(pairs) - 1) / 2))  # error bars side by side, not on top
        pts = points[(hub.label, base.label)]
        values += _pair(ax, (hub, base, kind), pts, dodge, ideals)
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


def _pair(
    ax: Axes,
    pair: tuple[Series, Series, str],
    pts: list[tuple[int, RatioCI | None, str]],
    dodge: float,
    ideals: dict[tuple[str, tuple], Any],
) -> list[float]:
    """Draw one hub over its baseline: the ratios with their intervals, and the ideal beside
    them as a dashed line (one line for ideals that two baselines share: `ideals` holds those
    drawn). The values drawn, for the axis."""
    hub, base, kind = pair
    done = [(n, ci) for n, ci, _ in pts if ci is not None]
    xs = [n * dodge for n, _ in done]
    ys = [ci.point for _, ci in done]
    values = [v for _, ci in done for v in (ci.low, ci.high)]
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
    return values


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


def has_speedup(df: pd.DataFrame) -> bool:
    return any(
        set(h.ok["seq"]) & set(b.ok["seq"]) or len(h.failed) or len(b.failed)
        for h, b, _ in speedup_pairs(build_series(df))
        if not (never_ran(h) or never_ran(b))  # flash on CPU: nothing to divide by
    )


register(Kind(
    "speedup", speedup, has_speedup,
    hint="speedup needs a hub variant and its baseline in one run (hub-gpt with "
    "transformer, hub-jamba with jamba): run `hubbench run throughput`",
    lacks="no hub beside its baseline",
))  # fmt: skip
