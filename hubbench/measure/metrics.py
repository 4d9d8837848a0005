"""Metric assembly: a cell's rounds -> the measurement columns of its row.

The worker measures one round of a cell at a time (hubbench.measure.cell) and answers a RoundResult;
the runner collects a cell's rounds and calls `measurement_columns` after each one, so the row on
disk always holds every round measured so far. Derived quantities are computed here and nowhere
else: step-time statistics over all rounds' samples, tokens/s from their median (and its p10 /
p90 spread from the p90 / p10 times), FLOPs per token, achieved FLOP/s and MFU. MFU uses the
model's analytic, causal-aware FLOPs when it has them (model FLOPs utilisation), else the counted
ones; `mfu_basis` says which. The speed of light (hubbench.measure.roofline) takes the same
FLOPs and peak, and the step's byte floor at the peak bandwidth. Peak memory is the highest of
the rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hubbench import schema
from hubbench.measure.roofline import speed_of_light
from hubbench.stats import Stats, summarize


@dataclass
class RoundResult:
    """What one round of one cell measured (crosses the worker pipe as JSON)."""

    samples_s: list[float]
    tokens: int
    warmup_s: float
    warmup_steps: int
    warmup_capped: int  # rounds whose warm-up hit the cap (0 or 1 for a round just measured)
    sentinel_s: float | None
    peak_mem_bytes: int | None
    peak_mem_reserved_bytes: int | None
    mem_kind: str | None
    mem_baseline_bytes: int | None
    flops_per_step: float | None  # counted in the cell's first round only
    flops_per_step_analytic: float | None
    peak_flops_per_s: float | None
    peak_flops_source: str | None
    params: int
    backends: dict[str, str] = field(default_factory=dict)
    tied_share: float | None = None  # Oryx: the share of its mixer's parameters both modes use
    bytes_per_step_min: float | None = None  # roofline.bytes_floor
    peak_bytes_per_s: float | None = None
    peak_bytes_source: str | None = None
    state_bytes: int | None = None  # prefill / decode: per sequence after the prompt
    session: float | None = None  # when the run that measured it started (the runner sets it)
    quality: dict[str, Any] | None = None  # quality mode: the quality group's values
    # nproc > 1 (hubbench.measure.ranks): tokens, FLOPs, byte floor and peaks count every rank,
    # the step time is the slowest rank's
    world_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundResult:
        return cls(**data)


def _first(values: Sequence[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _joined(values: Sequence[str | None]) -> str | None:
    """One backend name, or the distinct ones joined by '+' if rounds differed."""
    seen = sorted({part for v in values if v for part in v.split("+")})
    return "+".join(seen) if seen else None


def measurement_columns(rounds: Sequence[RoundResult], where: str) -> dict[str, Any]:
    """The row's measurement group for a cell's rounds so far, checked against the schema."""
    samples = [t for r in rounds for t in r.samples_s]
    s = summarize(samples)
    values = {
        **{
            col: _joined([r.backends.get(key) for r in rounds])
            for col, key in schema.BACKEND_COLUMNS.items()
        },
        "time_median_s": s.median,
        "time_min_s": s.min,
        "time_p10_s": s.p10,
        "time_p90_s": s.p90,
        "time_mean_s": s.mean,
        "time_std_s": s.std,
        "time_count": s.count,
        "samples_s": samples,
        "round_samples_s": [list(r.samples_s) for r in rounds],
        "time_rounds": len(rounds),
        "round_sessions": [r.session for r in rounds],
        "warmup_s": sum(r.warmup_s for r in rounds),
        "warmup_steps": sum(r.warmup_steps for r in rounds),
        "warmup_capped": sum(int(r.warmup_capped) for r in rounds),
        "round_sentinel_s": [r.sentinel_s for r in rounds],
        **_memory_columns(rounds),
        **_rate_columns(rounds, s),
        "params": rounds[0].params,
        "tied_share": rounds[0].tied_share,
    }
    return schema.part("measurement", values, where)


def _memory_columns(rounds: Sequence[RoundResult]) -> dict[str, Any]:
    """Peak memory is the highest of the rounds."""
    memory = [r.peak_mem_bytes for r in rounds if r.peak_mem_bytes is not None]
    reserved = [r.peak_mem_reserved_bytes for r in rounds if r.peak_mem_reserved_bytes is not None]
    return {
        "peak_mem_bytes": max(memory) if memory else None,
        "peak_mem_reserved_bytes": max(reserved) if reserved else None,
        "mem_kind": _first([r.mem_kind for r in rounds]),
        "mem_baseline_bytes": _first([r.mem_baseline_bytes for r in rounds]),
        "state_bytes": _first([r.state_bytes for r in rounds]),
    }


def _rate_columns(rounds: Sequence[RoundResult], s: Stats) -> dict[str, Any]:
    """Tokens/s, FLOPs, MFU and the speed of light, from the median step time `s.median`."""
    tokens = rounds[0].tokens
    analytic = _first([r.flops_per_step_analytic for r in rounds])
    counted = _first([r.flops_per_step for r in rounds])
    peak = _first([r.peak_flops_per_s for r in rounds])
    basis = analytic if analytic else counted
    achieved = basis / s.median if basis else None
    bytes_min = _first([r.bytes_per_step_min for r in rounds])
    bandwidth = _first([r.peak_bytes_per_s for r in rounds])
    light = speed_of_light(basis, peak, bytes_min, bandwidth)
    return {
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / s.median,
        "tokens_per_s_p10": tokens / s.p90,
        "tokens_per_s_p90": tokens / s.p10,
        "world_size": rounds[0].world_size,
        "tokens_per_s_per_rank": tokens / s.median / rounds[0].world_size,
        "weak_scaling_efficiency": None,  # across cells: weak_scaling() fills it
        "flops_per_step": counted,
        "flops_per_step_analytic": analytic,
        "flops_per_token": basis / tokens if basis else None,
        "achieved_flops_per_s": achieved,
        "mfu": achieved / peak if achieved and peak else None,
        "mfu_basis": None if basis is None else ("analytic" if analytic else "counted"),
        "peak_flops_per_s": peak,
        "peak_flops_source": _first([r.peak_flops_source for r in rounds]),
        "bytes_per_step_min": bytes_min,
        "peak_bytes_per_s": bandwidth,
        "peak_bytes_source": _first([r.peak_bytes_source for r in rounds]),
        "speed_of_light_s": light.seconds if light else None,
        "speed_of_light_tokens_per_s": tokens / light.seconds if light else None,
        "speed_of_light_basis": light.basis if light else None,
        "speed_of_light_fraction": light.seconds / s.median if light else None,
    }


def weak_scaling(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Weak-scaling efficiency by cell id: a world size > 1 row's tokens/s per rank over the
    tokens/s of the row that measured the same cell (every cell field but nproc and nnodes) at
    nproc 1 on one node."""
    fields = [f for f in schema.cell_fields() if f not in ("nproc", "nnodes")]

    def key(row: Mapping[str, Any]) -> str:
        return repr([row.get(f) for f in fields])

    def world(row: Mapping[str, Any]) -> int:
        return (row.get("nproc") or 1) * (row.get("nnodes") or 1)

    single = {key(r): r["tokens_per_s"] for r in rows
              if world(r) == 1 and r.get("tokens_per_s")}  # fmt: skip
    out = {}
    for r in rows:
        base = single.get(key(r))
        if world(r) > 1 and r.get("tokens_per_s_per_rank") and base:
            out[r["cell_id"]] = r["tokens_per_s_per_rank"] / base
    return out


def quality_columns(rounds: Sequence[RoundResult], where: str) -> dict[str, Any]:
    """The row's quality group: what the (one) training run of a quality cell measured, else
    nulls. The values are computed in hubbench.quality.train; only their shape is checked here."""
    values = _first([r.quality for r in rounds])
    return schema.part("quality", values or schema.empty("quality"), where)
