"""Scaling exponents and crossover points from (n, step time) series.

The exponent is a least-squares slope of log t against log n over the upper part of the range:
at small n fixed costs (launches, the LM head) hide the mixer's order, so a fit over every point
would flatter attention. Its interval refits the slope on every replicate of the two-stage
bootstrap (hubbench.stats), with the points' rounds paired when they come from one run.
The crossover is where the hub's step time drops below the baseline's and stays below to the end
of the measured range, interpolated in log-log between the bracketing points.

Both need MIN_POINTS sequence lengths: through two points any line fits exactly, so a slope or an
interpolated crossing from two would be drawn with more confidence than the data holds. With two,
there is no exponent, and a crossing is only bracketed ("between 256 and 2k").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hubbench.report.format import fmt_seq
from hubbench.stats import (
    CONFIDENCE,
    RESAMPLES,
    Rounds,
    bootstrap_medians,
    n_samples,
    percentile_interval,
)

MIN_POINTS = 3  # sequence lengths a fitted exponent or an interpolated crossover needs


@dataclass(frozen=True)
class Fit:
    exponent: float
    n_lo: int  # fitted range
    n_hi: int
    low: float | None = None  # confidence interval of the exponent (None: no samples)
    high: float | None = None
    points: int = 0

    def text(self) -> str:
        """'0.98 [0.95, 1.02]'."""
        if self.low is None or self.high is None:
            return f"{self.exponent:.2f}"
        return f"{self.exponent:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class Crossover:
    kind: str  # "cross" | "always" (hub ahead at every n) | "never"
    n: float | None  # interpolated n of the crossing; None below MIN_POINTS common n
    n_lo: int  # the common range that was compared
    n_hi: int
    between: tuple[int, int] | None = None  # for kind == "cross": the n that bracket it
    points: int = 0  # common n compared

    def text(self) -> str:
        rng = f"{fmt_seq(self.n_lo)}–{fmt_seq(self.n_hi)}"
        if self.kind == "cross" and self.n is not None:
            return f"n ≈ {_round_n(self.n):,}"
        if self.kind == "cross" and self.between is not None:
            a, b = (fmt_seq(x) for x in self.between)
            return f"between {a} and {b} ({self.points} points: not interpolated)"
        if self.kind == "always":
            return f"faster over the whole range ({rng})"
        return f"none in range ({rng})"


def _round_n(n: float) -> int:
    """Two significant figures: an interpolated crossing is not known better than that."""
    digits = max(0, math.floor(math.log10(n)) - 1)
    return int(round(n / 10**digits) * 10**digits)


def fit_exponent(
    n: Sequence[float],
    t: Sequence[float],
    rounds: Sequence[Rounds] | None = None,
    *,
    paired: bool = False,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Fit | None:
    """Slope of log t vs log n over the upper half of the points (at least 3); None below
    MIN_POINTS distinct n.

    `rounds` (each point's step times by round) adds the bootstrap interval of the slope.
    """
    given = rounds if rounds is not None else [[] for _ in n]
    pts = sorted(
        (float(a), float(b), r) for a, b, r in zip(n, t, given, strict=True) if a > 0 and b > 0
    )
    distinct = sorted({a for a, _, _ in pts})  # pooled runs may repeat an n
    if len(distinct) < MIN_POINTS:
        return None
    cut = distinct[-max(MIN_POINTS, math.ceil(len(distinct) / 2))]
    pts = [p for p in pts if p[0] >= cut]
    x = np.log([a for a, _, _ in pts])
    slope = float(np.polyfit(x, np.log([b for _, b, _ in pts]), 1)[0])
    fit = Fit(slope, int(pts[0][0]), int(pts[-1][0]), points=len(pts))
    cells = [r for _, _, r in pts]
    if any(n_samples(r) < 3 for r in cells):
        return fit
    paired = paired and len({len(r) for r in cells}) == 1
    logs = np.log(bootstrap_medians(cells, paired=paired, resamples=resamples))  # (B, K)
    xc = x - x.mean()
    slopes = (logs - logs.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)  # (B,)
    low, high = percentile_interval(slopes, confidence)
    return Fit(slope, fit.n_lo, fit.n_hi, low, high, len(pts))


def crossover(
    n: Sequence[float], t_hub: Sequence[float], t_base: Sequence[float]
) -> Crossover | None:
    """Where the hub overtakes the baseline, on the n both measured; None below two shared n.
    Below MIN_POINTS shared n a crossing is bracketed, not interpolated (Crossover.n None)."""
    pts = sorted(
        (float(a), float(h), float(b))
        for a, h, b in zip(n, t_hub, t_base, strict=True)
        if h > 0 and b > 0
    )
    if len(pts) < 2:
        return None
    ns = [p[0] for p in pts]
    d = [math.log(h / b) for _, h, b in pts]  # < 0: hub faster
    lo, hi = int(ns[0]), int(ns[-1])
    if d[-1] >= 0:
        return Crossover("never", None, lo, hi, points=len(pts))
    first = len(d) - 1
    while first > 0 and d[first - 1] < 0:
        first -= 1
    if first == 0:
        return Crossover("always", None, lo, hi, points=len(pts))
    if len(pts) < MIN_POINTS:
        return Crossover("cross", None, lo, hi, (int(ns[first - 1]), int(ns[first])), len(pts))
    x0, x1 = math.log(ns[first - 1]), math.log(ns[first])
    frac = d[first - 1] / (d[first - 1] - d[first])
    n = math.exp(x0 + frac * (x1 - x0))
    return Crossover("cross", n, lo, hi, (int(ns[first - 1]), int(ns[first])), len(pts))
