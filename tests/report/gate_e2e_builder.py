"""Test-only model builder for test_gate_e2e.py, loaded by the runner's worker by path.

It builds the real model and plants a slowdown (builders.Slowdown) in the cells of condition C.
The condition comes from the cell's `seed` (parameter initialisation only, so it does not change
the work a step does): seed % 3 -> A, C, B. One run thus measures A, C and B interleaved cell
by cell, so load changes on a shared machine hit all three alike.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for `builders`

from builders import Slowdown

from hubbench.models import build as build_real

CONDITIONS = ("a", "c", "b")  # by seed % 3; "c" runs with the planted slowdown
SLOWDOWN = 0.40


def condition(seed: int) -> str:
    return CONDITIONS[seed % len(CONDITIONS)]


def build(variant: str, config: Any) -> Any:
    model = build_real(variant, config)
    if condition(config.seed) == "c":
        model.register_forward_pre_hook(Slowdown(SLOWDOWN))
    return model
