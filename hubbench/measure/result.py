"""A round's result: what one round of a cell measured, with the model's counts and the peaks
they are judged against, as the RoundResult the worker answers (hubbench.measure.metrics)."""

from __future__ import annotations

from typing import Any

from hubbench.measure.calibration import load_calibration
from hubbench.measure.metrics import RoundResult
from hubbench.measure.peaks import peak_bandwidth, peak_flops
from hubbench.measure.roofline import bytes_floor
from hubbench.measure.timing import Measurement
from hubbench.plan.cell import Cell


def round_result(
    cell: Cell,
    model: Any,
    m: Measurement,
    *,
    device: Any,
    name: str,
    sentinel: float | None,
    per_call: int = 1,
    state_bytes: int | None = None,
    quality: dict[str, Any] | None = None,
    world: int = 1,
) -> RoundResult:
    """A round's RoundResult from its Measurement `m` on `device` (named `name`).

    decode: a call of the step generates `per_call` tokens per sequence, and a row's step is one
    of them. A quality cell's steps are its training updates (`quality`: the values its run
    measured). `world` > 1 (hubbench.measure.ranks): `m` holds the slowest rank's step times,
    and tokens, FLOPs, the byte floor and the peaks count every rank, so MFU and the speed of
    light stay per-device fractions."""
    mode = "train" if cell.mode == "quality" else cell.mode
    dtype = getattr(model.config, "dtype", "fp32")
    calibration = load_calibration(device)
    peak, source = peak_flops(device.type, name, dtype, calibration)
    bandwidth, bandwidth_source = peak_bandwidth(device.type, name, calibration)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return RoundResult(
        samples_s=[t / per_call for t in m.samples],
        tokens=m.tokens * world,
        warmup_s=m.warmup_s,
        warmup_steps=m.warmup_steps,
        warmup_capped=int(m.warmup_capped),
        sentinel_s=sentinel,
        peak_mem_bytes=m.peak_mem_bytes,
        peak_mem_reserved_bytes=m.peak_mem_reserved_bytes,
        mem_kind=m.mem_kind,
        mem_baseline_bytes=m.mem_baseline_bytes,
        flops_per_step=None if m.flops_per_step is None else m.flops_per_step / per_call * world,
        flops_per_step_analytic=_times(_analytic(cell, model, mode), world),
        peak_flops_per_s=_times(peak, world),
        peak_flops_source=source,
        params=int(model.num_params()),
        tied_share=_tied_share(model),
        backends=dict(m.backends),
        state_bytes=state_bytes,
        bytes_per_step_min=bytes_floor(mode, weights, state_bytes, cell.batch) * world,
        peak_bytes_per_s=_times(bandwidth, world),
        peak_bytes_source=bandwidth_source,
        quality=quality,
        world_size=world,
    )


def _analytic(cell: Cell, model: Any, mode: str) -> float | None:
    """The model's own FLOPs per step, if it counts them: decode's tokens of a timed call see
    contexts seq .. seq + decode_tokens - 1."""
    if not hasattr(model, "flops_analytic"):
        return None
    context = cell.seq + (cell.decode_tokens - 1) / 2 if mode == "decode" else cell.seq
    analytic = model.flops_analytic(cell.batch, context, mode)
    return None if analytic is None else float(analytic)


def _tied_share(model: Any) -> float | None:
    """The tied share of the model's first mixer that reports one (Oryx: every layer alike)."""
    for module in model.modules() if hasattr(model, "modules") else ():
        share = getattr(module, "tied_share", None)
        if callable(share) and module is not model:
            return float(share())
    return None


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
