"""The report's headline: per hub variant, where it wins, by how much, against which baseline.

For each hub series of each figure facet (hubbench.report.series: same device, dtype, mode,
batch and shape), against two baselines of its own variant (`variants.baseline_of`):
- native: the baseline with naive attention (transformer · naive for hub-gpt);
- optimised: of the baseline's SDPA / flash backends that ran, the fastest at the most n.
Each side gives the best speedup (tokens/s ratio with its 95% CI, the largest point ratio over
the n both measured ok), the crossover (hubbench.report.fits.crossover, as the scaling figure's
note), and the n where the hub loses (the whole CI below 1). Every ratio is
`stats.metric_ratio`, the one that compare and the ratio gate use, so the headline's numbers are
theirs for the same two cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.report import format as fmt
from hubbench.report.fits import Crossover, crossover
from hubbench.report.format import fmt_seq
from hubbench.report.peaks import too_low_peaks
from hubbench.report.ratios import metric_ratio
from hubbench.stats import RatioCI

if TYPE_CHECKING:
    import pandas as pd

    from hubbench.report.series import Series

METRIC = "tokens_per_s"


@dataclass(frozen=True)
class Point:
    seq: int
    ci: RatioCI  # hub tokens/s over baseline tokens/s at this n
    stale: bool = False  # a side beat its speed of light: the ideal rests on a too-low peak


@dataclass(frozen=True)
class Versus:
    """One hub series against one baseline series, over the n both measured."""

    baseline: str  # the baseline series' label, e.g. 'transformer · sdpa:flash'
    points: tuple[Point, ...]  # n where both cells are ok, ascending
    crossover: Crossover | None  # None: fewer than two common n
    not_compared: tuple[str, ...] = ()  # 'n=16k: baseline oom'

    @property
    def best(self) -> Point | None:
        return max(self.points, key=lambda p: p.ci.point, default=None)

    @property
    def loses(self) -> tuple[int, ...]:
        """n where the whole CI lies below 1 (a point estimate alone claims nothing)."""
        return tuple(p.seq for p in self.points if p.ci.bootstrapped and p.ci.excludes(1.0) < 0)


@dataclass(frozen=True)
class HeadlineRow:
    facet: str  # 'NVIDIA H200 · bf16 · forward · batch 8', with the shape when facets differ
    hub: str  # the hub series' label
    native: Versus | None
    optimised: Versus | None


def headline(df: pd.DataFrame) -> list[HeadlineRow]:
    """One row per hub series that has a baseline of its variant in its facet."""
    from hubbench.report.series import build_series, facets, speedup_pairs, title_parts

    found = facets(df)
    out = []
    for facet in found:
        main, shape = title_parts(facet)
        where = f"{main} · {shape}" if len(found) > 1 and shape else main
        by_hub: dict[int, list[tuple[Series, str]]] = {}
        hubs: dict[int, Series] = {}
        for hub, base, kind in speedup_pairs(build_series(facet.df)):
            by_hub.setdefault(id(hub), []).append((base, kind))
            hubs[id(hub)] = hub
        for key, bases in by_hub.items():
            hub = hubs[key]
            native = [b for b, kind in bases if kind == "native"]
            optimised = [b for b, kind in bases if kind == "optimised"]
            out.append(
                HeadlineRow(
                    facet=where,
                    hub=hub.label,
                    native=versus(hub, native[0]) if native else None,
                    optimised=versus(hub, fastest(optimised)) if optimised else None,
                )
            )
    return out


def fastest(bases: Sequence[Series]) -> Series:
    """The series with the highest tokens/s at the most n (ties: the first listed)."""
    wins = [0] * len(bases)
    seqs = sorted({int(s) for b in bases for s in b.ok["seq"]})
    for seq in seqs:
        rates = [_rate(b, seq) for b in bases]
        ran = [(r, i) for i, r in enumerate(rates) if r is not None]
        wins[max(ran, key=lambda t: (t[0], -t[1]))[1]] += 1
    return bases[max(range(len(bases)), key=lambda i: (wins[i], -i))]


def _rate(series: Series, seq: int) -> float | None:
    rows = series.ok[series.ok["seq"] == seq]
    return None if rows.empty else float(rows[METRIC].iloc[0])


def _row_at(series: Series, seq: int) -> Any | None:
    rows = series.rows[series.rows["seq"] == seq]
    return None if rows.empty else rows.iloc[0]


def versus(hub: Series, base: Series) -> Versus:
    """`hub` over `base` at every n both ran, with the crossover of their step times."""
    metric = schema.metric(METRIC)
    points, gaps = [], []
    times: list[tuple[int, float, float]] = []
    for seq in sorted({int(s) for s in hub.rows["seq"]} & {int(s) for s in base.rows["seq"]}):
        h, b = _row_at(hub, seq), _row_at(base, seq)
        if h["status"] != "ok" or b["status"] != "ok":
            who, status = ("hub", h["status"]) if h["status"] != "ok" else ("baseline", b["status"])
            gaps.append(f"n={fmt_seq(seq)}: {who} {status}")
            continue
        ci = metric_ratio(metric, h, b)
        if ci is None:
            continue
        points.append(Point(seq, ci, bool(too_low_peaks(h) or too_low_peaks(b))))
        times.append((seq, float(h["time_median_s"]), float(b["time_median_s"])))
    cross = crossover(*zip(*times, strict=True)) if len(times) >= 2 else None
    return Versus(base.label, tuple(points), cross, tuple(gaps))


HEAD = ("hub", "against", "best speedup [95% CI]", "ideal", "at n", "hub faster from",
        "hub slower at (CI below 1)", "not compared")  # fmt: skip
NOTE = (
    "Speedup: hub tokens/s over the baseline's, the cell otherwise the same (> 1: the hub is "
    "faster), against its variant's native baseline (naive attention) and the fastest optimised "
    "one (SDPA / flash) that ran; best over the n both measured. Brackets: 95% CI from the "
    "two-stage bootstrap, rounds paired within the run, as in `hubbench compare` and the ratio "
    "gate. Ideal: the same ratio at both cells' speed of light (the step time their FLOPs and "
    "bytes allow at the measured peaks, docs/measurement.md): how much of it the code delivers "
    f"({fmt.STALE_IDEAL} where a cell beat its speed of light: its peak is too low). The "
    "crossover is where the hub's step time drops below the baseline's and stays below."
)


def ratio_lines(rows: Sequence[HeadlineRow]) -> list[str]:
    """'hub-gpt / transformer · sdpa:flash-cpu at n=16k: 3.90× measured, 5.12× ideal', one per
    hub and baseline at the hub's best n: the measured ratio read against its ceiling."""
    out = []
    for r in rows:
        for vs in (r.native, r.optimised):
            best = None if vs is None else vs.best
            if vs is None or best is None:
                continue
            where = f"{r.facet}: " if len({x.facet for x in rows}) > 1 else ""
            out.append(
                f"{where}{r.hub} / {vs.baseline} at n={fmt_seq(best.seq)}: "
                f"{fmt.measured_and_ideal(best.ci, best.stale)}"
            )
    return out


def table(rows: Sequence[HeadlineRow]) -> tuple[list[str], list[list[str]]]:
    """(header, lines) as plain text, one line per hub and baseline; a figure column when the
    run has several facets. The HTML report and the terminal render these same cells."""
    facets = len({r.facet for r in rows}) > 1
    lines = []
    for r in rows:
        for kind, vs in (("native", r.native), ("optimised", r.optimised)):
            if vs is None:
                continue
            best = vs.best
            lines.append([
                *([r.facet] if facets else []),
                r.hub,
                f"{kind}: {vs.baseline}",
                fmt.ratio(None if best is None else best.ci),
                fmt.ideal(None if best is None else best.ci, best is not None and best.stale),
                "-" if best is None else fmt_seq(best.seq),
                "-" if vs.crossover is None else vs.crossover.text(),
                ", ".join(fmt_seq(n) for n in vs.loses) or "none",
                "; ".join(vs.not_compared) or "-",
            ])  # fmt: skip
    return [*(["figure"] if facets else []), *HEAD], lines


# ----------------------------------------------------------------------------- quality


def quality_headline(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The MQAR lines of a report's headline (issue 30), one per point (task, n, kv pairs,
    vocab, budget): where the reference did not solve the point in two thirds of its seeds,
    only its "recipe failed ..." notice, as the run table and `gate` print it (no comparison
    is published there); where it holds, each config's mean held-out accuracy over its seeds
    at the learning rate chosen on validation, the seeds that solved it and the recall-free
    ceiling it is read against."""
    from hubbench.report.seeds import is_reference, point_of, pool_seeds, recipe_verdicts

    mqar = [r for r in rows if r.get("mode") == "quality" and str(r.get("task")).startswith("mqar")]
    points: dict[tuple, list[dict[str, Any]]] = {}
    for r in mqar:
        points.setdefault(point_of(r), []).append(r)
    out: list[str] = []
    for verdict in recipe_verdicts(mqar):  # named against each other: what tells them apart
        here = points[verdict.point]
        if not verdict.holds:
            out.append(verdict.notice())
            continue
        configs = sorted(pool_seeds(here), key=lambda c: not any(map(is_reference, c.rows)))
        parts = [_config_text(c) for c in configs if c.rows]
        ceilings = [float(r["recall_free_ceiling"]) for r in here if r.get("recall_free_ceiling")]
        tail = f"; recall-free ceiling {max(ceilings):.3f}" if ceilings else ""
        out.append(f"{verdict.where}: " + ", ".join(parts) + tail)
    return out


def _config_text(config: Any) -> str:
    from hubbench.stats import wilson_interval

    got = [float(r["eval_accuracy"]) for r in config.rows if r.get("eval_accuracy") is not None]
    seeds = len(config.rows) + len(config.failed)
    solved = sum(a >= 0.99 for a in got)
    low, high = wilson_interval(solved, seeds)
    mean = f"{sum(got) / len(got):.3f}" if got else "-"
    return f"{config.label} {mean} ({solved}/{seeds} seeds solved, 95% {low:.2f}-{high:.2f})"
