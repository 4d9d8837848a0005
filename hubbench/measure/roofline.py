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
on a GPU and a timed large copy on a CPU (hubbench.measure.peaks).

What it is not: a promise. It is the ceiling of the analytic counts at the measured peaks; a
ratio of two cells' ceilings (the "ideal" beside every measured ratio) says how much of a
speedup the method's FLOPs and bytes allow, and the measured one how much the code delivers.
The ideal ratio is no ceiling of the measured one: a hub that reaches more of its speed of light
than its baseline does of its own beats the ideal.

A step cannot beat its speed of light, nor reach an MFU over 1: a fraction over 1 says the peak
it was divided by is too low or the counts too high, and the report flags it instead of
printing it as a result (hubbench.report.peaks).
"""

from __future__ import annotations

from dataclasses import dataclass

ADAMW_TRAFFIC = 7  # parameter, gradient, two moments read; parameter, two moments written


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
