"""Figures of the quality mode: quality against training throughput (`pareto`) and learning
curves (`curves`). Seeds are replicates: a config's points and lines pool its seeds.

A config is a facet's rows that agree on every series field but `seed`. The Pareto front joins
the configs that no other config beats on both throughput and quality; a config whose trained
model is not causal (causal_check 'fail: ...' or 'not causal') is drawn hollow, labelled
"(leaks)", and kept off the front: its quality is not a valid result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.report import style
from hubbench.report.figure import Figured, legend, line_axes, new_figure, title
from hubbench.report.load import norm_value
from hubbench.report.series import Facet
from hubbench.variants import display_name

if TYPE_CHECKING:
    import pandas as pd

T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306}


@dataclass
class Config:
    label: str
    variant: str
    attention: str | None
    rows: list[dict[str, Any]]  # its ok quality rows, one per seed

    @property
    def leaks(self) -> bool:
        return any(_leaks(r) for r in self.rows)


def _leaks(row: dict[str, Any]) -> bool:
    check = str(row.get("causal_check") or "")
    return check.startswith("fail") or check == "not causal"


def quality_metric(task: str) -> tuple[str, str, bool]:
    """(column, axis label, higher is better) of a task's headline quality."""
    if task == "bytes":
        return "bits_per_byte", "held-out bits per byte (lower is better)", False
    return "eval_accuracy", "held-out MQAR accuracy", True


def configs(df: pd.DataFrame) -> list[Config]:
    """The facet's ok quality rows grouped into configs (every series field but seed)."""
    rows = [{k: norm_value(v) for k, v in r.items()} for _, r in df.iterrows()]
    rows = [r for r in rows if r.get("mode") == "quality" and r.get("status") == "ok"]
    fields = [f for f in schema.fields_with_role("series") if f not in ("seed", "variant")]
    fields = schema.varying(rows, ["seq", *fields], nulls=False)
    out: dict[tuple, Config] = {}
    for r in rows:
        key = (r["variant"], *(r.get(f) for f in fields))
        if key not in out:
            extra = " ".join(f"{f}={r[f]}" for f in fields if r.get(f) is not None)
            name = display_name(str(r["variant"]), r.get("mixer"))
            out[key] = Config(f"{name} {extra}".strip(), str(r["variant"]), r.get("attention"), [])
        out[key].rows.append(r)
    return list(out.values())


def mean_interval(values: Sequence[float]) -> tuple[float, float, float, str]:
    """(mean, low, high, how): a 95% t-interval from 3+ values, else their min-max."""
    mean = statistics.fmean(values)
    if len(values) < 3:
        return mean, min(values), max(values), "min-max"
    half = T95.get(len(values), 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half, "95% t"


def pareto_front(points: Sequence[tuple[float, float]], higher: bool) -> list[int]:
    """Indices of the points no other point matches or beats on both x (higher better) and y
    (`higher`: higher better, else lower), sorted by x."""
    sign = 1 if higher else -1
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any(
            (xo >= x and sign * yo >= sign * y) and (xo > x or sign * yo > sign * y)
            for j, (xo, yo) in enumerate(points)
            if j != i
        )
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto(facet: Facet) -> Figured:
    task = str(facet.fixed.get("task") or _first(facet.df, "task") or "mqar")
    column, label, higher = quality_metric(task)
    fig = new_figure()
    ax = line_axes(fig)
    found = [c for c in configs(facet.df) if all(r.get(column) is not None for r in c.rows)]
    points: list[tuple[float, float]] = []
    valid: list[int] = []
    hows = set()
    for i, c in enumerate(found):
        speed = [float(r["tokens_per_s"]) for r in c.rows]
        lo = min(float(r.get("tokens_per_s_p10") or r["tokens_per_s"]) for r in c.rows)
        hi = max(float(r.get("tokens_per_s_p90") or r["tokens_per_s"]) for r in c.rows)
        x = statistics.median(speed)
        y, ylo, yhi, how = mean_interval([float(r[column]) for r in c.rows])
        hows.add(how)
        s = style.series_style(c.variant, c.attention)
        hollow = c.leaks
        ax.errorbar(
            x, y, xerr=[[x - lo], [hi - x]], yerr=[[y - ylo], [yhi - y]], color=s.color,
            marker=s.marker, markersize=7, linestyle="none", capsize=3,
            markerfacecolor="white" if hollow else s.color,
            label=f"{c.label} (leaks)" if hollow else c.label,
        )  # fmt: skip
        points.append((x, y))
        if not hollow:
            valid.append(i)
    front = [valid[j] for j in pareto_front([points[i] for i in valid], higher)]
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="#777777",
                linewidth=1, zorder=0, label="Pareto front")  # fmt: skip
    base = _first(facet.df, "baseline_quality")
    if base is not None:
        ax.axhline(float(base), color="#999999", linestyle="--", linewidth=1,
                   label="trivial model (chance / unigram)")  # fmt: skip
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labels never crowd
    ax.xaxis.set_major_formatter(style.si_formatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training throughput (tokens/s)")
    ax.set_ylabel(label)
    title(fig, f"Quality against speed: {task}", facet)
    legend(ax)
    seeds = max((len(c.rows) for c in found), default=0)
    caption = (
        f"Each point is one config, pooled over its seeds (up to {seeds}): x the median training "
        "tokens/s (bars: lowest p10 to highest p90 update), y the mean held-out "
        f"{'accuracy' if higher else 'bits per byte'} (bars: {', '.join(sorted(hows))} over "
        "seeds). The grey line joins the configs no other config beats on both; hollow points "
        "failed the causality checks or are not causal, and stay off the front."
    )
    return Figured(fig, task, [caption], caption)


def curves(facet: Facet) -> Figured:
    task = str(facet.fixed.get("task") or _first(facet.df, "task") or "mqar")
    _, label, _ = quality_metric(task)
    fig = new_figure(height=style.AXES_HEIGHT * 2 + 1.5)
    w, h = fig.get_figwidth(), fig.get_figheight()
    panel = (h - 0.75 - 0.5 - 0.45) / 2
    # the bottom panel first: the legend and the notes go under it (footnote uses axes[0])
    bottom = fig.add_axes((0.72 / w, 0.5 / h, (w - 0.82) / w, panel / h))
    top = fig.add_axes((0.72 / w, (0.5 + panel + 0.45) / h, (w - 0.82) / w, panel / h),
                       sharex=bottom)  # fmt: skip
    for c in configs(facet.df):
        s = style.series_style(c.variant, c.attention)
        for k, r in enumerate(c.rows):
            x = _list(r.get("curve_updates"))
            if not x:
                continue
            name = (f"{c.label} (leaks)" if c.leaks else c.label) if k == 0 else None
            kw = {"color": s.color, "linestyle": s.linestyle, "linewidth": 1.4 if k == 0 else 0.8}
            top.plot(x, _list(r["curve_eval"]), **kw)
            bottom.plot(x, _list(r["curve_train_loss"]), label=name, **kw)
    top.set_ylabel(label.replace("held-out ", "held-out\n"))
    bottom.set_ylabel("training loss (nats)")
    bottom.set_xlabel("optimizer updates")
    title(fig, f"Learning curves: {task}", facet)
    legend(bottom)
    caption = (
        "Top: the held-out score on a small eval set at 20 points of training; bottom: the mean "
        "training loss since the previous point. One line per seed, the first seed thicker."
    )
    return Figured(fig, task, [caption], caption)


def has_pareto(df: pd.DataFrame) -> bool:
    return any(c.rows for c in configs(df))


def has_curves(df: pd.DataFrame) -> bool:
    return any(len(_list(r.get("curve_updates"))) for c in configs(df) for r in c.rows)


def _list(value: Any) -> list[float]:
    return [] if value is None else [float(v) for v in value]


def _first(df: pd.DataFrame, name: str) -> Any:
    if name not in df.columns:
        return None
    values = [norm_value(v) for v in df[name]]
    return next((v for v in values if v is not None), None)
