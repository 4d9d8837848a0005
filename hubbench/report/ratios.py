"""A row's step times and the ratios of two rows' metrics, with their bootstrap intervals
(hubbench.stats): the one ratio of two cells that compare, the gate, the speedup figures and the
headline all take. Also the bootstrap settings a user can give, checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hubbench.report.load import norm_value
from hubbench.stats import CONFIDENCE, RESAMPLES, SEED, RatioCI, Rounds, ratio_ci

if TYPE_CHECKING:
    from hubbench.schema import Column


def _clean(samples: Any) -> np.ndarray:
    if samples is None or np.isscalar(samples):  # a null cell reads back as None or NaN
        return np.empty(0)
    arr = np.asarray(list(samples), dtype=float)
    return arr[np.isfinite(arr) & (arr > 0)]


def rounds_of(row: Mapping[str, Any]) -> Rounds:
    """A row's step times by round (`round_samples_s`), or `samples_s` as one round."""
    by_round = row.get("round_samples_s")
    if by_round is not None and not np.isscalar(by_round) and len(by_round):
        out = [_clean(r) for r in by_round]
        return [r for r in out if len(r)]
    flat = _clean(row.get("samples_s"))
    return [flat] if len(flat) else []


def paired(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether rows' rounds were measured pass by pass together: one run, and every round r of
    each in the same session (a resumed run's later rounds pair only with each other)."""

    def sessions(row: Mapping[str, Any]) -> tuple | None:
        value = row.get("round_sessions")
        if value is None or np.isscalar(value) or not len(value):
            return None
        return tuple(norm_value(v) for v in value)

    first = sessions(rows[0])
    run = norm_value(rows[0].get("run_id"))
    return first is not None and all(
        norm_value(r.get("run_id")) == run and sessions(r) == first for r in rows
    )


def row_metric(row: Mapping[str, Any], name: str) -> float | None:
    """A row's metric as a float; None when it is null or absent."""
    v = norm_value(row.get(name))
    return None if v is None else float(v)


def metric_ratio(
    metric: Column,
    num: Mapping[str, Any],
    den: Mapping[str, Any],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> RatioCI | None:
    """CI of num[metric] / den[metric] for two ok rows; None when either value is missing.

    The one ratio of two cells: compare (the same cell in two runs), the gate (two cells of one
    run, or a baseline), the speedup plot and the report's headline all take theirs from here,
    with its ideal (`RatioCI.ideal`, at both sides' speed of light) beside it.
    """
    a, b = row_metric(num, metric.name), row_metric(den, metric.name)
    if a is None or b is None or b == 0:
        return None
    ci = ratio_ci(
        a, b, rounds_of(num), rounds_of(den), metric.time_power, paired=paired([num, den]),
        resamples=resamples, confidence=confidence, seed=seed,
    )  # fmt: skip
    return dataclasses.replace(ci, ideal=ideal_ratio(metric, num, den))


def at_speed_of_light(metric: Column, row: Mapping[str, Any]) -> float | None:
    """The row's metric had its step taken `speed_of_light_s` instead of `time_median_s`: a
    metric ~ time^p scales by (sol / median)^p. None for a metric that is not time-derived
    (memory) and where the row has no speed of light."""
    value = row_metric(row, metric.name)
    sol, median = row_metric(row, "speed_of_light_s"), row_metric(row, "time_median_s")
    if not metric.time_power or value is None or not sol or not median:
        return None
    return value * (sol / median) ** metric.time_power


def ideal_ratio(metric: Column, num: Mapping[str, Any], den: Mapping[str, Any]) -> float | None:
    """num / den at both sides' speed of light: the ratio the FLOPs and bytes allow."""
    a, b = at_speed_of_light(metric, num), at_speed_of_light(metric, den)
    return a / b if a is not None and b else None


def check_settings(resamples: int, confidence: float) -> None:
    """Bootstrap settings a user can give (--resamples, --confidence), checked."""
    from hubbench.errors import ReportError

    if resamples < 100:
        raise ReportError(f"--resamples must be >= 100 (got {resamples})")
    if not (math.isfinite(confidence) and 0.5 <= confidence < 1):
        raise ReportError(f"--confidence must lie in [0.5, 1) (got {confidence})")
