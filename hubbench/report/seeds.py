"""Quality rows pooled over seeds, for the tables and the figures (hubbench.report.plots.pareto,
curves, heatmap): configs, each task's headline metric, the Pareto front (the mean and interval
over seeds: hubbench.stats).

A config is a facet's rows that agree on every series field but `seed`. The Pareto front joins
the configs that no other config beats on both throughput and quality; a config whose trained
model is not causal (causal_check 'fail: ...' or 'not causal') is drawn hollow, labelled
"(leaks)", and kept off the front: its quality is not a valid result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.variants import display_name
from hubbench.report.load import norm_value

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Config:
    label: str
    variant: str
    attention: str | None
    rows: list[dict[str, Any]]  # its ok quality rows, one per seed
    failed: list[dict[str, Any]] = field(default_factory=list)  # its other quality rows

    @property
    def leaks(self) -> bool:
        return any(leaking(r) for r in self.rows)


def leaking(row: dict[str, Any]) -> bool:
    """Whether a quality row's trained model failed the causality checks or is not causal."""
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
    return [c for c in pool_seeds(rows) if c.rows]


def pool_seeds(rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> list[Config]:
    """Quality rows grouped into configs: rows that differ only in `seed` are one config. The
    fields that name a config are n, the series fields and `extra` (rows of one facet differ in
    no others), those that vary among the ok rows (among all when none is ok); a config keeps
    its failed rows beside its ok ones."""
    rows = [r for r in rows if r.get("mode") == "quality"]
    ok = [r for r in rows if r.get("status") == "ok"]
    fields = [f for f in schema.fields_with_role("series") if f not in ("seed", "variant")]
    fields = schema.varying(ok or rows, ["seq", *extra, *fields], nulls=False)
    out: dict[tuple, Config] = {}
    for r in rows:
        key = (r["variant"], *(r.get(f) for f in fields))
        if key not in out:
            extra = " ".join(f"{f}={r[f]}" for f in fields if r.get(f) is not None)
            name = display_name(str(r["variant"]), r.get("mixer"))
            out[key] = Config(f"{name} {extra}".strip(), str(r["variant"]), r.get("attention"), [])
        (out[key].rows if r.get("status") == "ok" else out[key].failed).append(r)
    return list(out.values())


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
