"""frontier: MQAR recall against the state a mixer carries (Zoology, Based: the figure the field
reads) and against training throughput, one point per config with its seeds pooled.

Left panel: x is the trained model's decode state per sequence after a prompt of the cell's n
tokens (`decode_state_bytes`: a KV cache grows with n, a recurrent state does not), y the mean
held-out accuracy. Right panel: the same accuracy against the median training tokens/s. The
learning rate is chosen per seed on the validation split first (hubbench.report.seeds.select_lr),
so a facet holds every rate of the grid. The dashed line is the recall-free ceiling (the best
guesser that binds no key to its value, on the same evaluation set), the dotted one 0.99 (solved).
A config that leaks (not causal, or failed the causality checks) is drawn hollow: its accuracy
is not a valid result.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import TYPE_CHECKING, Any

from hubbench.report import style
from hubbench.report.plots.figure import BOTTOM, TOP, Figured, legend, new_figure, title
from hubbench.report.plots.quality import (
    Line,
    Pooled,
    hows,
    lines,
    percent,
    pool,
    quality_rows,
    seq_facets,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.plots.ticks import log_axis
from hubbench.report.seeds import (
    MQAR_TASKS,
    SOLVED,
    is_reference,
    latest_reruns,
    recipe_verdicts,
    select_lr,
)
from hubbench.report.series import Facet

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANELS = (  # (column, axis label, bytes: a binary log axis)
    ("decode_state_bytes", "decode state per sequence after n tokens", True),
    ("tokens_per_s", "training throughput (tokens/s)", False),
)
# the recall-free rules (hubbench.quality.ceilings.RULES, which imports torch) in words
RULE_WORDS = {
    "uniform": "a uniform pick among the sequence's values",
    "rank": "the j-th query answered with the j-th value",
    "first-unrevealed": "the earliest value not yet revealed",
    "frequent-unrevealed": "the most frequent value not yet revealed",
}


def _mqar(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("task") in MQAR_TASKS]


def chosen_facets(df: pd.DataFrame) -> list[Facet]:
    """The run's MQAR rows with the learning rate chosen per (config, seed) on the validation
    split, the chosen rows' `lr` blanked so the grid does not split the facets; one facet per
    MQAR point (n and kv pairs: configs at another n are another task)."""
    import pandas as pd

    given = _mqar(quality_rows(df))
    rows = select_lr(given)
    if not rows:
        return []
    picked = [{**r, "lr": None, "lr_grid": _grid(r["lr_grid"])} for r in rows if "lr_grid" in r]
    chosen = pd.DataFrame(picked + [r for r in rows if "lr_grid" not in r])
    out = []
    for facet in seq_facets(chosen):
        # the runs given at this facet's point and shape: the notes name what the title omits
        mine = [r for r in given if all(_same(r.get(k), v) for k, v in facet.fixed.items()
                                        if k not in ("lr", "lr_grid"))]  # fmt: skip
        ids = {str(r.get("run_id")) for r in mine}
        kept = {str(r.get("run_id")) for r in latest_reruns(mine)}
        runs = {"runs_read": ", ".join(sorted(kept)),
                "runs_superseded": ", ".join(sorted(ids - kept))}  # fmt: skip
        out.append(dataclasses.replace(facet, df=facet.df.assign(**runs)))
    return out


def _same(a: Any, b: Any) -> bool:
    """A row's value against a facet's fixed one (either may be a null or a numpy scalar)."""
    null_a, null_b = a is None or a != a, b is None or b != b  # NaN is not equal to itself
    if null_a or null_b:
        return null_a and null_b
    return a == b or str(a) == str(b)


def _grid(rates: list[float]) -> str:
    return ", ".join(f"{lr:g}" for lr in rates)


def has_frontier(df: pd.DataFrame) -> bool:
    ok = [r for r in _mqar(quality_rows(df)) if r.get("status") == "ok"]
    return any(r.get("eval_accuracy") is not None and r.get("decode_state_bytes") for r in ok)


def _axes(fig: Figure) -> list[Axes]:
    """Two panels side by side, placed in inches as figure.line_axes places one."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    left, gap, right = 0.72, 0.55, 0.1
    width = (w - left - gap - right) / 2
    bottom, height = BOTTOM / h, (h - TOP - BOTTOM) / h
    first = fig.add_axes((left / w, bottom, width / w, height))
    second = fig.add_axes(((left + width + gap) / w, bottom, width / w, height), sharey=first)
    return [first, second]


def _point(ax: Axes, line: Line, x_column: str, label: bool) -> tuple[Pooled, list[float]] | None:
    """Draw a config's mean accuracy over its seeds at the median of its x values; None (and
    nothing drawn) when it has no accuracy or no x."""
    got = pool(r.get("eval_accuracy") for r in line.ok)
    xs = [float(r[x_column]) for r in line.ok if r.get(x_column)]
    if got is None or not xs:
        return None
    x = statistics.median(xs)
    y_lo, y_hi = max(got.low, 0.0), min(got.high, 1.0)
    face = "white" if line.leaks else line.style.color
    ax.errorbar(x, got.mean, yerr=[[got.mean - y_lo], [y_hi - got.mean]],
                color=line.style.color, marker=line.style.marker, markersize=7,
                linestyle="none", capsize=3, elinewidth=0.9, markerfacecolor=face)  # fmt: skip
    if label:  # a plain marker as the legend's handle: the configs come before the rules
        ax.plot([], [], color=line.style.color, marker=line.style.marker, markersize=7,
                linestyle="none", markerfacecolor=face, label=_name(line))  # fmt: skip
    return got, xs


def _point_name(rows: list[dict[str, Any]]) -> str:
    seqs = sorted({int(r["seq"]) for r in rows if r.get("seq") is not None})
    pairs = sorted({int(r["kv_pairs"]) for r in rows if r.get("kv_pairs") is not None})
    if len(seqs) != 1 or len(pairs) != 1:
        return ""
    return f" at n = {seqs[0]}, {pairs[0]} pairs"


def _name(line: Line) -> str:
    """The legend's name, marked as the reference where the config is it."""
    return f"{line.name} (reference)" if line.ok and is_reference(line.ok[0]) else line.name


def _ceiling(rows: list[dict[str, Any]]) -> tuple[float, float, float] | None:
    """The recall-free ceiling as the points are drawn: the mean over the seeds (each seed's
    evaluation set has its own ceiling, the same for every config), and the seeds' range."""
    by_seed: dict[Any, float] = {}
    for r in rows:
        if r.get("recall_free_ceiling"):
            seed = r.get("seed")
            by_seed[seed] = max(by_seed.get(seed, 0.0), float(r["recall_free_ceiling"]))
    if not by_seed:
        return None
    got = list(by_seed.values())
    return sum(got) / len(got), min(got), max(got)


def _ceiling_label(ceiling: tuple[float, float, float]) -> str:
    mean, lo, hi = ceiling
    spread = f"; seeds {lo:.1%}-{hi:.1%}" if round(hi - lo, 3) > 0 else ""
    return f"recall-free ceiling ({mean:.1%}{spread})"


def frontier(facet: Facet) -> Figured:
    rows = [r for r in _mqar(quality_rows(facet.df))]
    found = lines(rows, ())
    fig = new_figure(width=style.WIDTH * 1.35)
    axes = _axes(fig)
    pooled: list[Pooled] = []
    ceiling = _ceiling(rows)
    for i, (ax, (column, xlabel, binary)) in enumerate(zip(axes, PANELS, strict=True)):
        spread: list[float] = []
        for line in found:
            drawn = _point(ax, line, column, label=i == 0)
            if drawn is not None:
                if i == 0:
                    pooled.append(drawn[0])
                spread += drawn[1]
        if spread:
            if max(spread) < 2 * min(spread):  # one config, or all alike: an octave either side,
                spread += [min(spread) / 2, max(spread) * 2]  # so 128 KiB lands on a tick
            formatter = style.bytes_formatter() if binary else style.si_formatter()
            log_axis(ax, spread, formatter, axis="x", binary=binary)
        ax.set_xlabel(xlabel)
        ax.axhline(SOLVED, color="#777777", linestyle=":", linewidth=1,
                   label=f"solved ({SOLVED:.0%})" if i == 0 else None)  # fmt: skip
        if ceiling is not None:
            named = _ceiling_label(ceiling) if i == 0 else None
            ax.axhline(ceiling[0], color="#999999", linestyle="--", linewidth=1, label=named)
    axes[0].set_ylim(0, 1.04)
    axes[0].yaxis.set_major_formatter(percent())
    axes[0].set_ylabel("held-out MQAR accuracy")
    axes[1].tick_params(labelleft=False)
    title(fig, f"Recall against state and speed: MQAR{_point_name(rows)}", facet)
    legend(axes[0])
    notes, caption = _words(rows, found, pooled)
    return Figured(fig, "", notes, caption)


def _run_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What happened to the runs given that the title's run list does not name: runs read only
    for the learning-rate choice, and runs whose every cell here a later run measured again."""

    def listed(column: str) -> list[str]:
        return sorted({x for r in rows for x in str(r.get(column) or "").split(", ") if x})

    drawn = {str(r.get("run_id")) for r in rows}
    unchosen = [x for x in listed("runs_read") if x not in drawn]
    superseded = listed("runs_superseded")
    notes = []
    if unchosen:
        notes.append(f"Run{'s' if len(unchosen) > 1 else ''} {', '.join(unchosen)}: read for "
                     "the learning-rate choice, no seed chose its rate.")  # fmt: skip
    if superseded:
        notes.append(f"Not drawn: run{'s' if len(superseded) > 1 else ''} "
                     f"{', '.join(superseded)}, every cell of which at this point a later run "
                     "given measured again (a cell counts once, its latest run).")  # fmt: skip
    return notes


def _words(
    rows: list[dict[str, Any]], found: list[Line], pooled: list[Pooled]
) -> tuple[list[str], str]:
    how = hows(pooled)
    seeds = sorted({int(r["seed"]) for r in rows if r.get("seed") is not None})
    rates = {float(x) for r in rows if r.get("lr_grid") for x in str(r["lr_grid"]).split(", ")}
    rule = next((r.get("recall_free_rule") for r in rows if r.get("recall_free_rule")), None)
    notes = [
        "One point per config, seeds pooled (seeds "
        f"{', '.join(map(str, seeds)) or '-'}): y the mean held-out accuracy, bars {how}; "
        "left x the decode state per sequence after n tokens, right x the median training "
        "tokens/s.",
        "Learning rate chosen per seed on the validation split"
        + (f" from {_grid(sorted(rates))}" if rates else "")
        + ". Dashed: the recall-free ceiling, the best score on the same evaluation set of a "
        "guesser that knows the format but binds no key to its value, the mean over the seeds' "
        "sets like the points (the legend gives their range where they differ)"
        + (f" (here {RULE_WORDS.get(str(rule), rule)})" if rule else "")
        + f"; dotted: solved ({SOLVED:.0%}).",
    ]
    notes += _run_notes(rows)
    failed = [v.notice() for v in recipe_verdicts(rows) if not v.holds]
    notes += failed
    if any(line.leaks for line in found):
        notes.append("Hollow, (leaks): the trained model failed the causality checks or is not "
                     "causal; its accuracy is not a valid result.")  # fmt: skip
    caption = (
        "Held-out MQAR accuracy against the decode state per sequence and against training "
        f"throughput, one point per config, the mean over its seeds with {how} as error bars; "
        "the dashed line is the recall-free ceiling, the dotted one 0.99."
        + (" The recipe failed here: the reference did not solve it." if failed else "")
    )
    return notes, caption


register(Kind(
    "frontier", frontier, has_frontier,
    hint="frontier needs ok MQAR quality cells that recorded decode_state_bytes: run "
    "`hubbench run quality` or `hubbench run quality-capacity`",
    lacks="no ok MQAR cells with a decode state",
    modes=frozenset({"quality"}),
    split=chosen_facets,
))  # fmt: skip
