"""Heatmaps of a hub variant over hubs M x council budget k, one panel per sequence length.

One row of panels per metric: throughput, and for quality rows (mode "quality") the task's
quality (MQAR accuracy or bits per byte) and the routing precision beside it. Brighter is better
in every panel (the colour map is reversed for lower-is-better metrics). Cells that did not run
are hatched and carry their status.

A colour scale stretched over cells that differ by noise paints the noise: tokens/s that a rerun
could reorder would span the whole map. So in a throughput panel each cell is compared with the
best cell at its n (stats.metric_ratio: the 95% bootstrap interval of their ratio, rounds paired
within a run, as in speedups and the gate); a cell whose interval contains 1 reads "≈ best" and
takes the best's colour, and only cells that differ beyond their intervals take their own.
Cells that pool several seeds, or have too few samples to resample, keep their own colour.

Seeds are replicates: a (M, k, n) cell shows the mean over its ok seeds, and the quality panel
says how many of them converged. A cell whose trained model failed the causality check (or is
not causal) is hatched red and labelled LEAK, out of the colour scale: its quality is not a
valid result.

A figure's file stem is the variant plus whatever else tells the facet's grids apart (C=16 vs
C=32, causal, ...), and the task for quality rows, so no two figures of a run share a name.
The panels themselves are drawn by hubbench.report.plots.heatgrid.
"""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.variants import is_router
from hubbench.report import format as fmt
from hubbench.report.format import fmt_seq
from hubbench.report.load import cell_keys, fmt_value, norm_value, records
from hubbench.report.plots.figure import Figured, context, new_figure, title
from hubbench.report.plots.heatgrid import Cell, Key, Metric, draw_panels
from hubbench.report.plots.registry import Kind, register
from hubbench.report.ratios import metric_ratio
from hubbench.report.seeds import quality_metric
from hubbench.report.series import SYMBOLS, Facet, series_fields

if TYPE_CHECKING:
    import pandas as pd

# pooled into one cell (replicates), or the grid's own axes and panels
POOLED = ("hubs", "topk", "seed")
TASK_TEXT = {"mqar": "MQAR", "bytes": "byte LM"}
TIME_METRICS = ("tokens_per_s",)  # panels whose cells have rounds to tell noise from a difference
# what metric_ratio reads from a row: the value, its rounds, and whether two rows pair
RATIO_FIELDS = ("run_id", "time_median_s", "samples_s", "round_samples_s", "round_sessions")
TIE_TEXT = (
    "≈ best: the cell's tokens/s is within noise of the best cell at its n (the 95% bootstrap "
    "interval of their ratio, rounds paired, contains 1), so it takes the best's colour; only "
    "cells that differ beyond their intervals take their own."
)


def _quality(df: pd.DataFrame) -> bool:
    return "mode" in df.columns and len(df) > 0 and bool((df["mode"] == "quality").all())


def _grid_fields(hub: pd.DataFrame) -> list[str]:
    """The fields that tell one grid from another: every series field but M, k and the seed
    (seeds are replicates, pooled into each cell). For quality rows `causal` too, as long as no
    cell then holds both a causal and a non-causal model: the leaking config stays in its grid,
    marked, rather than vanish into a grid of its own."""
    others = [f for f in series_fields(hub) if f not in POOLED]
    if "causal" in others and _quality(hub):
        rest = [f for f in others if f != "causal"]
        keys = cell_keys(hub, [*rest, "hubs", "topk", "seq"])
        if all(len({norm_value(v) for v in g["causal"]}) <= 1 for _, g in hub.groupby(keys)):
            others = rest
    return others


def heat_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per hub variant (and other hub settings): (file stem, the rows of a hubs x topk grid), for
    grids with >= 2 cells. The stem names the variant and the settings that differ between the
    grids, so two grids never share a file name."""
    hub = df[[is_router(str(v)) for v in df["variant"]]]
    if len(hub) == 0:
        return []
    others = _grid_fields(hub)
    found = []
    for _, g in hub.groupby(cell_keys(hub, others), sort=False):
        combos = {(norm_value(a), norm_value(b)) for a, b in zip(g["hubs"], g["topk"], strict=True)}
        combos.discard((None, None))
        if len(combos) >= 2 and len(g[g["status"] == "ok"]):
            found.append(g)
    firsts = [records(g.iloc[:1], others)[0] for g in found]
    apart = [f for f in others if f != "variant" and len({repr(r.get(f)) for r in firsts}) > 1]
    out: list[tuple[str, pd.DataFrame]] = []
    for g, first in zip(found, firsts, strict=True):
        stem = "-".join([str(g["variant"].iloc[0]), *(_slug(f, first.get(f)) for f in apart)])
        taken = [s for s, _ in out]
        if stem in taken:  # settings that read alike once made file-safe: number them
            stem += f"-{sum(s == stem or s.startswith(stem + '-') for s in taken) + 1}"
        out.append((stem, g))
    return out


def _slug(name: str, value: Any) -> str:
    """'C16', 'M4' for the paper's symbols, 'causal_False' for other fields, the run id bare."""
    prefix = "" if name == "run_id" else SYMBOLS.get(name, f"{name}_")
    return re.sub(r"[^A-Za-z0-9.]+", "_", f"{prefix}{fmt_value(name, value)}").strip("_")


def heatmaps(facet: Facet) -> list[Figured]:
    out = []
    for stem, g in heat_groups(facet.df):
        task = _task(g)
        if task and "task" not in facet.split:  # else the facet's slug names it
            stem = f"{stem}-{task}"
        out.append(_heatmap(facet, str(g["variant"].iloc[0]), stem, g))
    return out


def _task(g: pd.DataFrame) -> str | None:
    if not _quality(g) or "task" not in g.columns:
        return None
    tasks = {norm_value(v) for v in g["task"]} - {None}
    return str(tasks.pop()) if len(tasks) == 1 else None


def _metrics(g: pd.DataFrame) -> list[Metric]:
    if not _quality(g):
        return [Metric("tokens_per_s", "throughput (tokens/s)", True)]
    task = _task(g) or "mqar"
    column, bar, higher = quality_metric(task)
    out = [
        Metric("tokens_per_s", "train tokens/s", True, "training throughput (tokens/s)"),
        Metric(column, "bits per byte" if column == "bits_per_byte" else "MQAR accuracy", higher,
               bar, fmt.bits if column == "bits_per_byte" else fmt.fraction),
    ]  # fmt: skip
    ok = g[g["status"] == "ok"]
    if "routing_precision" in g.columns and ok["routing_precision"].notna().any():
        out.append(Metric("routing_precision", "routing precision", True, "", fmt.fraction))
    return out


def _cells(g: pd.DataFrame) -> dict[tuple[int, int, int], Cell]:
    quality = _quality(g)
    out: dict[tuple[int, int, int], Cell] = {}
    wanted = [*POOLED, "seq", "status", "converged", "causal_check", *RATIO_FIELDS]
    for r in records(g, dict.fromkeys([*wanted, *(m.column for m in _metrics(g))])):
        if r.get("hubs") is None or r.get("topk") is None:
            continue
        c = out.setdefault((int(r["hubs"]), int(r["topk"]), int(r["seq"])), Cell(quality=quality))
        (c.ok if r["status"] == "ok" else c.failed).append(r)
    return out


def _heatmap(facet: Facet, variant: str, stem: str, g: pd.DataFrame) -> Figured:
    hubs = sorted({int(norm_value(v)) for v in g["hubs"] if norm_value(v) is not None})
    topk = sorted({int(norm_value(v)) for v in g["topk"] if norm_value(v) is not None})
    seqs = sorted({int(v) for v in g["seq"]})
    metrics = _metrics(g)
    cells = _cells(g)
    quality = _quality(g)
    ties = {m.column: _ties(cells, m) for m in metrics}
    tied = any(ties.values())
    seeds = max((len(c.ok) + len(c.failed) for c in cells.values()), default=1)
    cols = min(len(seqs), 3)
    rows = -(-len(seqs) // cols) * len(metrics)
    panel_w, panel_h = 0.62 * len(topk) + 1.4, 0.42 * len(hubs) + 1.25
    width = min(130, round((cols * panel_w + 2.0) * 72 / (7.5 * 0.52)))  # characters per line
    text = _note(g, cells, quality, seeds, width, tied)
    extra = max(0, text.count("\n") - 1) * 0.13  # inches for notes longer than two lines
    fig = new_figure(cols * panel_w + 2.0, rows * panel_h + 1.2 + extra)
    grid = fig.add_gridspec(
        rows, cols, hspace=0.6, wspace=0.45, left=0.9 / fig.get_figwidth(),
        right=1 - 1.5 / fig.get_figwidth(), top=1 - 0.95 / fig.get_figheight(),
        bottom=(0.75 + extra) / fig.get_figheight(),
    )  # fmt: skip
    for mi, metric in enumerate(metrics):
        axes = [
            fig.add_subplot(grid[mi * rows // len(metrics) + k // cols, k % cols])
            for k in range(len(seqs))
        ]
        draw_panels(fig, axes, cells, seqs, hubs, topk, metric, seeds > 1 and mi == 1,
                       ties[metric.column])  # fmt: skip
    title(fig, _what(variant, g), facet)
    fig.text(0.02, 0.01, text, fontsize=7.5, color="#333333")
    caption = _caption(facet, variant, seqs, metrics, cells, quality, seeds, tied)
    return Figured(fig, stem, [], caption)


def _what(variant: str, g: pd.DataFrame) -> str:
    """The title: the variant over M x k, its other hub settings, and the task."""
    others = [
        f"{SYMBOLS.get(f, f)}={norm_value(g[f].iloc[0])}"
        for f in ("neighbours", "chunk")
        if f in g.columns and norm_value(g[f].iloc[0]) is not None
    ]
    task = _task(g)
    what = f"{variant} over hubs M × topk k" + (f" ({', '.join(others)})" if others else "")
    if task:
        what += f" · {TASK_TEXT.get(task, task)}"
    return what


def _caption(
    facet: Facet, variant: str, seqs: list[int], metrics: list[Metric],
    cells: dict[Key, Cell], quality: bool, seeds: int, tied: bool,
) -> str:  # fmt: skip
    """What the figure shows, for the report: its metrics, panels, pooling, ties and gaps."""
    panels = (
        f"one panel per n ({', '.join(fmt_seq(n) for n in seqs)})"
        if len(seqs) > 1
        else (f"at n = {fmt_seq(seqs[0])}")
    )
    missing = any(not c.ok for c in cells.values())
    if quality:
        shown = ", ".join(m.bar or m.label for m in metrics)
        caption = (
            f"{shown[0].upper()}{shown[1:]} of {variant} over hubs M × council budget k, "
            f"{panels}, {context(facet)}; "
            + (f"each cell is the mean over its seeds (up to {seeds}), " if seeds > 1 else "")
            + "one colour scale per metric, brighter is better"
            + (
                "; ≈ best cells are within noise of the best at their n and take its colour"
                if tied
                else ""
            )
            + ("; LEAK cells failed the causality check" if _leaks(cells) else "")
            + ("; hatched cells did not run." if missing else ".")
        )
    else:
        caption = (
            f"Median throughput (tokens/s) of {variant} over hubs M × council budget k, {panels}, "
            f"{context(facet)}; one colour scale, brighter is better"
            + (
                "; ≈ best cells are within noise of the best at their n (95% bootstrap interval "
                "of the ratio) and take its colour"
                if tied
                else ""
            )
            + ("; hatched cells did not run." if missing else ".")
        )
    return caption


def _ties(cells: dict[Key, Cell], metric: Metric) -> dict[Key, Key]:
    """Cell -> the best cell at its n, for that best and each cell within noise of it (module
    docstring); empty for a metric without rounds, or an n where a cell pools several seeds."""
    if metric.column not in TIME_METRICS:
        return {}
    column = schema.metric(metric.column)
    sign = 1 if metric.higher else -1
    out: dict[Key, Key] = {}
    for seq in sorted({key[2] for key in cells}):
        here = {
            key: c
            for key, c in cells.items()
            if key[2] == seq and c.ok and not c.leak and c.mean(metric.column) is not None
        }
        if len(here) < 2 or any(len(c.ok) > 1 for c in here.values()):
            continue
        best = max(here, key=lambda key: sign * (here[key].mean(metric.column) or 0.0))
        same = [key for key, c in here.items()
                if key != best and _within_noise(column, c.ok[0], here[best].ok[0])]  # fmt: skip
        out.update({key: best for key in ([best, *same] if same else [])})
    return out


def _within_noise(column: Any, row: dict[str, Any], best: dict[str, Any]) -> bool:
    ci = metric_ratio(column, row, best)
    return ci is not None and ci.bootstrapped and ci.excludes(1.0) == 0


def _leaks(cells: dict[tuple[int, int, int], Cell]) -> list[tuple[tuple[int, int, int], Cell]]:
    return [(key, c) for key, c in sorted(cells.items()) if c.leak]


def _where(key: tuple[int, int, int]) -> str:
    m, k, n = key
    return f"M={m} k={k} n={fmt_seq(n)}"


def _note(g: pd.DataFrame, cells: dict[tuple[int, int, int], Cell], quality: bool,
          seeds: int, width: int, tied: bool = False) -> str:  # fmt: skip
    """The text under the panels: colour direction, noise, seeds, leaks and what did not run."""
    text = "Brighter is better in every panel." + (f" {TIE_TEXT}" if tied else "")
    if seeds > 1:  # one seed: a cell is that seed's value, nothing pooled to explain
        given = g["converge_threshold"] if "converge_threshold" in g.columns else []
        threshold = next((str(v) for v in given if norm_value(v) is not None),
                         "the task's threshold")  # fmt: skip
        text += f" Each cell: the mean over its ok seeds (up to {seeds})"
        text += f"; 'c/n conv.': seeds converged ({threshold})." if quality else "."
    if quality:
        leaks = _leaks(cells)
        if leaks:
            checks = [f"{_where(key)}: {_checks(c)}" for key, c in leaks]
            text += (" LEAK (red hatching, out of the colour scale): the trained model did not "
                     "pass the causality check, so its numbers are not a valid result: "
                     + "; ".join(checks) + ".")  # fmt: skip
    by_seed = len({repr(norm_value(v)) for v in g["seed"]}) > 1 if "seed" in g.columns else False

    def gone(key: tuple[int, int, int], c: Cell) -> str:
        statuses = dict.fromkeys(str(r["status"]) for r in c.failed)
        parts = []
        for status in statuses:
            seeds = [str(r.get("seed")) for r in c.failed if str(r["status"]) == status]
            which = f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})" if by_seed else ""
            parts.append(status + which)
        return f"{_where(key)}: {', '.join(parts)}"

    dead = [gone(key, c) for key, c in cells.items() if c.failed and not c.ok]
    lost = [gone(key, c) for key, c in cells.items() if c.failed and c.ok]
    if dead:
        text += " Hatched cells did not run: " + "; ".join(dead) + "."
    if lost:
        text += " Seeds that did not run (their cells show the rest): " + "; ".join(lost) + "."
    return textwrap.fill(text, width)


def _checks(c: Cell) -> str:
    """The non-passing causality verdicts of a cell, with their seeds when it has several."""
    bad = [r for r in c.ok if r.get("causal_check") != "pass"]
    out = []
    for check in dict.fromkeys(str(r.get("causal_check") or "not checked") for r in bad):
        seeds = [
            str(r.get("seed")) for r in bad if str(r.get("causal_check") or "not checked") == check
        ]
        of = f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)} of {len(c.ok)})"
        out.append(check + (of if len(c.ok) > 1 else ""))
    return ", ".join(out)


def has_heatmap(df: pd.DataFrame) -> bool:
    return bool(heat_groups(df))


register(Kind(
    "heatmap", heatmaps, has_heatmap,
    hint="heatmap needs several hubs x topk values: run `hubbench run hubs`",
    lacks="no hubs × topk grid",
))  # fmt: skip
