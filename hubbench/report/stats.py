"""Bootstrap confidence intervals for the ratio of two cells' metrics, from raw step times.

Each side's per-step times are resampled with replacement, the median of every resample is taken,
and the metric ratio is rebuilt from those medians (a metric ~ time^p moves by (m*/m)^p). The
interval is the percentile interval of the resampled ratios. The generator is seeded per call, so
the same two runs always give the same interval whatever order the checks run in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0
MIN_SAMPLES = 3  # below this a median has no spread worth resampling


@dataclass(frozen=True)
class RatioCI:
    point: float  # num / den from the stored metric values
    low: float
    high: float
    n_num: int  # raw samples behind each side
    n_den: int
    bootstrapped: bool  # False: point only (metric not time-derived, or too few samples)

    def excludes(self, value: float) -> int:
        """+1 if the whole interval lies above value, -1 if below, 0 if it contains it."""
        if self.low > value:
            return 1
        if self.high < value:
            return -1
        return 0


def clean_samples(samples: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if samples is None or np.isscalar(samples):  # a null cell reads back as None or NaN
        return np.empty(0)
    arr = np.asarray(list(samples), dtype=float)
    return arr[np.isfinite(arr) & (arr > 0)]


def bootstrap_medians(samples: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    idx = rng.integers(0, len(samples), size=(resamples, len(samples)))  # (R, n)
    return np.median(samples[idx], axis=1)  # (R,)


def ratio_ci(
    num_value: float,
    den_value: float,
    num_samples: Sequence[float] | np.ndarray | None,
    den_samples: Sequence[float] | np.ndarray | None,
    time_power: int,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> RatioCI:
    """CI of num_value / den_value, where each value ~ median(its samples) ** time_power."""
    point = float(num_value) / float(den_value)
    a, b = clean_samples(num_samples), clean_samples(den_samples)
    if time_power == 0 or len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return RatioCI(point, point, point, len(a), len(b), bootstrapped=False)
    rng = np.random.default_rng(seed)
    rel_a = bootstrap_medians(a, rng, resamples) / np.median(a)  # (R,)
    rel_b = bootstrap_medians(b, rng, resamples) / np.median(b)  # (R,)
    ratios = point * (rel_a / rel_b) ** time_power
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return RatioCI(point, float(low), float(high), len(a), len(b), bootstrapped=True)
