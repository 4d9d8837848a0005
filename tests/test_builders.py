"""The test-only builders' planted slowdown: the rule, checked on a simulated clock."""

from __future__ import annotations

import itertools

import builders
import pytest


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-4  # every read (the spin loop's too) moves time on a little
        return self.now


@pytest.mark.parametrize("frac", [0.15, 0.25])
def test_slowdown_converges_to_the_asked_fraction(monkeypatch, frac: float) -> None:
    clock = FakeClock()
    monkeypatch.setattr(builders.time, "perf_counter", clock)
    hook = builders.Slowdown(frac)
    starts = []
    for step in range(40):
        starts.append(clock.now)
        hook(None, None)
        clock.now += 1.0  # the step itself
        if step == 20:
            clock.now += 50.0  # a long pause between two measurements
    periods = [b - a for a, b in itertools.pairwise(starts)]
    assert periods[-1] == pytest.approx(1 + frac, rel=0.01)
    assert max(periods[22:]) < (1 + frac) * 1.05  # the pause is not charged to later steps
