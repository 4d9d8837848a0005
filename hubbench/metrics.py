"""Metric assembly: a Measurement plus what the model says about itself -> the measurement columns.

Derived quantities are computed here and nowhere else: tokens/s from the median step time (and
its p10 / p90 spread from the p90 / p10 times), FLOPs per token, achieved FLOP/s and MFU. MFU
uses the model's analytic, causal-aware FLOPs when it has them (model FLOPs utilisation), else
the counted ones; `mfu_basis` says which.
"""

from __future__ import annotations

from typing import Any

from hubbench import schema
from hubbench.measure import Measurement


def measurement_columns(
    m: Measurement,
    *,
    analytic_flops: float | None,
    peak_flops: float | None,
    peak_source: str | None,
    params: int,
    where: str,
) -> dict[str, Any]:
    """The row's measurement group for one ok cell, checked against the schema."""
    s = m.stats
    basis = analytic_flops if analytic_flops else m.flops_per_step
    achieved = basis / s.median if basis else None
    values = {
        "backend_attention": m.backends.get("attention"),
        "backend_mamba": m.backends.get("mamba"),
        "backend_hub": m.backends.get("hubrouter"),
        "time_median_s": s.median,
        "time_min_s": s.min,
        "time_p10_s": s.p10,
        "time_p90_s": s.p90,
        "time_mean_s": s.mean,
        "time_std_s": s.std,
        "time_count": s.count,
        "samples_s": list(m.samples),
        "tokens_per_step": m.tokens,
        "tokens_per_s": m.tokens / s.median,
        "tokens_per_s_p10": m.tokens / s.p90,
        "tokens_per_s_p90": m.tokens / s.p10,
        "warmup_s": m.warmup_s,
        "peak_mem_bytes": m.peak_mem_bytes,
        "peak_mem_reserved_bytes": m.peak_mem_reserved_bytes,
        "mem_kind": m.mem_kind,
        "mem_baseline_bytes": m.mem_baseline_bytes,
        "flops_per_step": m.flops_per_step,
        "flops_per_step_analytic": analytic_flops,
        "flops_per_token": basis / m.tokens if basis else None,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak_flops if achieved and peak_flops else None,
        "mfu_basis": None if basis is None else ("analytic" if analytic_flops else "counted"),
        "peak_flops_per_s": peak_flops,
        "peak_flops_source": peak_source,
        "params": params,
    }
    return schema.part("measurement", values, where)
