"""Log-axis ticks that always label the data: two or more labelled ticks, every value inside them.

matplotlib's LogLocator labels decades, so an axis over 104-108 MiB has no label at all and the
largest value often sits above the last one. Here the ticks come from a ladder of ever finer
"nice" sets (powers of the base; 1-2-5 or 1-1.5 x 2^k; 1-1.5-2-3-4-5-6-8 or quarter steps of
2^k; then an even linear step), the coarsest that puts three or more ticks on the data's range,
and the limits reach the ticks either side of the data: no value lies beyond the outer labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_TICKS = 8
MIN_COVER = 0.5  # data span / tick span (log): no axis mostly empty
# mantissas per decade (decimal) or per octave (bytes, powers of two), coarsest first
_DECIMAL = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))
_BINARY = ((1.0,), (1.0, 1.5), (1.0, 1.25, 1.5, 1.75))
_STEPS = (1.0, 2.0, 5.0)  # linear steps, times a power of ten (2.5 would print as 2 or 3)


def _ladder(lo: float, hi: float, base: float, mantissas: tuple[float, ...], stride: int) -> list:
    first = math.floor(math.log(lo, base)) - stride
    last = math.ceil(math.log(hi, base)) + stride
    return [m * base**e for e in range(first, last + 1) if e % stride == 0 for m in mantissas]


def _bracket(ticks: list[float], lo: float, hi: float) -> list[float]:
    """The ticks from the last one at or below lo to the first one at or above hi."""
    eps = 1e-9
    below = max(t for t in ticks if t <= lo * (1 + eps))
    above = min(t for t in ticks if t >= hi * (1 - eps))
    return [t for t in ticks if below <= t <= above]


def _fits(ticks: list[float], lo: float, hi: float, most: int) -> bool:
    """3 to `most` ticks, and the data fills at least half of the (log) span between the ends."""
    cover = math.log(hi / lo) >= MIN_COVER * math.log(ticks[-1] / ticks[0])
    return 3 <= len(ticks) <= most and cover


def _linear(lo: float, hi: float, unit: float, most: int) -> list[float] | None:
    """An even step in `unit` (1, 2 or 5 times a power of ten), the coarsest that fits."""
    a, b = lo / unit, hi / unit
    top = math.floor(math.log10(b - a)) + 1
    for step in sorted(s * 10.0**e for e in range(top - 4, top + 1) for s in _STEPS)[::-1]:
        first, last = math.floor(a / step + 1e-9), math.ceil(b / step - 1e-9)
        ticks = [k * step * unit for k in range(first, last + 1)]
        if first > 0 and _fits(ticks, lo, hi, most):
            return ticks
    return None


def nice_ticks(lo: float, hi: float, *, binary: bool = False, most: int = MAX_TICKS) -> list[float]:
    """Tick values covering [lo, hi] (both > 0) on a log axis, each end bracketed by a tick.

    binary: powers of two and their simple fractions (memory in KiB / MiB / GiB). most: the
    number of labels that fit side by side (a horizontal axis holds fewer than a vertical one).
    """
    most = max(2, most)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"log ticks need 0 < lo <= hi, got {lo!r}, {hi!r}")
    if hi / lo < 1.02:  # one value, or nearly: a band of a few per cent around it
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 1.02, mid * 1.02
    base, levels = (2.0, _BINARY) if binary else (10.0, _DECIMAL)
    tried = []
    for level, mantissas in enumerate(levels):
        stride = 1
        ticks = _bracket(_ladder(lo, hi, base, mantissas, stride), lo, hi)
        while level == 0 and len(ticks) > most and stride < 12:  # every 2nd, 3rd ... decade
            stride += 1
            ticks = _bracket(_ladder(lo, hi, base, mantissas, stride), lo, hi)
        if _fits(ticks, lo, hi, most):
            return ticks
        tried.append(ticks)
    unit = 1024.0 ** math.floor(math.log(hi, 1024)) if binary else 1.0
    linear = _linear(lo, hi, unit, most)
    if linear is not None:
        return linear
    # nothing fits well: the coarsest ladder that is not crowded (two labels at least)
    return next((t for t in tried if len(t) <= most), tried[0])


def _crowded(ticks: list[float], formatter: Any, width: float, size: float = 8.0) -> bool:
    """Would neighbouring labels touch on an axis `width` inches long (log scale)?"""
    span = math.log(ticks[-1] / ticks[0]) or 1.0
    at = [width * math.log(t / ticks[0]) / span for t in ticks]
    wide = [len(str(formatter(t, None))) * size * 0.58 / 72 for t in ticks]  # inches per label
    pairs = zip(at, at[1:], wide, wide[1:], strict=False)
    return any(b - a < (wa + wb) / 2 + 0.07 for a, b, wa, wb in pairs)


def log_axis(
    ax: Axes,
    values: Iterable[float],
    formatter: Any,
    *,
    axis: str = "y",
    binary: bool = False,
) -> list[float]:
    """A log axis whose limits and labelled ticks come from `values` (data and whisker ends).

    The limits reach a little past the outer ticks so markers on them are drawn whole. Returns the
    ticks; minor ticks are left out (every tick that is drawn is labelled).
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    finite = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not finite:  # nothing a log axis can show (a run of failed or zero cells): stay linear
        return []
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log", base=2 if binary else 10)
    lo, hi = min(finite), max(finite)
    ticks = nice_ticks(lo, hi, binary=binary)
    if axis == "x":  # labels side by side: no more than fit across the axes
        width = ax.get_position().width * ax.figure.get_figwidth()
        most = len(ticks)
        while most > 2 and _crowded(ticks, formatter, width):
            most -= 1
            ticks = nice_ticks(lo, hi, binary=binary, most=most)
    pad = (ticks[-1] / ticks[0]) ** 0.04
    (ax.set_ylim if axis == "y" else ax.set_xlim)(ticks[0] / pad, ticks[-1] * pad)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(formatter)
    target.set_minor_locator(NullLocator())
    return ticks
