"""Bootstrap ratio CIs: A/A contains 1, a planted 15% slowdown is detected, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from hubbench.report.stats import RatioCI, ratio_ci


def _samples(rng: np.random.Generator, median: float, n: int = 20, noise: float = 0.03):
    return median * np.exp(rng.normal(0.0, noise, size=n))


def _tokens_ratio(a: np.ndarray, b: np.ndarray, tokens: float = 4096.0) -> RatioCI:
    """CI of tokens/s of b over a, as the gate computes it (B / A)."""
    return ratio_ci(tokens / np.median(b), tokens / np.median(a), b, a, time_power=-1)


def test_aa_intervals_never_lie_beyond_a_five_percent_drop():
    rng = np.random.default_rng(1)
    highs = []
    for _ in range(200):
        ci = _tokens_ratio(_samples(rng, 1e-2), _samples(rng, 1e-2))
        assert ci.bootstrapped and ci.low <= ci.point <= ci.high
        highs.append(ci.high)
    assert min(highs) > 0.95  # none of 200 A/A pairs would fail a 5% gate
    covered = np.mean([h >= 1.0 for h in highs])
    assert covered > 0.9


def test_fifteen_percent_slowdown_lies_entirely_below_five_percent():
    rng = np.random.default_rng(2)
    for _ in range(200):
        ci = _tokens_ratio(_samples(rng, 1e-2), _samples(rng, 1.15e-2))
        assert ci.high < 0.95, ci
        assert ci.point == pytest.approx(1 / 1.15, rel=0.05)


def test_time_metric_ratio_moves_the_other_way():
    rng = np.random.default_rng(3)
    a, b = _samples(rng, 1e-2), _samples(rng, 1.15e-2)
    ci = ratio_ci(float(np.median(b)), float(np.median(a)), b, a, time_power=1)
    assert ci.low > 1.05


def test_same_inputs_same_interval():
    rng = np.random.default_rng(4)
    a, b = _samples(rng, 1e-2), _samples(rng, 1e-2)
    assert _tokens_ratio(a, b) == _tokens_ratio(a, b)


def test_point_only_without_samples_or_for_memory():
    ci = ratio_ci(2.0, 1.0, [1.0, 1.1], [1.0, 1.0, 1.0], time_power=-1)
    assert not ci.bootstrapped and ci.low == ci.high == 2.0
    mem = ratio_ci(3.0, 2.0, [1.0] * 10, [1.0] * 10, time_power=0)
    assert not mem.bootstrapped and mem.point == 1.5


def test_missing_sample_lists():
    for missing in (None, float("nan")):
        assert not ratio_ci(1.0, 1.0, missing, [1.0] * 5, time_power=-1).bootstrapped


def test_bad_samples_are_dropped():
    a = [1e-2, float("nan"), 1e-2, -1.0, 1.01e-2, 0.99e-2]
    ci = ratio_ci(1.0, 1.0, a, a, time_power=-1)
    assert ci.n_num == 4 and ci.bootstrapped


def test_excludes():
    assert RatioCI(0.9, 0.85, 0.93, 5, 5, True).excludes(1.0) == -1
    assert RatioCI(1.1, 1.05, 1.2, 5, 5, True).excludes(1.0) == 1
    assert RatioCI(1.0, 0.95, 1.05, 5, 5, True).excludes(1.0) == 0
