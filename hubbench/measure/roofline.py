"""The speed of light of a cell: the step time its FLOPs and its unavoidable bytes allow.

    speed_of_light_s = max(FLOPs / peak FLOP/s, bytes_min / peak bytes/s)

FLOPs are the ones MFU uses (the model's analytic, causal-aware count, else the counted ones);
the peak FLOP/s is MFU's denominator (the GPU table or `hubbench env --calibrate`). `bytes_min`
is a lower bound on the memory traffic of one step, from what any implementation must touch:

- every mode reads the weights once per step (W = the parameters' bytes);
- fwd_bwd reads them again in backward and writes their gradients: 3 W;
- train adds AdamW, which reads parameter, gradient and both moments and writes parameter and
  both moments (fp32 moments of the parameters' size): 3 W + 7 W = 10 W;
- prefill writes the state it builds (state_bytes per sequence), decode reads it per token.

Activations are left out: what a step must move of them depends on the implementation (a fused
kernel keeps them on chip), so the bound stays a bound. The peak bandwidth is the data sheet's
on a GPU (BANDWIDTH_TABLE) and a timed large copy on a CPU (`hubbench env --calibrate`).

What it is not: a promise. It is the ceiling of the analytic counts at the measured peaks; a
ratio of two cells' ceilings (the "ideal" beside every measured ratio) says how much of a
speedup the method's FLOPs and bytes allow, and the measured one how much the code delivers.
The ideal ratio is no ceiling of the measured one: a hub that reaches more of its speed of light
than its baseline does of its own beats the ideal.

A step cannot beat its speed of light, nor reach an MFU over 1. A fraction over PEAK_LIMIT
says the peak it was divided by is too low (a calibration that is stale or was taken on a busy
machine, hubbench.measure.calibration) or the counts too high: `too_low_peaks` names the peaks,
and the
report flags such a fraction instead of printing it as a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# HBM bandwidth per GPU, bytes/s, from NVIDIA's data sheets (the largest memory variant).
BANDWIDTH_TABLE: dict[str, float] = {
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,
    "A100": 2.039e12,
    "L4": 300e9,
    "A10": 600e9,
}

ADAMW_TRAFFIC = 7  # parameter, gradient, two moments read; parameter, two moments written
MEMORY_KEY = "memory"  # the calibration entry of the copy bandwidth (beside the dtypes)
PEAK_LIMIT = 1.0  # the most of its peak (MFU) or of its speed of light that a step can reach


def peak_bandwidth(
    device_kind: str, device_name: str, calibration: dict[str, Any] | None = None
) -> tuple[float | None, str | None]:
    """(peak bytes/s, where it came from): the GPU table first, then a calibrated copy rate."""
    from hubbench.measure.calibration import source
    from hubbench.measure.flops import table_entry

    if device_kind == "cuda":
        key = table_entry(device_name)
        if key is not None and key in BANDWIDTH_TABLE:
            return BANDWIDTH_TABLE[key], f"table: {key} HBM"
    entry = (calibration or {}).get(MEMORY_KEY)
    if entry:
        return float(entry["bytes_per_s"]), source(entry)
    return None, None


def bytes_floor(mode: str, weight_bytes: int, state_bytes: int | None, batch: int) -> float:
    """The lower bound on one step's memory traffic (module docstring), in bytes."""
    reads = {"fwd": 1, "prefill": 1, "decode": 1, "fwd_bwd": 3, "train": 3 + ADAMW_TRAFFIC}
    if mode not in reads:
        raise ValueError(f"unknown mode {mode!r}")
    total = float(reads[mode] * weight_bytes)
    if mode in ("prefill", "decode") and state_bytes:
        total += state_bytes * batch
    return total


@dataclass(frozen=True)
class SpeedOfLight:
    seconds: float
    basis: str  # "compute" | "memory" | "compute (no bandwidth)" | "memory (no FLOP/s)"


def speed_of_light(
    flops: float | None,
    peak_flops: float | None,
    bytes_min: float | None,
    peak_bytes: float | None,
) -> SpeedOfLight | None:
    """The larger of the compute and the memory time; None when neither can be formed."""
    compute = flops / peak_flops if flops and peak_flops else None
    memory = bytes_min / peak_bytes if bytes_min and peak_bytes else None
    if compute is None and memory is None:
        return None
    if memory is None:
        return SpeedOfLight(float(compute), "compute (no bandwidth)")  # type: ignore[arg-type]
    if compute is None:
        return SpeedOfLight(memory, "memory (no FLOP/s)")
    return SpeedOfLight(compute, "compute") if compute >= memory else SpeedOfLight(memory, "memory")


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
