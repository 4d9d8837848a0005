"""One round of a cell, measured in this process: build, warm up, time; never raises for the cell.

Every failure of a cell is its outcome: `oom` (CPU allocator / CUDA OOM / MemoryError), `skipped`
(UnavailableError: no CUDA, no flash-attn, no mamba-ssm) or `error` (any other exception). The
worker (hubbench.run.worker) calls this for each cell it is sent.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from hubbench import schema
from hubbench.errors import UnavailableError
from hubbench.measure.metrics import RoundResult
from hubbench.plan.cell import Cell

MESSAGE_CHARS = 500


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while measuring a cell."""
    if isinstance(exc, RankFailure):
        return exc.status, exc.message[:MESSAGE_CHARS]
    text = " ".join(str(exc).split())
    if isinstance(exc, UnavailableError):
        return "skipped", text[:MESSAGE_CHARS]
    lowered = text.lower()
    oom = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in lowered or "can't allocate memory" in lowered)
    )
    message = f"{type(exc).__name__}: {text}"[:MESSAGE_CHARS]
    return ("oom" if oom else "error"), message


class RankFailure(Exception):
    """A cell that failed on a rank of its torchrun launch, already classified there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def execute_cell(
    cell: Cell, build: Callable[..., Any], count_flops: bool = True, builder: str | None = None
) -> dict[str, Any]:
    """One round of `cell`: {'outcome': outcome columns, 'round': RoundResult JSON or None}.

    The model is built afresh for the round. `count_flops`: count FLOPs on its first warm-up
    step (the runner asks for it in a cell's first round only). A cell of nproc > 1 runs under
    torchrun (hubbench.measure.ranks), whose ranks load `builder` (the spec `build` came from).
    """
    from hubbench.measure.env import device_name

    start = time.perf_counter()  # bookkeeping (wall_s); step timing is measure.py's alone
    outcome: dict[str, Any] = {"status": "ok", "message": None, "device_name": None}
    result = None
    try:
        _set_threads(cell.threads)
        device = _device(cell)
        outcome["device_name"] = device_name(device)  # failed rows too: plots group by device
        if cell.world > 1:
            from hubbench.measure.ranks import launch

            result = launch(cell, builder or "hubbench.models:build", count_flops).to_json()
        else:
            result = _measure(cell, build, device, outcome["device_name"], count_flops).to_json()
    except Exception as exc:  # every failure of a cell is its row's status
        outcome["status"], outcome["message"] = classify(exc)
    finally:
        gc.collect()
        _empty_cuda_cache()
    outcome["wall_s"] = time.perf_counter() - start
    return {"outcome": schema.part("outcome", outcome, f"cell {cell.index}"), "round": result}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _device(cell: Cell) -> Any:
    from hubbench.measure.step import torch_device

    return torch_device(cell.device)


def _measure(
    cell: Cell, build: Callable[..., Any], device: Any, name: str, count_flops: bool
) -> RoundResult:
    from hubbench.measure.flops import count_flops as counted_flops
    from hubbench.measure.step import build_step
    from hubbench.measure.timing import measure_step, rss_bytes, sentinel_s, trim_heap

    sentinel = sentinel_s()
    gc.collect()
    trim_heap()
    baseline = rss_bytes() if device.type == "cpu" else None
    model = build(cell.variant, cell.config)
    flops = None
    if cell.compile and count_flops:  # FlopCounterMode cannot see into compiled graphs
        eager = build_step(model, cell.mode, cell.batch, cell.seq, device)
        flops = counted_flops(lambda: (eager.fn(), eager.sync()))
        del eager
    if cell.mode == "quality":
        return _quality(cell, model, device, name, sentinel)
    settings = cell.measure
    step = build_step(model, cell.mode, cell.batch, cell.seq, device, compile=cell.compile,
                      decode_tokens=cell.decode_tokens)  # fmt: skip
    m = measure_step(
        step,
        warmup=settings.warmup,
        warmup_min_s=settings.warmup_min_s,
        warmup_max_s=settings.warmup_max_s,
        repeats=settings.repeats,
        min_time_s=settings.min_time_s,
        count=count_flops and not cell.compile,
        mem_baseline=baseline,
    )
    return round_result(cell, model, step, m, flops, name, sentinel)


def round_result(
    cell: Cell,
    model: Any,
    step: Any,
    m: Any,
    flops: float | None,
    name: str,
    sentinel: float | None,
    world: int = 1,
) -> RoundResult:
    """A timed round's RoundResult from its Measurement `m`. `world` > 1 (hubbench.measure.ranks):
    `m` holds the slowest rank's step times, and tokens, FLOPs, the byte floor and the peaks
    are counted over every rank, so MFU and the speed of light stay per-device fractions."""
    from hubbench.measure.calibration import load_calibration
    from hubbench.measure.flops import peak_flops
    from hubbench.measure.roofline import bytes_floor, peak_bandwidth

    # decode: the tokens of a timed call see contexts seq .. seq + decode_tokens - 1
    context = cell.seq + (cell.decode_tokens - 1) / 2 if cell.mode == "decode" else cell.seq
    analytic = (
        model.flops_analytic(cell.batch, context, cell.mode)
        if hasattr(model, "flops_analytic")
        else None
    )
    analytic = None if analytic is None else float(analytic) * world
    dtype = getattr(model.config, "dtype", "fp32")
    calibration = load_calibration(step.device)
    peak, source = peak_flops(step.device.type, name, dtype, calibration)
    bandwidth, bandwidth_source = peak_bandwidth(step.device.type, name, calibration)
    state = step.state_bytes() if step.state_bytes else None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # decode: a call generates per_call tokens per sequence; a row's step is one of them
    per = step.per_call
    counted = flops if cell.compile else m.flops_per_step
    return RoundResult(
        samples_s=[t / per for t in m.samples],
        tokens=m.tokens * world,
        warmup_s=m.warmup_s,
        warmup_steps=m.warmup_steps,
        warmup_capped=int(m.warmup_capped),
        sentinel_s=sentinel,
        peak_mem_bytes=m.peak_mem_bytes,
        peak_mem_reserved_bytes=m.peak_mem_reserved_bytes,
        mem_kind=m.mem_kind,
        mem_baseline_bytes=m.mem_baseline_bytes,
        flops_per_step=None if counted is None else counted / per * world,
        flops_per_step_analytic=analytic,
        peak_flops_per_s=None if peak is None else peak * world,
        peak_flops_source=source,
        params=int(model.num_params()),
        backends=dict(m.backends),
        state_bytes=state,
        bytes_per_step_min=bytes_floor(cell.mode, weights, state, cell.batch) * world,
        peak_bytes_per_s=None if bandwidth is None else bandwidth * world,
        peak_bytes_source=bandwidth_source,
        world_size=world,
    )


def _quality(cell: Cell, model: Any, device: Any, name: str, sentinel: float) -> RoundResult:
    """A quality cell's one round: the training run, its updates as the step samples."""
    from hubbench.measure.calibration import load_calibration
    from hubbench.measure.flops import peak_flops
    from hubbench.measure.roofline import bytes_floor, peak_bandwidth
    from hubbench.quality.train import train_and_evaluate

    run = train_and_evaluate(cell, model, device)
    analytic = model.flops_analytic(cell.batch, cell.seq, "train")
    dtype = getattr(model.config, "dtype", "fp32")
    calibration = load_calibration(device)
    peak, source = peak_flops(device.type, name, dtype, calibration)
    bandwidth, bandwidth_source = peak_bandwidth(device.type, name, calibration)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return RoundResult(
        samples_s=run.samples_s,
        tokens=cell.batch * cell.seq,
        warmup_s=0.0,
        warmup_steps=0,
        warmup_capped=0,
        sentinel_s=sentinel,
        peak_mem_bytes=run.peak_mem_bytes,
        peak_mem_reserved_bytes=run.peak_mem_reserved_bytes,
        mem_kind=run.mem_kind,
        mem_baseline_bytes=run.mem_baseline_bytes,
        flops_per_step=None,
        flops_per_step_analytic=None if analytic is None else float(analytic),
        peak_flops_per_s=peak,
        peak_flops_source=source,
        params=int(model.num_params()),
        backends=run.backends,
        bytes_per_step_min=bytes_floor("train", weights, None, cell.batch),
        peak_bytes_per_s=bandwidth,
        peak_bytes_source=bandwidth_source,
        quality=run.quality,
    )


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
