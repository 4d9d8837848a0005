"""Tiny cells for the tests that run a cell's step under torchrun: nproc > 1
(tests/measure/test_ranks.py) and nnodes > 1 (tests/run/test_nodes.py)."""

from __future__ import annotations

from pathlib import Path

from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.variants import make_config

BUILDER = f"{Path(__file__).with_name('builders.py')}:build_tiny"


def cell(index: int = 0, nproc: int = 2, mode: str = "fwd_bwd", **measure) -> Cell:
    settings = {"warmup": 1, "warmup_min_s": 0.0, "warmup_max_s": 0.0, "repeats": 3,
                "rounds": 1, "timeout_s": 120.0, **measure}  # fmt: skip
    return Cell(
        index=index,
        variant="transformer",
        mode=mode,
        device="cpu",
        batch=2,
        seq=32,
        compile=False,
        threads=1,
        config=make_config("transformer", vocab=32, d_model=16, n_heads=2, n_layers=1),
        measure=Measure(**settings),
        nproc=nproc,
    )
