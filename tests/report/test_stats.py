"""The two-stage bootstrap: coverage with between-round drift, pairing, the classic checks."""

from __future__ import annotations

import numpy as np
import pytest

from hubbench.report.stats import (
    RatioCI,
    bootstrap_medians,
    percentile_interval,
    ratio_ci,
    rounds_of,
)


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


def test_rounds_of_reads_rows_old_and_new():
    new = {"round_samples_s": [[1e-2, 2e-2], [float("nan"), 3e-2, -1.0]], "samples_s": [9.0]}
    assert [list(r) for r in rounds_of(new)] == [[1e-2, 2e-2], [3e-2]]
    old = {"round_samples_s": None, "samples_s": [1e-2, float("nan"), 2e-2]}
    assert [list(r) for r in rounds_of(old)] == [[1e-2, 2e-2]]
    for missing in (None, float("nan")):
        assert rounds_of({"samples_s": missing}) == []


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


def test_the_ideal_ratio_is_the_metric_at_both_sides_speed_of_light():
    """Hand-computed: 1000 tokens in 2 s and 1 s measured; ceilings 0.5 s and 0.25 s."""
    from hubbench import schema
    from hubbench.report.stats import at_speed_of_light, ideal_ratio, metric_ratio

    def row(median: float, sol: float | None) -> dict:
        return {"tokens_per_s": 1000 / median, "time_median_s": median, "speed_of_light_s": sol,
                "peak_mem_bytes": 10, "samples_s": [median] * 5}  # fmt: skip

    tps, time = schema.metric("tokens_per_s"), schema.metric("time_median_s")
    slow, fast = row(2.0, 0.5), row(1.0, 0.25)
    assert at_speed_of_light(tps, slow) == pytest.approx(2000.0)  # 1000 tokens / 0.5 s
    assert at_speed_of_light(time, slow) == pytest.approx(0.5)
    assert ideal_ratio(tps, fast, slow) == pytest.approx(2.0)  # 4000 / 2000 tokens/s
    assert ideal_ratio(time, fast, slow) == pytest.approx(0.5)
    assert metric_ratio(tps, fast, slow).ideal == pytest.approx(2.0)
    assert ideal_ratio(schema.metric("peak_mem_bytes"), fast, slow) is None  # not time-derived
    assert ideal_ratio(tps, fast, row(2.0, None)) is None
    assert ideal_ratio(tps, fast, row(2.0, float("nan"))) is None
