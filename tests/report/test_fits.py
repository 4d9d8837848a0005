"""Scaling exponents and crossover points."""

from __future__ import annotations

import numpy as np
import pytest

from hubbench.report.fits import crossover, fit_exponent

NS = [512, 1024, 2048, 4096, 8192, 16384]


def test_exponent_of_a_pure_power_law():
    assert fit_exponent(NS, [n**2 * 1e-9 for n in NS]).exponent == pytest.approx(2.0)
    assert fit_exponent(NS, [n * 1e-6 for n in NS]).exponent == pytest.approx(1.0)


def test_exponent_is_fitted_on_the_upper_range():
    # fixed overhead dominates small n; the upper half still reads as quadratic
    t = [1e-4 + 1e-11 * n**2 for n in NS]
    fit = fit_exponent(NS, t)
    assert (fit.n_lo, fit.n_hi) == (4096, 16384)
    naive = np.polyfit(np.log(NS), np.log(t), 1)[0]  # every point: flattered by the overhead
    assert naive < 1.5 < fit.exponent < 2.0


def test_exponent_needs_three_lengths():
    # through two points any line fits exactly: a slope from them would claim what it cannot
    assert fit_exponent([1024], [1.0]) is None
    assert fit_exponent([1024, 1024], [1.0, 1.1]) is None
    assert fit_exponent([256, 2048], [1.0, 8.0]) is None
    assert fit_exponent([256, 2048, 2048, 256], [1.0, 8.0, 8.1, 1.1]) is None  # pooled repeats
    assert fit_exponent([256, 1024, 2048], [1.0, 4.0, 8.0]).exponent == pytest.approx(1.0)


def test_exponent_of_pooled_runs_spans_three_distinct_lengths():
    ns = [512, 1024, 2048, 4096] * 2  # two runs of the same cells
    fit = fit_exponent(ns, [n * 1e-6 for n in ns])
    assert (fit.n_lo, fit.n_hi, fit.points) == (1024, 4096, 6)


def test_crossover_interpolates_between_points():
    hub = [n * 4e-7 for n in NS]  # linear
    base = [n * 2e-7 + n * n * 5e-11 for n in NS]  # quadratic: equal at n = 4000
    c = crossover(NS, hub, base)
    assert c.kind == "cross"
    assert 2048 < c.n < 8192
    assert c.n == pytest.approx(4000, rel=0.25)
    assert "n ≈" in c.text()


def test_crossover_none_in_range_and_always():
    hub = [n * 1e-6 for n in NS]
    slower = crossover(NS, hub, [t / 2 for t in hub])
    assert slower.kind == "never" and slower.text() == "none in range (512–16k)"
    faster = crossover(NS, hub, [t * 2 for t in hub])
    assert faster.kind == "always"


def test_crossover_must_hold_to_the_end_of_the_range():
    hub = [1.0, 0.5, 0.5, 2.0, 2.0, 2.0]
    assert crossover(NS, hub, [1.0] * 6).kind == "never"


def test_crossover_from_two_points_is_bracketed_not_interpolated():
    c = crossover([256, 2048], [2.0, 1.0], [1.0, 2.0])  # slower at 256, faster at 2k
    assert c.kind == "cross" and c.n is None
    assert c.between == (256, 2048) and c.points == 2
    assert c.text() == "between 256 and 2k (2 points: not interpolated)"
    three = crossover([256, 1024, 2048], [2.0, 1.0, 1.0], [1.0, 2.0, 2.0])
    assert three.n is not None and three.between == (256, 1024)
    assert crossover([256, 2048], [1.0, 1.0], [2.0, 2.0]).kind == "always"  # observed, not fitted
