"""The gate of a same-run A/B (`hubbench run SUITE --against REF`, then `gate --ab RUN`).

Every cell was measured by both code versions in one run, their rounds back to back in each pass
(hubbench.run.rounds), so round r of the candidate and round r of the baseline saw the same
machine. The gate therefore judges each cell by its paired rounds: round r's ratio is
candidate/baseline of the two rounds' medians (raised to the metric's time power), the cell's
ratio is the trimmed geometric mean of those round ratios (the lowest and highest TRIM of them
left out), and its interval is a two-stage bootstrap (rounds drawn with replacement, the same
draws for both sides, then the steps within each drawn round). A machine that slowed down
between two passes moves both sides of a pass and cancels; a round where it changed between
the two halves of a pair is one round of several, which the trimming leaves out. (A trimmed
mean rather than the median of the rounds: with the 5-10 rounds a run has, the median's interval
is the wider one, and the trimming keeps the median's indifference to one odd pair.) A cell fails
(exit 1) only when its whole interval lies beyond the allowed worsening: the larger of
--max-regression and --min-effect, as in the baseline gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.report.compare import MIN_EFFECT
from hubbench.report.gate import Check, GateResult, judge
from hubbench.report.load import join_fields, labeller, norm_value, run_label
from hubbench.report.ratios import rounds_of
from hubbench.stats import CONFIDENCE, MIN_SAMPLES, RESAMPLES, SEED, RatioCI, percentile_interval

if TYPE_CHECKING:
    import pandas as pd

CANDIDATE, BASELINE = "candidate", "baseline"  # hubbench.run.against's side names
TRIM = 0.2  # of the round ratios, left out at each end


def is_ab(run: pd.DataFrame) -> bool:
    """Whether a run is a same-run A/B (its rows carry a side)."""
    return "side" in run.columns and run["side"].notna().any()


def gate_ab(
    run: pd.DataFrame,
    metric: str = "tokens_per_s",
    max_regression: float = 0.05,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    min_effect: float = MIN_EFFECT,
) -> GateResult:
    """Each cell's candidate against its baseline, from the run's paired rounds."""
    if not is_ab(run):
        raise ReportError(
            f"run {run_label(run)} is not a same-run A/B (no row has a side): record one with "
            "`hubbench run SUITE --against REF`, or gate two runs with --baseline/--candidate"
        )
    m = schema.metric(metric)
    fields = [f for f in join_fields(run) if f != "side"]
    label = labeller(run, fields)
    pairs = _pairs(run, fields)
    allowed = max(max_regression, min_effect)
    lo, hi = (1 - allowed, None) if m.higher_is_better else (None, 1 + allowed)
    settings = {"resamples": resamples, "confidence": confidence, "seed": seed}
    checks = []
    for sides in pairs.values():
        cand, base = sides.get(CANDIDATE), sides.get(BASELINE)
        any_row = cand if cand is not None else base
        check = Check(label(any_row), m, ref=None, value=None, ci=None, min=lo, max=hi)
        checks.append(_judge_pair(check, cand, base, settings))
    if not any(c.verdict == "regression" or (c.ci and c.ci.bootstrapped) for c in checks):
        raise ReportError(
            f"gate --ab: no cell of run {run_label(run)} has {MIN_SAMPLES}+ steps in paired "
            "rounds on both sides; re-run with more rounds or repeats"
        )
    commits = _commits(run)
    word = "drop" if m.higher_is_better else "rise"
    return GateResult(
        mode="ab",
        reference=f"baseline {commits.get(BASELINE, '?')[:12]}",
        candidate=f"candidate {commits.get(CANDIDATE, '?')[:12]} (run {run_label(run)})",
        checks=checks,
        confidence=confidence,
        resamples=resamples,
        threshold=f"{m.name}: fail when the CI of candidate/baseline from paired rounds lies "
        f"entirely beyond a {100 * allowed:g}% {word} (the larger of --max-regression "
        f"{100 * max_regression:g}% and --min-effect {100 * min_effect:g}%)",
        notes=[
            f"Same-run A/B: candidate = {commits.get(CANDIDATE)}, baseline = "
            f"{commits.get(BASELINE)}; each cell's rounds paired pass by pass."
        ],
    )


def _pairs(run: pd.DataFrame, fields: list[str]) -> dict[tuple, dict[str, Any]]:
    """Each cell's rows by side, cells in run order."""
    out: dict[tuple, dict[str, Any]] = {}
    for _, row in run.iterrows():
        key = tuple(norm_value(row[f]) for f in fields)
        out.setdefault(key, {})[str(norm_value(row["side"]))] = row
    return out


def _commits(run: pd.DataFrame) -> dict[str, str]:
    out: dict[str, str] = {}
    for _, row in run.iterrows():
        side, commit = norm_value(row["side"]), norm_value(row.get("side_commit"))
        if side is not None and commit is not None:
            out.setdefault(str(side), str(commit))
    return out


def _judge_pair(check: Check, cand: Any, base: Any, settings: Mapping[str, Any]) -> Check:
    """One cell's verdict: a side missing or failed, else its paired-round ratio judged."""
    m = check.metric
    if cand is None or base is None:
        check.verdict = "missing"
        check.note = f"no {CANDIDATE if cand is None else BASELINE} row"
        return check
    check.ref, check.value = _num(base, m), _num(cand, m)
    if base["status"] != "ok":
        check.verdict = "missing"
        check.note = f"baseline {base['status']}: nothing to compare"
    elif cand["status"] != "ok":
        check.verdict, check.note = "regression", f"ok → {cand['status']}: {cand['message']}"
    elif check.ref is None or check.value is None:
        check.verdict, check.note = "missing", f"{m.name} not recorded"
    else:
        check.ci = paired_round_ratio(
            _paired_rounds(cand, base), m.time_power or 0, check.value / check.ref, **settings
        )
        judge(check)
    return check


def _num(row: Any, m: schema.Column) -> float | None:
    v = norm_value(row.get(m.name))
    return None if v is None else float(v)


def _paired_rounds(cand: Any, base: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Round r of each side where both have it and measured it in the same session (a resumed
    run's rounds pair only with the rounds measured beside them)."""
    rc, rb = rounds_of(cand), rounds_of(base)
    sc, sb = _sessions(cand), _sessions(base)
    out = []
    for r in range(min(len(rc), len(rb))):
        a, b = (sc[r] if r < len(sc) else None), (sb[r] if r < len(sb) else None)
        if a == b:
            out.append((rc[r], rb[r]))
    return out


def _sessions(row: Any) -> list[Any]:
    value = row.get("round_sessions")
    if value is None or np.isscalar(value):
        return []
    return [norm_value(v) for v in value]


def paired_round_ratio(
    rounds: Sequence[tuple[np.ndarray, np.ndarray]],
    time_power: int,
    fallback: float,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> RatioCI:
    """candidate/baseline of a metric ~ step time ** time_power, from paired rounds (candidate
    steps, baseline steps): the trimmed geometric mean over rounds of each round's ratio of
    medians, with a two-stage paired bootstrap interval. `fallback`: the point where it cannot
    be bootstrapped (a memory metric, too few steps, fewer than two rounds)."""
    n_c = sum(len(c) for c, _ in rounds)
    n_b = sum(len(b) for _, b in rounds)
    shape = (len(rounds), len(rounds))
    if time_power == 0 or len(rounds) < 2 or min(n_c, n_b) < MIN_SAMPLES:
        return RatioCI(fallback, fallback, fallback, n_c, n_b, False, shape, True)
    rng = np.random.default_rng(seed)
    logs = np.array([math.log(np.median(c) / np.median(b)) for c, b in rounds])  # (R,)
    point = math.exp(time_power * float(trimmed_mean(logs[None, :])[0]))
    # per replicate and round, each side's median of its steps drawn again: (B, R)
    within = np.stack(
        [_resampled_median(c, resamples, rng) - _resampled_median(b, resamples, rng)
         for c, b in rounds], axis=1,
    )  # fmt: skip
    pick = rng.integers(0, len(rounds), (resamples, len(rounds)))  # rounds drawn, both sides
    drawn = np.take_along_axis(within, pick, axis=1)
    ratios = np.exp(time_power * trimmed_mean(drawn))
    low, high = percentile_interval(ratios, confidence)
    return RatioCI(point, low, high, n_c, n_b, True, shape, True)


def trimmed_mean(values: np.ndarray) -> np.ndarray:
    """Each row's mean without its lowest and highest TRIM share (at least one value stays)."""
    n = values.shape[1]
    cut = min(int(TRIM * n), (n - 1) // 2)
    return np.sort(values, axis=1)[:, cut : n - cut].mean(axis=1)


def _resampled_median(steps: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """log of the median of the steps drawn with replacement, per replicate: (B,)."""
    draws = rng.integers(0, len(steps), (resamples, len(steps)))
    return np.log(np.median(np.asarray(steps)[draws], axis=1))
