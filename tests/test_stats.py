"""hubbench.stats: Student-t quantiles and intervals over seeds; the two-stage bootstrap
(coverage with between-round drift, pairing, the classic checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hubbench.stats import (
    RatioCI,
    bootstrap_medians,
    mean_interval,
    percentile_interval,
    ratio_ci,
    t_quantile,
)

# two-sided 95% (p = 0.975) Student-t quantiles for df 1..30, as printed in every t-table
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@pytest.mark.parametrize("df", range(1, 31))
def test_t_quantile_matches_the_table(df: int) -> None:
    assert t_quantile(0.975, df) == pytest.approx(T975[df - 1], abs=5e-4)
    assert t_quantile(0.025, df) == -t_quantile(0.975, df)


def test_t_quantile_at_other_levels_and_large_df() -> None:
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, rel=1e-8)  # tan(pi * 0.475)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)
    assert t_quantile(0.975, 2) == pytest.approx(4.30265273, rel=1e-8)  # closed form for df 2
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    for df, t in ((60, 2.000), (120, 1.980), (1000, 1.962)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    for df in (1e5, 1e6, 1e12):  # tends to the normal quantile, from above
        assert 1.95996398 < t_quantile(0.975, df) == pytest.approx(1.959964, abs=3e-5)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_mean_interval_by_hand() -> None:
    mean, lo, hi, how = mean_interval([0.9, 0.8, 0.7])
    # sd 0.1, t(2) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.2484
    assert (mean, how) == (pytest.approx(0.8), "95% t")
    assert hi - mean == pytest.approx(0.24844, abs=1e-4) and mean - lo == pytest.approx(hi - mean)
    assert mean_interval([0.2, 0.4])[1:] == (0.2, 0.4, "min-max")


def test_mean_interval_at_ten_seeds_takes_t9_not_the_normal_quantile() -> None:
    values = [float(v) for v in range(10)]  # mean 4.5, sd sqrt(55 / 6)
    mean, lo, hi, _ = mean_interval(values)
    half = 2.262157 * math.sqrt(55 / 6) / math.sqrt(10)
    assert (mean, hi - mean) == (pytest.approx(4.5), pytest.approx(half, rel=1e-6))
    assert mean - lo == pytest.approx(half, rel=1e-6)  # 1.96 in place of 2.262 was 13% short


def _rounds(rng, median, rounds=5, n=5, drift=None, noise=0.02, drift_sd=0.05):
    """Step times of one cell: a round effect (the machine's drift) times per-step jitter."""
    effect = rng.normal(0.0, drift_sd, rounds) if drift is None else drift
    return [median * np.exp(e + rng.normal(0.0, noise, n)) for e in effect]


def _tokens_ratio(a, b, paired=False, tokens: float = 4096.0) -> RatioCI:
    """CI of tokens/s of b over a, as the gate computes it (B / A)."""
    med = [float(np.median(np.concatenate(x))) for x in (a, b)]
    return ratio_ci(tokens / med[1], tokens / med[0], b, a, time_power=-1, paired=paired)


def _coverage(make, trials=150) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(trials):
        a, b = make(rng)
        ci = _tokens_ratio(a, b)
        hits += ci.low <= 1.0 <= ci.high
    return hits / trials


def test_intervals_cover_the_truth_when_rounds_drift():
    """Two runs of the same cell, each with its own drift: the CI must contain 1 (>= 90%)."""
    assert _coverage(lambda rng: (_rounds(rng, 1e-2), _rounds(rng, 1e-2))) >= 0.9


def test_pooling_the_samples_would_not():
    """The same data with its rounds thrown together (the old method) covers far less: the
    coverage test above can fail, and the round structure is what makes it pass."""

    def pooled(rng):
        a, b = _rounds(rng, 1e-2), _rounds(rng, 1e-2)
        return [np.concatenate(a)], [np.concatenate(b)]

    assert _coverage(pooled) <= 0.7


def test_paired_rounds_cancel_drift_common_to_a_pass():
    """Two cells of one run share each pass's drift: pairing keeps it out of their ratio."""
    rng = np.random.default_rng(3)
    widths = {True: [], False: []}
    for _ in range(40):
        drift = rng.normal(0.0, 0.08, 5)
        a, b = _rounds(rng, 1e-2, drift=drift), _rounds(rng, 2e-2, drift=drift)
        for paired in (True, False):
            ci = _tokens_ratio(a, b, paired=paired)
            assert ci.low <= 0.5 <= ci.high or paired is False
            widths[paired].append(ci.high / ci.low)
    log_width = {k: np.median(np.log(v)) for k, v in widths.items()}
    assert log_width[True] < 0.5 * log_width[False]


def test_planted_fifteen_percent_slowdown_lies_entirely_below_five_percent():
    rng = np.random.default_rng(2)
    for _ in range(100):
        a = _rounds(rng, 1e-2, drift_sd=0.02)  # a quiet machine
        ci = _tokens_ratio(a, _rounds(rng, 1.15e-2, drift_sd=0.02))
        assert ci.high < 0.97, ci
        assert ci.point == pytest.approx(1 / 1.15, rel=0.06)


def test_time_metric_ratio_moves_the_other_way():
    rng = np.random.default_rng(3)
    a, b = _rounds(rng, 1e-2, noise=0.01), _rounds(rng, 1.3e-2, noise=0.01)
    med = [float(np.median(np.concatenate(x))) for x in (a, b)]
    assert ratio_ci(med[1], med[0], b, a, time_power=1).low > 1.05


def test_same_inputs_same_interval():
    rng = np.random.default_rng(4)
    a, b = _rounds(rng, 1e-2), _rounds(rng, 1e-2)
    assert _tokens_ratio(a, b) == _tokens_ratio(a, b)


def test_point_only_without_samples_or_for_memory():
    ci = ratio_ci(2.0, 1.0, [np.array([1.0, 1.1])], [np.ones(3)], time_power=-1)
    assert not ci.bootstrapped and ci.low == ci.high == 2.0
    mem = ratio_ci(3.0, 2.0, [np.ones(10)], [np.ones(10)], time_power=0)
    assert not mem.bootstrapped and mem.point == 1.5


def test_uneven_rounds_and_pairing_rules():
    rng = np.random.default_rng(5)
    uneven = [rng.random(3) + 1, rng.random(7) + 1]
    medians = bootstrap_medians([uneven], paired=False, resamples=500)
    assert medians.shape == (500, 1) and np.isfinite(medians).all()
    with pytest.raises(ValueError, match="same number of rounds"):
        bootstrap_medians([uneven, [rng.random(4)]], paired=True)
    low, high = percentile_interval(np.arange(101.0), 0.9)
    assert (low, high) == pytest.approx((5.0, 95.0))


def test_excludes_and_beyond():
    assert RatioCI(0.9, 0.85, 0.93, 5, 5, True).excludes(1.0) == -1
    assert RatioCI(1.1, 1.05, 1.2, 5, 5, True).excludes(1.0) == 1
    assert RatioCI(1.0, 0.95, 1.05, 5, 5, True).excludes(1.0) == 0
    assert RatioCI(0.97, 0.96, 0.98, 5, 5, True).beyond(0.03) == 0  # excludes 1, not 1 - 3%
    assert RatioCI(0.9, 0.88, 0.92, 5, 5, True).beyond(0.03) == -1
