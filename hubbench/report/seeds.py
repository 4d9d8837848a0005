"""Quality rows pooled over seeds, for the tables and the figures (hubbench.report.plots.pareto,
curves, heatmap, frontier): configs, each task's headline metric, the Pareto front (the mean and
interval over seeds: hubbench.stats), the learning-rate choice and the recipe's verdict.

MQAR's learning rate is a sweep axis (`lr`), chosen per config and seed as Zoology does (the
best of a grid), but on the validation split: `select_lr` keeps, of the rows that differ only in
`lr`, the one with the highest `val_accuracy` (then the fewest updates to solve, then the lower
rate), and reads nothing measured on the evaluation set. Pooling applies it first, so every
table and figure that pools seeds reports the chosen rate's evaluation. Where pooled runs
measured the same (config, seed, rate) again, only the latest measurement is a candidate: a
rerun is not one more try to keep the best of.

The recipe holds at an MQAR point (task, n, kv pairs, vocab) when the task's reference
(REFERENCE: Zoology's attention baseline, 2 layers, one head, no MLP) reaches 0.99 held-out
accuracy in at least two thirds of its seeds; where it does not, the run's comparisons at that
point say nothing about the mixers (`recipe_verdicts`, `recipe_failures`).

A config is a facet's rows that agree on every series field but `seed`. The Pareto front joins
the configs that no other config beats on both throughput and quality; a config whose trained
model is not causal (causal_check 'fail: ...' or 'not causal') is drawn hollow, labelled
"(leaks)", and kept off the front: its quality is not a valid result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.quality import MQAR_TASKS
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


SOLVED = 0.99  # held-out accuracy that counts as solved (hubbench.quality.train.MQAR_THRESHOLD)
RECIPE_SHARE = 2 / 3  # the share of the reference's seeds that must solve
# Zoology's attention baseline: the reference every MQAR run is read against (the quality suites
# name it in their gate rules); the other fields (d_model, seq, ...) are the run's
REFERENCE: dict[str, Any] = {"variant": "transformer", "mlp_ratio": 0.0, "n_layers": 2,
                             "n_heads": 1}  # fmt: skip


def _is_mqar(row: Mapping[str, Any]) -> bool:
    return row.get("mode") == "quality" and row.get("task") in MQAR_TASKS


def _key(row: Mapping[str, Any], leave_out: Sequence[str]) -> tuple:
    return tuple(
        (k, repr(v)) for k, v in sorted(row.items()) if k in _CELL_FIELDS and k not in leave_out
    )


_ROLES = ("series", "figure", "x")
_CELL_FIELDS = frozenset(
    ("variant", "mixer", *(f for r in _ROLES for f in schema.fields_with_role(r)))
)


def _choice_order(row: Mapping[str, Any]) -> tuple:
    """Sort key of a candidate: best validation accuracy, then the fewest updates to solve,
    then the lower rate. Only validation-split values: the evaluation set is never read."""
    val = row.get("val_accuracy")
    solve = row.get("updates_to_solve")
    return (
        -(float(val) if val is not None else -1.0),
        float(solve) if solve is not None else math.inf,
        float(row.get("lr") or 0.0),
    )


def select_lr(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each MQAR (config, seed)'s learning rates reduced to the chosen one (the
    module docstring); other rows unchanged. A chosen row gets `lr_grid` (every rate tried,
    ascending); a (config, seed) with no ok row keeps all its rows (its failures stay seen).
    Runs pooled: a (config, seed, rate) measured in several runs counts once, its latest
    measurement (`latest_reruns`), so that reruns are not extra tries to pick the best of."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        if _is_mqar(r):
            groups.setdefault(_key(r, ("lr",)), []).append(r)
        else:
            out.append(r)
    for group in map(latest_reruns, groups.values()):
        ok = [r for r in group if r.get("status") == "ok"]
        if not ok:
            out.extend(group)
            continue
        best = min(ok, key=_choice_order)
        grid = sorted({float(r["lr"]) for r in group if r.get("lr") is not None})
        out.append({**best, "lr_grid": grid})
    return out


def latest_reruns(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of rows that are one cell (every cell field alike) measured in several runs, the latest
    run's (by utc_time, then run id); rows of one run are all kept, in their order."""
    runs: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        runs.setdefault(_key(r, ()), {}).setdefault(str(r.get("run_id")), []).append(r)

    def when(group: list[dict[str, Any]]) -> tuple:
        return max(str(r.get("utc_time") or "") for r in group), str(group[0].get("run_id"))

    keep = {id(r) for by_run in runs.values() for r in max(by_run.values(), key=when)}
    return [r for r in rows if id(r) in keep]


def is_reference(row: Mapping[str, Any]) -> bool:
    """Whether a quality row is its task's reference (REFERENCE's fields, mlp_ratio 0)."""
    for k, want in REFERENCE.items():
        got = row.get(k)
        if got is None or (got != want if isinstance(want, str) else float(got) != float(want)):
            return False
    return True


NOT_RESULTS = "the comparisons at that point are not results"  # what a failed recipe means


@dataclass(frozen=True)
class Recipe:
    """The reference's result at one MQAR point of a run."""

    where: str  # 'mqar n=128 kv_pairs=8', with vocab, budget, ... when the run's points differ
    seeds: int  # reference rows (seeds), failed ones included
    solved: int  # of them, held-out accuracy >= SOLVED
    point: tuple = ()  # its POINT_FIELDS values

    @property
    def needed(self) -> int:
        """The seeds that must solve for the recipe to hold."""
        return math.ceil(RECIPE_SHARE * self.seeds - 1e-9)

    @property
    def holds(self) -> bool:
        return self.seeds > 0 and self.solved >= self.needed

    def line(self) -> str:
        """'recipe failed at mqar n=64 kv_pairs=4: the reference (...) solved 1 of 3 seeds
        (2 needed ...)'; a point without reference rows says so."""
        verdict = "recipe holds" if self.holds else "recipe failed"
        if not self.seeds:
            return f"{verdict} at {self.where}: the reference ({REFERENCE_TEXT}) did not run there"
        return (
            f"{verdict} at {self.where}: the reference ({REFERENCE_TEXT}) solved {self.solved} "
            f"of {self.seeds} seeds ({self.needed} needed at held-out accuracy >= {SOLVED})"
        )

    def notice(self) -> str:
        """The failed recipe's line as the run table, the report and `gate` print it."""
        return f"{self.line()}: {NOT_RESULTS}"


REFERENCE_TEXT = "attention, 2 layers, 1 head, no MLP"
POINT_FIELDS = ("task", "seq", "kv_pairs", "vocab", "train_updates", "batch", "d_model")
_NAMED = {"seq": "n"}  # a point's field as the run table heads it


def point_of(row: Mapping[str, Any]) -> tuple:
    """The MQAR point (POINT_FIELDS values) a quality row belongs to."""
    return tuple(row.get(f) for f in POINT_FIELDS)


def recipe_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[Recipe]:
    """One verdict per MQAR point of the rows (POINT_FIELDS), from its reference rows after
    the learning-rate choice; a point without reference rows has 0 seeds: it does not hold. A
    point is named by its task, n and kv pairs, and by the other POINT_FIELDS that differ
    between the rows' points."""
    rows = select_lr([dict(r) for r in rows if _is_mqar(r)])
    points: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        points.setdefault(point_of(r), [])
        if is_reference(r):
            points[point_of(r)].append(r)
    shown = [(i, _NAMED.get(f, f)) for i, f in enumerate(POINT_FIELDS[1:], 1)
             if f in ("seq", "kv_pairs") or len({p[i] for p in points}) > 1]  # fmt: skip
    out = []
    for point, refs in points.items():
        where = " ".join(f"{name}={point[i]}" for i, name in shown)
        solved = sum(
            1 for r in refs if r.get("status") == "ok" and (r.get("eval_accuracy") or 0) >= SOLVED
        )
        out.append(Recipe(f"{point[0]} {where}", len(refs), solved, point))
    return out


def recipe_failures(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line per MQAR point whose recipe failed; empty when every point holds."""
    return [r.line() for r in recipe_verdicts(rows) if not r.holds]


def recipe_notices(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """recipe_failures' lines with what they mean (NOT_RESULTS): one per failed point, as the
    run table, the over-seeds table, the report's headline and `gate` print them."""
    return [r.notice() for r in recipe_verdicts(rows) if not r.holds]


def configs(df: pd.DataFrame) -> list[Config]:
    """The facet's ok quality rows grouped into configs (every series field but seed)."""
    rows = [{k: norm_value(v) for k, v in r.items()} for _, r in df.iterrows()]
    return [c for c in pool_seeds(rows) if c.rows]


def pool_seeds(rows: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> list[Config]:
    """Quality rows grouped into configs: rows that differ only in `seed` are one config. The
    fields that name a config are n, the series fields and `extra` (rows of one facet differ in
    no others), those that vary among the ok rows (among all when none is ok); a config keeps
    its failed rows beside its ok ones."""
    rows = select_lr([r for r in rows if r.get("mode") == "quality"])
    ok = [r for r in rows if r.get("status") == "ok"]
    fields = [f for f in schema.fields_with_role("series") if f not in ("seed", "variant")]
    chosen = ("lr",) if any(_is_mqar(r) for r in rows) else ()  # chosen per seed: not a name
    named = [f for f in ("seq", *extra, *fields) if f not in chosen]
    fields = schema.varying(ok or rows, named, nulls=False)
    out: dict[tuple, Config] = {}
    for r in rows:
        key = (r["variant"], *(r.get(f) for f in fields))
        if key not in out:
            extra = " ".join(f"{_NAMED.get(f, f)}={r[f]}" for f in fields if r.get(f) is not None)
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
