"""One cell, measured in this process: build, warm up, time, assemble; never raises for the cell.

Every failure of a cell is its outcome: `oom` (CPU allocator / CUDA OOM / MemoryError), `skipped`
(UnavailableError: no CUDA, no flash-attn, no mamba-ssm) or `error` (any other exception). The
worker (hubbench.worker) calls this for each cell it is sent.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from hubbench import schema
from hubbench.cell import Cell
from hubbench.errors import UnavailableError

MESSAGE_CHARS = 500


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised while measuring a cell."""
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


def execute_cell(cell: Cell, build: Callable[..., Any]) -> dict[str, Any]:
    """{'outcome': outcome columns, 'measurement': measurement columns or None}."""
    from hubbench.env import device_name

    start = time.perf_counter()  # bookkeeping (wall_s); step timing is measure.py's alone
    outcome: dict[str, Any] = {"status": "ok", "message": None, "device_name": None}
    measurement = None
    try:
        device = _device(cell)
        outcome["device_name"] = device_name(device)  # failed rows too: plots group by device
        measurement = _measure(cell, build, device, outcome["device_name"])
    except Exception as exc:  # every failure of a cell is its row's status
        outcome["status"], outcome["message"] = classify(exc)
    finally:
        gc.collect()
        _empty_cuda_cache()
    outcome["wall_s"] = time.perf_counter() - start
    return {
        "outcome": schema.part("outcome", outcome, f"cell {cell.index}"),
        "measurement": measurement,
    }


def _device(cell: Cell) -> Any:
    from hubbench.step import torch_device

    return torch_device(cell.device)


def _measure(cell: Cell, build: Callable[..., Any], device: Any, name: str) -> dict[str, Any]:
    from hubbench.env import load_calibration
    from hubbench.flops import count_flops, peak_flops
    from hubbench.measure import measure_step, rss_bytes, trim_heap
    from hubbench.metrics import measurement_columns
    from hubbench.step import build_step

    gc.collect()
    trim_heap()
    baseline = rss_bytes() if device.type == "cpu" else None
    model = build(cell.variant, cell.config)
    flops = None
    if cell.compile:  # FlopCounterMode cannot see inside compiled graphs: count eagerly
        eager = build_step(model, cell.mode, cell.batch, cell.seq, device)
        flops = count_flops(lambda: (eager.fn(), eager.sync()))
        del eager
    step = build_step(model, cell.mode, cell.batch, cell.seq, device, compile=cell.compile)
    m = measure_step(
        step,
        warmup=cell.measure.warmup,
        repeats=cell.measure.repeats,
        min_time_s=cell.measure.min_time_s,
        count=not cell.compile,
        mem_baseline=baseline,
    )
    if cell.compile:
        m.flops_per_step = flops
    analytic = (
        float(model.flops_analytic(cell.batch, cell.seq, cell.mode))
        if hasattr(model, "flops_analytic")
        else None
    )
    dtype = getattr(model.config, "dtype", "fp32")
    peak, source = peak_flops(device.type, name, dtype, load_calibration(device))
    return measurement_columns(
        m,
        analytic_flops=analytic,
        peak_flops=peak,
        peak_source=source,
        params=int(model.num_params()),
        where=f"cell {cell.index}",
    )


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
