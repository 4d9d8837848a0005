"""One round of a cell, measured in this process: build, warm up, time; never raises for the cell.

Every failure of a cell is its outcome (hubbench.measure.outcome). The worker process
(hubbench.measure.entry) calls `execute_cell` for each cell it is sent; a cell of nproc > 1 runs
under torchrun (hubbench.measure.launch), whose ranks each call `measure_round`.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from hubbench import schema
from hubbench.measure.device import torch_device
from hubbench.measure.env import device_name
from hubbench.measure.flops import count_flops as counted_flops
from hubbench.measure.launch import launch
from hubbench.measure.memory import rss_bytes, trim_heap
from hubbench.measure.metrics import RoundResult
from hubbench.measure.outcome import classify
from hubbench.measure.process import DEFAULT_BUILDER
from hubbench.measure.result import round_result
from hubbench.measure.step import build_step
from hubbench.measure.timing import ALONE, Group, Measurement, measure_step, sentinel_s
from hubbench.plan.cell import Cell
from hubbench.quality.train import train_and_evaluate
from hubbench.stats import summarize


def execute_cell(
    cell: Cell, build: Callable[..., Any], count_flops: bool = True, builder: str | None = None
) -> dict[str, Any]:
    """One round of `cell`: {'outcome': outcome columns, 'round': RoundResult JSON or None}.

    The model is built afresh for the round. `count_flops`: count FLOPs on its first warm-up
    step (the runner asks for it in a cell's first round only). A cell of nproc > 1 runs under
    torchrun (hubbench.measure.launch), whose ranks load `builder` (the spec `build` came from).
    """
    start = time.perf_counter()  # bookkeeping (wall_s); step timing is measure.timing's alone
    outcome: dict[str, Any] = {"status": "ok", "message": None, "device_name": None}
    result = None
    try:
        torch.set_num_threads(cell.threads)
        device = torch_device(cell.device)
        outcome["device_name"] = name = device_name(device)  # failed rows too: plots group by it
        if cell.world > 1:
            result = launch(cell, builder or DEFAULT_BUILDER, count_flops).to_json()
        else:
            result = measure_round(cell, build, device, name, count_flops).to_json()
    except Exception as exc:  # every failure of a cell is its row's status
        outcome["status"], outcome["message"] = classify(exc)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    outcome["wall_s"] = time.perf_counter() - start
    return {"outcome": schema.part("outcome", outcome, f"cell {cell.index}"), "round": result}


def measure_round(
    cell: Cell,
    build: Callable[..., Any],
    device: torch.device,
    name: str,
    count_flops: bool,
    group: Group = ALONE,
) -> RoundResult:
    """This process's round of `cell` on `device` (named `name`): the model built afresh, its
    step warmed up and timed, with the rest of `group` (torchrun's ranks: the rank seeds the
    batch, the loss runs data-parallel)."""
    sentinel = sentinel_s() if group.rank == 0 else None
    gc.collect()
    trim_heap()
    baseline = rss_bytes() if device.type == "cpu" else None
    model = build(cell.variant, cell.config)
    if cell.mode == "quality":
        return _quality(cell, model, device, name, sentinel)
    flops = _eager_flops(cell, model, device) if cell.compile and count_flops else None
    step = build_step(model, cell.mode, cell.batch, cell.seq, device, seed=group.rank,
                      compile=cell.compile, decode_tokens=cell.decode_tokens,
                      data_parallel=group.world > 1, cuda_graphs=cell.cuda_graphs)  # fmt: skip
    s = cell.measure
    m = measure_step(step, warmup=s.warmup, warmup_min_s=s.warmup_min_s,
                     warmup_max_s=s.warmup_max_s, repeats=s.repeats, min_time_s=s.min_time_s,
                     count=count_flops and not cell.compile, mem_baseline=baseline,
                     group=group, l2_flush=cell.l2_flush)  # fmt: skip
    if cell.compile:
        m = dataclasses.replace(m, flops_per_step=flops)
    state = step.state_bytes() if step.state_bytes else None
    return round_result(cell, model, m, device=device, name=name, sentinel=sentinel,
                        per_call=step.per_call, state_bytes=state, world=group.world)  # fmt: skip


def _eager_flops(cell: Cell, model: Any, device: torch.device) -> float:
    """FLOPs of the cell's step run eagerly: FlopCounterMode cannot see into compiled graphs."""
    eager = build_step(model, cell.mode, cell.batch, cell.seq, device)
    return counted_flops(lambda: (eager.fn(), eager.sync()))


def _quality(
    cell: Cell, model: Any, device: torch.device, name: str, sentinel: float | None
) -> RoundResult:
    """A quality cell's one round: the training run, its updates as the step samples."""
    run = train_and_evaluate(cell, model, device)
    m = Measurement(
        samples=run.samples_s,
        stats=summarize(run.samples_s),
        tokens=cell.batch * cell.seq,
        peak_mem_bytes=run.peak_mem_bytes,
        peak_mem_reserved_bytes=run.peak_mem_reserved_bytes,
        mem_kind=run.mem_kind,
        mem_baseline_bytes=run.mem_baseline_bytes,
        flops_per_step=None,
        warmup_s=0.0,
        warmup_steps=0,
        warmup_capped=False,
        backends=run.backends,
    )
    return round_result(cell, model, m, device=device, name=name, sentinel=sentinel,
                        quality=run.quality)  # fmt: skip
