"""Number formatting shared by the CLI tables, Markdown, HTML and plots: one spelling each."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubbench.schema import Column
    from hubbench.stats import RatioCI


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _three(x: float) -> str:
    """Three significant digits without switching to exponent notation below 1e4."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def si(value: float | None) -> str:
    """1234567 -> '1.23M'; None / NaN -> '-'."""
    if _missing(value):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{_three(value / scale)}{suffix}"
    return _three(value)


def si_unit(value: float | None, unit: str) -> str:
    """A rate in SI prefixes with its unit: 2.6e8, 'FLOP/s' -> '260 MFLOP/s' (never '0.00 T')."""
    if _missing(value):
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{_three(value / scale)} {prefix}{unit}"
    return f"{_three(value)} {unit}"


def binary_bytes(value: float | None) -> str:
    if _missing(value):
        return "-"
    for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= scale * 1000 / 1024:  # 1000 MiB reads better as 0.977 GiB
            return f"{_three(value / scale)} {suffix}"
    return f"{value:.0f} B"


def seconds(value: float | None) -> str:
    if _missing(value):
        return "-"
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def milliseconds(value: float | None) -> str:
    """Seconds as milliseconds to about three significant digits: 2,224 / 264 / 54.1 / 5.92."""
    if _missing(value):
        return "-"
    ms = float(value) * 1e3
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2
    return f"{ms:,.{decimals}f}"


def count(value: float | None) -> str:
    """A rate or count in full with thousands separators: 25,600."""
    if _missing(value):
        return "-"
    return f"{float(value):,.0f}"


def fraction(value: float | None) -> str:
    """0.253 -> '25.3%'."""
    if _missing(value):
        return "-"
    return f"{100 * float(value):.1f}%"


OVER_PEAK = ">100%!"  # an MFU or speed-of-light fraction over 1: the peak is wrong, not the cell


def efficiency(value: float | None) -> str:
    """MFU or a fraction of the speed of light: '25.3%', or OVER_PEAK above 100%, which no
    cell can reach: the peak it divides by is too low (peak_note says which, and what to do)."""
    from hubbench.report.peaks import beyond_peak

    if not _missing(value) and beyond_peak(float(value)):  # type: ignore[arg-type]
        return OVER_PEAK
    return fraction(value)


def peak_note(
    rows: Iterable[Mapping[str, Any]],
    lead: str = f"{OVER_PEAK}: MFU or SoL over 100%, faster than the speed of light",
) -> str | None:
    """The caption line for rows whose MFU or speed-of-light fraction is over 100%, naming the
    peaks (source and date) that are too low; None when no row has one."""
    from hubbench.report.peaks import too_low_peaks

    sources = list(dict.fromkeys(s for r in rows for s in too_low_peaks(r)))
    if not sources:
        return None
    return (
        f"{lead}: the peak it divides by is too low ({'; '.join(sources)}), a stale calibration "
        "or one taken on a busy machine; rerun `hubbench env --calibrate` on a quiet machine"
    )


def bits(value: float | None) -> str:
    """Bits per byte: '2.134'."""
    return "-" if _missing(value) else f"{float(value):.3f}"


def metric_value(metric: Column, value: float | None) -> str:
    if metric.unit == "bytes":
        return binary_bytes(value)
    if metric.unit == "s":
        return seconds(value)
    if metric.name in ("mfu", "speed_of_light_fraction"):
        return efficiency(value)
    if metric.unit == "fraction":
        return fraction(value)
    if metric.unit in ("bits", "nats"):
        return bits(value)
    return si(value)


def fmt_seq(n: int) -> str:
    """512 -> '512', 2048 -> '2k', 32768 -> '32k', 1536 -> '1.5k'."""
    if n >= 1024 and n % 512 == 0:
        k = n / 1024
        return f"{k:g}k"
    return str(n)


def times(value: float) -> str:
    """A ratio: '0.872×'."""
    return f"{value:.3f}×"


def interval(ci: RatioCI | None) -> str:
    """'[0.851, 0.893]', or '-' when there was nothing to resample."""
    if ci is None or not ci.bootstrapped:
        return "-"
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


def ratio(ci: RatioCI | None) -> str:
    """'0.872× [0.851, 0.893]'; the interval is left out when there was nothing to resample."""
    if ci is None:
        return "-"
    if not ci.bootstrapped:
        return times(ci.point)
    return f"{times(ci.point)} {interval(ci)}"


STALE_IDEAL = "stale?"  # an ideal ratio where a side is over 100% of its speed of light


def ideal(ci: RatioCI | None, stale: bool = False) -> str:
    """The ratio at both sides' speed of light: '3.30×', or '-' where a side has none.
    `stale`: a side beat its speed of light, so the ideal rests on a peak that is too low."""
    if ci is None or ci.ideal is None:
        return "-"
    return STALE_IDEAL if stale else times(ci.ideal)


def measured_and_ideal(ci: RatioCI | None, stale: bool = False) -> str:
    """'2.41× measured, 3.30× ideal' (the ideal left out where it is unknown, and said to be
    unknown where a side beat its speed of light)."""
    if ci is None:
        return "-"
    measured = f"{times(ci.point)} measured"
    if ci.ideal is None:
        return measured
    if stale:
        return (
            f"{measured}, ideal unknown (a cell beat its speed of light: its peak is too low; "
            "rerun `hubbench env --calibrate`)"
        )
    return f"{measured}, {ideal(ci)} ideal"


def percent(text: str, option: str = "--max-regression") -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a bare number >= 1 is ambiguous and rejected."""
    from hubbench.errors import ReportError

    raw = text.strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        else:
            value = float(raw)
            if value >= 1:
                raise ReportError(f"{option} {text!r} is ambiguous: write {raw}% or a fraction < 1")
    except ValueError:
        raise ReportError(f"{option} {text!r} is not a percentage (e.g. 5% or 0.05)") from None
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ReportError(f"{option} {text!r} must lie between 0% and 100%")
    return value


def md_cell(text: str, limit: int = 120) -> str:
    """Text safe inside a Markdown table cell: no pipes, no newlines, bounded length."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
