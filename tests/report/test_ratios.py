"""hubbench.report.ratios: a row's rounds, and the ideal beside a ratio of two rows."""

from __future__ import annotations

import pytest

from hubbench import schema
from hubbench.report.ratios import at_speed_of_light, ideal_ratio, metric_ratio, rounds_of


def test_rounds_of_reads_rows_old_and_new():
    new = {"round_samples_s": [[1e-2, 2e-2], [float("nan"), 3e-2, -1.0]], "samples_s": [9.0]}
    assert [list(r) for r in rounds_of(new)] == [[1e-2, 2e-2], [3e-2]]
    old = {"round_samples_s": None, "samples_s": [1e-2, float("nan"), 2e-2]}
    assert [list(r) for r in rounds_of(old)] == [[1e-2, 2e-2]]
    for missing in (None, float("nan")):
        assert rounds_of({"samples_s": missing}) == []


def test_the_ideal_ratio_is_the_metric_at_both_sides_speed_of_light():
    """Hand-computed: 1000 tokens in 2 s and 1 s measured; ceilings 0.5 s and 0.25 s."""

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
