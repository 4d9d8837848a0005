"""Fractions of a peak that a step cannot reach, judged on rows (torch-free).

A step cannot beat its speed of light, nor reach an MFU over 1. A fraction over PEAK_LIMIT says
the peak it was divided by is too low (a calibration that is stale or was taken on a busy
machine, hubbench.measure.calibration) or the counts too high: `too_low_peaks` names the peaks,
and the reports flag such a fraction instead of printing it as a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

PEAK_LIMIT = 1.0  # the most of its peak (MFU) or of its speed of light that a step can reach


def beyond_peak(fraction: float | None) -> bool:
    """Whether an MFU or a speed-of-light fraction is over PEAK_LIMIT (module docstring)."""
    return fraction is not None and not math.isnan(fraction) and fraction > PEAK_LIMIT


def too_low_peaks(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The sources of the peaks that a row's MFU or speed-of-light fraction shows to be too low:
    the FLOP/s peak for an MFU over 1 or a compute-bound fraction over 1, the bandwidth for a
    memory-bound one. Empty for a row within its peaks."""
    mfu, light = _number(row.get("mfu")), _number(row.get("speed_of_light_fraction"))
    basis = str(row.get("speed_of_light_basis") or "")
    out = []
    if beyond_peak(mfu) or (beyond_peak(light) and basis.startswith("compute")):
        out.append(_text(row.get("peak_flops_source")) or "the FLOP/s peak")
    if beyond_peak(light) and basis.startswith("memory"):
        out.append(_text(row.get("peak_bytes_source")) or "the bandwidth")
    return tuple(out)


def _number(value: Any) -> float | None:
    """A row's value as a float; None for null, NaN and pandas' NA (rows read back)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
