"""What the quality figures share (recall, convergence, pareto, curves): the quality rows of a
facet grouped into lines, one per config, and each point's seeds pooled.

Seeds are replicates: a line is one config (every series field but `seed` and what the x axis
sweeps) and each of its points pools the config's seeds (the mean with a t-interval from 3+
seeds, else min-max: hubbench.stats.mean_interval). A cell that failed keeps its place, an x at
the foot of the axes in its line's colour, named in a footnote; a config whose trained model is
not causal is drawn hollow and labelled "(leaks)".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.variants import display_name, display_order
from hubbench.report import style
from hubbench.report.format import fmt_seq
from hubbench.report.load import fmt_value, label_fields, norm_value, records
from hubbench.report.plots.figure import Figured
from hubbench.report.seeds import leaking
from hubbench.report.series import SYMBOLS, Facet, facets, sortable
from hubbench.stats import mean_interval

if TYPE_CHECKING:
    import pandas as pd


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
        return any(leaking(r) for r in self.ok)

    @property
    def name(self) -> str:
        """The legend's name: the label, marked "(leaks)" when the trained model is not causal."""
        return f"{self.label} (leaks)" if self.leaks else self.label


@dataclass(frozen=True)
class Pooled:
    """A line's value at one x: the mean over its seeds with the interval `how` names."""

    mean: float
    low: float
    high: float
    how: str  # "95% t" (3+ seeds) or "min-max"
    n: int


def floor_name(rows: Iterable[dict[str, Any]]) -> str:
    """What an MQAR row's `baseline_quality` is: the recall-free ceiling (the best guesser that
    binds no key to its value, issue 30) where the rows record its rule, chance in older runs."""
    ceiling = any(norm_value(r.get("recall_free_rule")) is not None for r in rows)
    return "recall-free ceiling" if ceiling else "chance"


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
        return (display_order(variant), variant, *(sortable(first.get(f)) for f in fields))

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


def gap_note(gaps: list[str], where: str = "x at the foot of the axes") -> list[str]:
    if not gaps:
        return []
    more = f"; +{len(gaps) - 8} more" if len(gaps) > 8 else ""
    return [f"Not measured ({where}): " + "; ".join(gaps[:8]) + more + "."]


def leak_note(found: Iterable[Line], what: str) -> list[str]:
    """The note on hollow points, where a line leaks: `what` (its accuracy, ...) is not valid."""
    if not any(line.leaks for line in found):
        return []
    return [f"Hollow, (leaks): the trained model failed the causality checks or is not causal, "
            f"so its {what} is not a valid result."]  # fmt: skip


def hows(pooled: Iterable[Pooled]) -> str:
    used = sorted({p.how for p in pooled})
    words = {"95% t": "95% t-intervals (3+ seeds)", "min-max": "min-max (fewer than 3 seeds)"}
    return " or ".join(words[h] for h in used) or "-"


def facet_task(facet: Facet) -> str:
    task = facet.fixed.get("task")
    if task is None:
        task = next((r.get("task") for r in quality_rows(facet.df) if r.get("task")), None)
    return str(task or "mqar")


def percent() -> Any:
    """Fractions as percentages, with as many decimals as the axis' tick step needs."""
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=None)
