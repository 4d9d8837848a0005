"""Test-only model builder for test_gate_e2e.py, loaded by the runner's worker by path.

It builds the real model and, before the runner builds the step, sets the planted slowdown
(HUBBENCH_TEST_SLOWDOWN, read by hubbench.step.build_step) for the cells of condition C. The
condition comes from the cell's `seed` (parameter initialisation only, so it does not change
the work a step does): seed % 3 -> A, C, B. One run thus measures A, C and B interleaved cell
by cell, so load changes on a shared machine hit all three alike.
"""

from __future__ import annotations

import os
from typing import Any

from hubbench.models import build_model
from hubbench.step import SLOWDOWN_ENV

CONDITIONS = ("a", "c", "b")  # by seed % 3; "c" runs with the planted slowdown
SLOWDOWN = 0.15


def condition(seed: int) -> str:
    return CONDITIONS[seed % len(CONDITIONS)]


def build(variant: str, **fields: Any) -> Any:
    if condition(int(fields.get("seed", 0))) == "c":
        os.environ[SLOWDOWN_ENV] = f"{variant}={SLOWDOWN}"
    else:
        os.environ.pop(SLOWDOWN_ENV, None)
    return build_model(variant, **fields)
