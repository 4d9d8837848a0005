"""Cells, plans and rows for the tests of hubbench/run: tiny transformers on the CPU.

The worker builds builders.TinyLM (tests/builders.py, loaded by file path) and plants the faults
a test asks for.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hubbench.measure.metrics import RoundResult
from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.suite import Plan
from hubbench.plan.variants import make_config
from hubbench.run.rows import CellState

BUILDER = f"{Path(__file__).parents[1] / 'builders.py'}:build_tiny"

ENV = {"hubbench_version": "0", "git_commit": None, "git_dirty": None, "host": "h",
       "cpu_model": "c", "torch_version": "t", "cuda_version": None,
       "cudnn_version": None, "python_version": "3.11.0", "os": "Linux",
       "python_platform": "linux", "nvidia_driver_version": None, "glibc_tunables": None,
       **{f"{pkg}_version": "not installed" for pkg in ("numpy", "triton", "flash_attn",
          "mamba_ssm", "causal_conv1d", "torch_tb_profiler")}}  # fmt: skip


def cell(
    index: int,
    variant: str = "transformer",
    seq: int = 32,
    timeout_s: float = 60.0,
    rounds: int = 1,
    **fields: Any,
) -> Cell:
    base = {"vocab": 32, "d_model": 16, "n_heads": 2, "n_layers": 1}
    return Cell(
        index=index,
        variant=variant,
        mode="fwd_bwd",
        device=fields.pop("device", "cpu"),
        batch=1,
        seq=seq,
        compile=False,
        threads=fields.pop("threads", 1),
        config=make_config(variant, **{**base, **fields}),
        measure=Measure(
            warmup=1,
            warmup_min_s=0.0,
            warmup_max_s=0.0,
            repeats=2,
            rounds=rounds,
            timeout_s=timeout_s,
        ),
    )


def grid() -> list[Cell]:
    """Two comparison groups (seq 32, 64), each a transformer with two attention kernels."""
    cells = []
    for seq in (32, 64):
        for attention in ("naive", "sdpa"):
            cells.append(cell(len(cells), seq=seq, attention=attention, rounds=2))
    return cells


def plan(cells: list[Cell]) -> Plan:
    return Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))


def failed(c: Cell) -> CellState:
    outcome = {"status": "error", "message": "m", "device_name": None, "wall_s": None}
    return CellState(c, failure=outcome)


def measured(c: Cell, build: Any, rounds: int = 1) -> CellState:
    """`rounds` rounds of `c` measured in this process (hubbench.measure.cell.execute_cell)."""
    from hubbench.measure.cell import execute_cell

    state = CellState(c)
    for _ in range(rounds):
        answer = execute_cell(c, build, count_flops=not state.rounds)
        state.rounds.append(RoundResult.from_json(answer["round"]))
    return state
