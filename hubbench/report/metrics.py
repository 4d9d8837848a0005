"""The metrics reports can compare, with their direction and how they depend on step time.

`time_power` says how a metric scales with the median step time: tokens/s, FLOP/s and MFU go
as time^-1, step time as time^+1, memory not at all. The bootstrap uses it to turn resampled
step-time medians into resampled metric ratios; time-independent metrics get a point ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubbench.errors import ReportError


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for table headers
    unit: str
    higher_is_better: bool
    time_power: int  # -1: ~ 1/time, +1: ~ time, 0: not derived from step time


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("tokens_per_s", "tokens/s", "tokens/s", True, -1),
        Metric("time_median_s", "step time", "s", False, 1),
        Metric("achieved_flops_per_s", "FLOP/s", "FLOP/s", True, -1),
        Metric("mfu", "MFU", "", True, -1),
        Metric("peak_mem_bytes", "peak memory", "bytes", False, 0),
        Metric("peak_mem_reserved_bytes", "reserved memory", "bytes", False, 0),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ReportError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}") from None
