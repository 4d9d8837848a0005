"""Figures of the quality mode across a sweep: MQAR recall over the (n, key-value pairs) grid
(`recall`) and the fraction of seeds that converged against the number of hubs (`convergence`).

Seeds are replicates, as in quality_figures.py: a line is one config (every series field but
`seed` and what the x axis sweeps) and each of its points pools the config's seeds. A cell that
failed keeps its place, an x at the foot of the axes in its line's colour, named in a footnote;
a config whose trained model is not causal is drawn hollow and labelled "(leaks)".

`kv_pairs` is a figure field (a facet holds one), so `recall` draws from `grid_facets`: the facets
of the run with kv_pairs left out of what splits them.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.variants import display_name, display_order
from hubbench.report import style
from hubbench.report.figure import (
    Figured,
    context,
    legend,
    line_axes,
    mark_failures,
    new_figure,
    title,
)
from hubbench.report.format import fmt_seq
from hubbench.report.load import fmt_value, label_fields, norm_value, records
from hubbench.report.quality_figures import pareto_front, quality_metric
from hubbench.report.series import SYMBOLS, Facet, facets
from hubbench.report.ticks import log_axis
from hubbench.stats import mean_interval

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

GRID_FIELD = "kv_pairs"  # a figure field that `recall` puts on its x axis instead


@dataclass
class Line:
    """One config of a quality sweep: its rows of every status, over every point of the x axis."""

    label: str
    variant: str
    attention: str | None
    rows: list[dict[str, Any]]
    style: style.SeriesStyle = field(default_factory=lambda: style.SeriesStyle("#000000", "o", "-"))

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "ok"]

    @property
    def leaks(self) -> bool:
        return any(_leaks(r) for r in self.ok)


@dataclass(frozen=True)
class Pooled:
    """A line's value at one x: the mean over its seeds with the interval `how` names."""

    mean: float
    low: float
    high: float
    how: str  # "95% t" (3+ seeds) or "min-max"
    n: int


def _leaks(row: dict[str, Any]) -> bool:
    check = str(row.get("causal_check") or "")
    return check.startswith("fail") or check == "not causal"


def quality_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's quality rows (every status) as dicts of plain values."""
    rows = [{k: norm_value(v) for k, v in r.items()} for _, r in df.iterrows()]
    return [r for r in rows if r.get("mode") == "quality"]


def pool(values: Iterable[Any]) -> Pooled | None:
    """Mean over seeds with a 95% t-interval (3+ seeds) or min-max (1-2); None without values."""
    got = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not got:
        return None
    mean, low, high, how = mean_interval(got)
    return Pooled(mean, low, high, how, len(got))


def lines(rows: list[dict[str, Any]], over: Sequence[str]) -> list[Line]:
    """The rows grouped into configs: every series field (and seq) that varies, except `seed`
    and the fields in `over` (the x axis); baselines first, the same style in every figure."""
    skip = {"seed", "variant", *over}
    fields = [f for f in ("seq", *schema.fields_with_role("series")) if f not in skip]
    fields = schema.varying(rows, fields, nulls=False)
    shown = _shown(rows, fields)
    found: dict[tuple, Line] = {}
    for r in rows:
        key = (str(r["variant"]), *(repr(r.get(f)) for f in fields))
        if key not in found:
            label = _label(r, shown.get(str(r["variant"]), []))
            found[key] = Line(label, str(r["variant"]), r.get("attention"), [])
        found[key].rows.append(r)

    def rank(item: tuple[tuple, Line]) -> tuple:
        (variant, *_), line = item
        first = line.rows[0]
        return (display_order(variant), variant, *(_sortable(first.get(f)) for f in fields))

    out = [line for _, line in sorted(found.items(), key=rank)]
    for line in out:  # several configs of one variant: ordered shades, as series.py does
        line.style = style.series_style(line.variant, line.attention)
    for variant in dict.fromkeys(line.variant for line in out):
        same = [line for line in out if line.variant == variant]
        if len(same) > 1:
            for i, line in enumerate(same):
                line.style = style.sibling_style(line.style, i, len(same))
    return out


def _shown(rows: list[dict[str, Any]], fields: list[str]) -> dict[str, list[str]]:
    """variant -> the fields its labels name: the fewest that tell the configs apart
    (load.label_fields), and of those only the ones that vary among the variant's own rows."""
    import pandas as pd

    if not rows:
        return {}
    keys = pd.DataFrame([{f: r.get(f) for f in ("variant", *fields)} for r in rows])
    keep = [f for f in label_fields(keys, ["variant", *fields]) if f != "variant"]
    out = {}
    for variant, g in keys.groupby(keys["variant"].astype(str), sort=False):
        out[str(variant)] = [f for f in keep if schema.varying(records(g, [f]), [f], nulls=False)]
    return out


def _label(row: dict[str, Any], fields: list[str]) -> str:
    parts = [display_name(str(row["variant"]), row.get("mixer"))]
    for f in sorted(fields, key=lambda f: f == "seq"):  # n last, as load.describe has it
        value = row.get(f)
        if value is None or f in ("mixer", "mixer_digest"):
            continue
        name = "n" if f == "seq" else SYMBOLS.get(f, f)
        parts.append(f"{name}={fmt_value(f, value)}")
    return " ".join(parts)


def _sortable(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, float(value))
    return (2, str(value))


def setup(facet: Facet) -> str:
    """What the facet's models were trained on, in words: 'mqar, 4 key-value pairs, 1500
    updates at lr 0.001' (the quality figure fields, which the title does not show)."""
    f = facet.fixed
    parts = [f"n = {fmt_seq(int(f['seq']))}"] if f.get("seq") is not None else []
    if f.get("task") is not None:
        parts.append(str(f["task"]))
    if f.get("kv_pairs") is not None:
        parts.append(f"{f['kv_pairs']} key-value pairs")
    if f.get("data") is not None:
        parts.append(f"data {f['data']}")
    if f.get("train_updates") is not None:
        lr = f" at lr {f['lr']:g}" if isinstance(f.get("lr"), (int, float)) else ""
        parts.append(f"{f['train_updates']} updates{lr}")
    return ", ".join(parts)


def grid_facets(df: pd.DataFrame) -> list[Facet]:
    """The run's facets with kv_pairs left out of what splits them (recall sweeps it)."""
    if GRID_FIELD not in df.columns:
        return facets(df)
    df = df.reset_index(drop=True)
    masked = df.assign(**{GRID_FIELD: None})
    return [
        Facet({**f.fixed, GRID_FIELD: None}, f.split, df.loc[f.df.index]) for f in facets(masked)
    ]


def seq_facets(df: pd.DataFrame) -> list[Facet]:
    """The run's facets, each split further by sequence length: quality at n = 64 and at n = 128
    are two tasks, and their throughputs are not comparable (pareto, curves)."""
    out = []
    for f in facets(df):
        seqs = sorted({int(n) for n in f.df["seq"].dropna()}) if "seq" in f.df.columns else []
        if len(seqs) < 2:
            out.append(f)
            continue
        out += [Facet({**f.fixed, "seq": n}, [*f.split, "seq"], f.df[f.df["seq"] == n])
                for n in seqs]  # fmt: skip
    return out


def with_setup(draw: Callable[[Facet], Figured]) -> Callable[[Facet], Figured]:
    """`draw` with what the facet's models were trained on (n, task, updates, lr) added to its
    notes and caption: the title does not name them, and facets may differ only in them."""

    def drawn(facet: Facet) -> Figured:
        out = draw(facet)
        trained = setup(facet)
        if trained:
            out.notes.append(f"Trained: {trained}.")
            out.caption += f" Trained: {trained}."
        return out

    drawn.__doc__ = draw.__doc__
    return drawn


def unmeasured(
    line: Line, here: list[dict[str, Any]], x: float, where: str
) -> tuple[list[tuple[float, str, str]], list[str]]:
    """The marks (x, status, colour) and notes of the cells at one point that did not give a
    value: one mark per status, one note per seed (the seeds that did still make the point)."""
    failed = [r for r in here if r.get("status") != "ok"]
    marks = [(x, status, line.style.color) for status in dict.fromkeys(
        str(r.get("status")) for r in failed)]  # fmt: skip
    seeds = len({repr(r.get("seed")) for r in here}) > 1
    notes = []
    for r in failed:
        why = str(r.get("status"))
        message = str(r.get("message") or "")
        if message and message != why:
            why += f" ({textwrap.shorten(message, 50)})"
        seed = f" seed {r.get('seed')}" if seeds and r.get("seed") is not None else ""
        notes.append(f"{' '.join(p for p in (line.label, where) if p)}{seed}: {why}")
    return marks, notes


def _gap_note(gaps: list[str], where: str = "x at the foot of the axes") -> list[str]:
    if not gaps:
        return []
    more = f"; +{len(gaps) - 8} more" if len(gaps) > 8 else ""
    return [f"Not measured ({where}): " + "; ".join(gaps[:8]) + more + "."]


def _hows(pooled: Iterable[Pooled]) -> str:
    hows = sorted({p.how for p in pooled})
    words = {"95% t": "95% t-intervals (3+ seeds)", "min-max": "min-max (fewer than 3 seeds)"}
    return " or ".join(words[h] for h in hows) or "-"


# ---- recall: MQAR accuracy over the (n, pairs) grid ----


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
        xs, ys, lo, hi = [], [], [], []
        for p in points:
            here = [r for r in line.rows if (r["seq"], r[GRID_FIELD]) == p]
            got = pool(r.get("eval_accuracy") for r in here if r.get("status") == "ok")
            more_marks, more_gaps = unmeasured(line, here, at[p] + dodge, _tick(p))
            marks += more_marks
            gaps += more_gaps
            if got is None:
                continue
            pooled.append(got)
            xs.append(at[p] + dodge)
            ys.append(got.mean)
            lo.append(got.mean - max(got.low, 0.0))  # an accuracy stays within 0-100%
            hi.append(min(got.high, 1.0) - got.mean)
        hollow = line.leaks
        label = f"{line.label} (leaks)" if hollow else line.label
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], label=label, elinewidth=0.9, capsize=2.5,
                        markerfacecolor="white" if hollow else line.style.color,
                        **line.style.kwargs())  # fmt: skip
        else:
            ax.plot([], [], label=label + " (no ok cells)", **line.style.kwargs())
    chance = _chance(ax, rows, at)
    ax.set_xticks(range(len(points)), [_tick(p) for p in points])
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.set_ylim(0, 1.04)
    ax.yaxis.set_major_formatter(_percent())
    ax.grid(False, axis="x")
    ax.set_xlabel("sequence length n / key-value pairs")
    ax.set_ylabel("held-out MQAR accuracy")
    mark_failures(ax, marks, log_y=False)
    title(fig, "MQAR recall over the task grid", facet)
    legend(ax)
    how = _hows(pooled)
    trained = setup(facet)
    notes = [
        f"Mean held-out accuracy over seeds; error bars: {how}, cut at 0 and 100%."
        + (" Dashed: chance (1 / the number of values)." if chance else "")
        + (f" Trained: {trained}." if trained else ""),
        *_gap_note(gaps),
    ]
    if any(line.leaks for line in found):
        notes.append("Hollow, (leaks): the trained model failed the causality checks or is not "
                     "causal, so its accuracy is not a valid result.")  # fmt: skip
    caption = (
        "Held-out MQAR accuracy of each config at every (sequence length n, key-value pairs) "
        f"point of the run, the mean over its seeds with {how} as error bars"
        + ("; the dashed line is chance." if chance else ".")
    )
    return Figured(fig, "", notes, caption)


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
                marker="none", zorder=1, label="chance")  # fmt: skip
    return bool(base)


def _percent() -> Any:
    """Fractions as percentages, with as many decimals as the axis' tick step needs."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=None)


# ---- convergence: the fraction of seeds that converged against M ----


def converged_counts(rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(converged, seeds with a verdict) over ok rows."""
    verdicts = [bool(r["converged"]) for r in rows
                if r.get("status") == "ok" and r.get("converged") is not None]  # fmt: skip
    return sum(verdicts), len(verdicts)


def _hub_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [r for r in quality_rows(df) if r.get("hubs") is not None]


def has_convergence(df: pd.DataFrame) -> bool:
    rows = [r for r in _hub_rows(df) if r.get("status") == "ok" and r.get("converged") is not None]
    if len({r["hubs"] for r in rows}) < 2:
        return False
    return any(
        converged_counts(r for r in line.rows if r["hubs"] == m)[1] >= 2
        for line in lines(rows, ("hubs",))
        for m in {r["hubs"] for r in line.rows}
    )


def convergence(facet: Facet) -> Figured:
    from matplotlib.ticker import NullFormatter, NullLocator

    rows = _hub_rows(facet.df)
    hubs = sorted({int(r["hubs"]) for r in rows})
    fig = new_figure()
    ax = line_axes(fig)
    found = lines(rows, ("hubs",))
    marks, gaps = [], []
    taken: dict[tuple[int, float], int] = {}  # (M, fraction) -> labels already there
    for i, line in enumerate(found):
        dodge = 2 ** (0.04 * (i - (len(found) - 1) / 2))
        xs, ys, counts = [], [], []
        for m in hubs:
            here = [r for r in line.rows if r["hubs"] == m]
            k, n = converged_counts(here)
            more_marks, more_gaps = unmeasured(line, here, m * dodge, f"M={m}")
            marks += more_marks
            gaps += more_gaps
            if n == 0:
                continue
            xs.append(m * dodge)
            ys.append(k / n)
            counts.append(f"{k}/{n}")
        hollow = line.leaks
        label = f"{line.label} (leaks)" if hollow else line.label
        if not xs:
            ax.plot([], [], label=label + " (no ok cells)", **line.style.kwargs())
            continue
        ax.plot(xs, ys, label=label, markersize=5.5,
                markerfacecolor="white" if hollow else line.style.color,
                **line.style.kwargs())  # fmt: skip
        for x, y, text in zip(xs, ys, counts, strict=True):
            spot = (round(math.log2(x)), round(y, 3))
            level = taken.get(spot, 0)  # lines that meet: their counts stack, not overlap
            taken[spot] = level + 1
            below = y > 0.8
            ax.annotate(text, (x, y), xytext=(6, (-9 - 8 * level) if below else (5 + 8 * level)),
                        textcoords="offset points", fontsize=style.NOTE_SIZE,
                        color=line.style.color, ha="left", va="center",
                        annotation_clip=False)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(hubs, [str(m) for m in hubs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(hubs[0] / 1.4, hubs[-1] * 1.4)
    ax.set_ylim(-0.04, 1.06)
    ax.yaxis.set_major_formatter(_percent())
    ax.set_xlabel("hubs M")
    ax.set_ylabel("seeds converged")
    mark_failures(ax, marks, log_y=False)
    title(fig, "Convergence against the number of hubs", facet)
    legend(ax)
    threshold = next((str(r["converge_threshold"]) for r in rows
                      if r.get("converge_threshold")), "the task's threshold")  # fmt: skip
    trained = setup(facet)
    notes = [
        f"Share of seeds whose trained model reached {threshold}; the labels give converged/seeds."
        + (f" Trained: {trained}." if trained else ""),
        *_without_hubs(facet.df),
        *_gap_note(gaps),
    ]
    if any(line.leaks for line in found):
        notes.append("Hollow, (leaks): the trained model failed the causality checks or is not "
                     "causal, so its convergence is not a valid result.")  # fmt: skip
    caption = (
        f"Fraction of seeds that converged ({threshold}) against the number of hubs M, one line "
        "per config; each point is labelled converged/seeds."
    )
    return Figured(fig, str(facet.fixed.get("task") or ""), notes, caption)


def _without_hubs(df: pd.DataFrame) -> list[str]:
    """The configs without hubs (the attention baseline) as counts: they have no M to sit at."""
    rows = [r for r in quality_rows(df) if r.get("hubs") is None]
    parts = []
    for line in lines(rows, ("hubs",)):
        k, n = converged_counts(line.rows)
        if n:
            parts.append(f"{line.label} {k}/{n}")
    return ["Without hubs (no M): " + "; ".join(parts) + " converged."] if parts else []


# ---- pareto: quality against training throughput, the front of the configs nothing beats ----


def _task(facet: Facet) -> str:
    task = facet.fixed.get("task")
    if task is None:
        task = next((r.get("task") for r in quality_rows(facet.df) if r.get("task")), None)
    return str(task or "mqar")


def front_of(
    points: Sequence[tuple[float, float]], leaks: Sequence[bool], higher: bool
) -> list[int]:
    """Indices (into points) of the Pareto front of the points that do not leak, sorted by x:
    a model that is not causal can look better than any valid one, so it never joins."""
    valid = [i for i, leak in enumerate(leaks) if not leak]
    return [valid[j] for j in pareto_front([points[i] for i in valid], higher)]


def pareto(facet: Facet) -> Figured:
    task = _task(facet)
    column, label, higher = quality_metric(task)
    rows = quality_rows(facet.df)
    found = lines(rows, ())
    fig = new_figure()
    ax = line_axes(fig)
    points, leaks, drawn, pooled, gaps, xs_all = [], [], [], [], [], []
    for line in found:
        got = pool(r.get(column) for r in line.ok)
        gaps += unmeasured(line, line.rows, 0, "")[1]
        hollow = line.leaks
        name = f"{line.label} (leaks)" if hollow else line.label
        speed = [float(r["tokens_per_s"]) for r in line.ok if r.get("tokens_per_s") is not None]
        if got is None or not speed:
            ax.plot([], [], label=name + " (no ok cells)", linestyle="none",
                    marker=line.style.marker, color=line.style.color)  # fmt: skip
            continue
        x = statistics.median(speed)
        lo = min(float(r.get("tokens_per_s_p10") or r["tokens_per_s"]) for r in line.ok)
        hi = max(float(r.get("tokens_per_s_p90") or r["tokens_per_s"]) for r in line.ok)
        y_lo, y_hi = (max(got.low, 0.0), min(got.high, 1.0)) if higher else (got.low, got.high)
        ax.errorbar(x, got.mean, xerr=[[x - lo], [hi - x]],
                    yerr=[[got.mean - y_lo], [y_hi - got.mean]], color=line.style.color,
                    marker=line.style.marker, markersize=7, linestyle="none", capsize=3,
                    elinewidth=0.9, markerfacecolor="white" if hollow else line.style.color,
                    label=name)  # fmt: skip
        points.append((x, got.mean))
        leaks.append(hollow)
        drawn.append(line)
        pooled.append(got)
        xs_all += [lo, hi]
    front = front_of(points, leaks, higher)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#777777",
                linewidth=1, zorder=0, label="Pareto front")  # fmt: skip
    base = next((r["baseline_quality"] for r in rows if r.get("baseline_quality") is not None),
                None)  # fmt: skip
    if base is not None:
        ax.axhline(float(base), color="#999999", linestyle="--", linewidth=1,
                   label="chance" if higher else "unigram model")  # fmt: skip
    log_axis(ax, xs_all, style.si_formatter(), axis="x")
    ax.set_xlabel("training throughput (tokens/s)")
    ax.set_ylabel(label)
    if higher:
        ax.yaxis.set_major_formatter(_percent())
    title(fig, f"Quality against training speed: {task}", facet)
    legend(ax)
    how = _hows(pooled)
    seeds = max((p.n for p in pooled), default=0)
    what = "accuracy" if higher else "bits per byte"
    floor = "chance" if higher else "the unigram model (bits per byte of the byte frequencies)"
    first = (
        f"One point per config, its seeds pooled (up to {seeds}): x the median training tokens/s "
        f"(bars: lowest p10 to highest p90 of its updates), y the mean held-out {what} (bars: "
        f"{how})."
    )
    if len(front) > 1:
        first += " Grey line: the Pareto front, the configs no other beats on both axes."
    if base is not None:
        first += f" Dashed: {floor}."
    notes = [first, *_gap_note(gaps, "not drawn")]
    if any(leaks):
        notes.append("Hollow, (leaks): the trained model failed the causality checks or is "
                     "not causal; its quality is not a valid result, and it stays off the "
                     "front.")  # fmt: skip
    said = [f"the mean over its seeds with {how} as error bars"]  # only what is drawn
    if len(front) > 1:
        said.append("the grey line joins the configs no other config beats on both")
    if any(leaks):
        said.append("hollow points (not causal) stay off it" if len(front) > 1 else
                    "hollow points are not causal")  # fmt: skip
    if base is not None:
        said.append(f"the dashed line is {'chance' if higher else 'the unigram model'}")
    caption = (
        f"Held-out {what} against training throughput, {context(facet)}: one point per config, "
        + "; ".join(said)
        + "."
    )
    return Figured(fig, task, notes, caption)


# ---- curves: learning curves, seeds as thin lines of their config's colour ----


def curves(facet: Facet) -> Figured:
    task = _task(facet)
    _, label, higher = quality_metric(task)
    fig = new_figure(height=style.AXES_HEIGHT * 2 + 1.5)
    w, h = fig.get_figwidth(), fig.get_figheight()
    panel = (h - 0.75 - 0.5 - 0.45) / 2
    # the bottom panel first: the legend and the notes go under it (footnote uses axes[0])
    bottom = fig.add_axes((0.72 / w, 0.5 / h, (w - 0.82) / w, panel / h))
    top = fig.add_axes((0.72 / w, (0.5 + panel + 0.45) / h, (w - 0.82) / w, panel / h),
                       sharex=bottom)  # fmt: skip
    gaps, seeds = [], 0
    for line in lines(quality_rows(facet.df), ()):
        gaps += unmeasured(line, line.rows, 0, "")[1]
        hollow = line.leaks
        name = f"{line.label} (leaks)" if hollow else line.label
        shown = [r for r in line.ok if _floats(r.get("curve_updates"))]
        seeds = max(seeds, len(shown))
        kw = {"color": line.style.color, "linestyle": line.style.linestyle, "linewidth": 1.0,
              "alpha": 0.85}  # fmt: skip
        for k, r in enumerate(shown):
            x = _floats(r["curve_updates"])
            top.plot(x, _floats(r.get("curve_eval")), **kw)
            bottom.plot(x, _floats(r.get("curve_train_loss")), label=name if k == 0 else None,
                        **kw)  # fmt: skip
        if not shown:
            bottom.plot([], [], label=name + " (no curve)", **kw)
    top.set_ylabel(label.replace("held-out ", "held-out\n"))
    if higher:
        top.yaxis.set_major_formatter(_percent())
    bottom.set_ylabel("training loss (nats)")
    bottom.set_xlabel("optimizer updates")
    title(fig, f"Learning curves: {task}", facet)
    legend(bottom)
    notes = [
        "Top: the held-out score on the eval set at each point of training; bottom: the mean "
        f"training loss since the previous point. One thin line per seed (up to {seeds}), in "
        "its config's colour.",
        *_gap_note(gaps, "no curve"),
    ]
    caption = (
        f"Learning curves, {context(facet)}: the held-out "
        f"{'accuracy' if higher else 'bits per byte'} (top) and the training loss (bottom) "
        "against optimizer updates, one thin line per seed in its config's colour."
    )
    return Figured(fig, task, notes, caption)


def _floats(value: Any) -> list[float]:
    return [] if value is None else [float(v) for v in value]
