"""Whether the machine changed between two runs, from what the runs recorded about it: the guard
of the baseline gate, compare and the headline against a slower machine passing for a slower
commit.

The noise sentinel (a fixed matmul, timed before every round: report.noise) does the same work
in every run, so the ratio of its medians, candidate over baseline, is how much slower the
machine was, whatever the code did. Its interval comes from hubbench.stats.ratio_ci with each
reading as a round of its own (a bootstrap of the readings), the runs resampled independently.
Not the pass (round r of every cell) as the round: a loaded machine's readings jump between
~12 ms (the worker got a core) and 16-20 ms (it shared one) within a pass, so five passes gave
intervals like [1.00, 1.46] for a machine 1.31x slower, which the gate took for no change and
failed three transformer cells on (benchmarks/gate_under_load.py, docs/measurement.md).

The machine changed when that interval lies entirely beyond 1 ± FLOOR. The runs' own spread is
already in the interval (a run whose sentinel wandered gets a wide one), so it is not added to
the band: a band as wide as the noisier run's p10-p90 spread would let a loaded candidate hide
its own load. FLOOR is the gate's noise floor (MIN_EFFECT in report.compare): a smaller shift
cannot by itself carry a check past the gate's threshold. Thread counts that differ are a
change too. A host name that differs alone is not (CI runners of one kind), only said beside a
change; so is the load average the rows record (schema 11), as evidence, never as a reason.

A changed machine decides nothing about the code: a check the machine could explain is
inconclusive, never a failure, and never a pass either: a slower machine explains a check that
points worse, a faster one a check that points better or holds (a 25% slowdown measured on a
machine 1.7x faster passed as "6 pass" before, benchmarks/gate_under_load.py). A check that
points worse on a faster machine stands (docs/measurement.md, "Which gate when").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hubbench.report.load import norm_value
from hubbench.report.noise import load_average
from hubbench.stats import CONFIDENCE, RESAMPLES, SEED, RatioCI, ratio_ci

if TYPE_CHECKING:
    import pandas as pd

# As compare.MIN_EFFECT (the A/A noise floor of a cell). Quiet `ci` A/A pairs on the 2-core box:
# sentinel medians 0.97-1.00x, intervals within [0.95, 1.03]; loaded 1.29-1.70x when the load
# bit (docs/measurement.md, "Which gate when").
FLOOR = 0.05
ADVICE = (
    "rerun both on a quiet machine, measure both commits in one run (`hubbench run SUITE "
    "--against REF`, then `hubbench gate --ab RUN`: rounds paired), or gate ratios within one "
    "run (`hubbench gate --ratios RUN`): both sides then saw the same load"
)


@dataclass(frozen=True)
class Machine:
    """What the two runs say about their machine; `reasons` empty: no change seen."""

    factor: float | None  # candidate's sentinel median over the baseline's (> 1: it was slower)
    ci: RatioCI | None
    tolerance: float
    reasons: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.reasons)

    @property
    def slower(self) -> bool:
        """Changed, and not known to be faster: what can make a candidate look worse."""
        return self.changed and (self.factor is None or self.factor > 1)

    @property
    def faster(self) -> bool:
        """Changed, and the sentinel says faster: what can make a slower candidate pass."""
        return self.changed and self.factor is not None and self.factor < 1

    def words(self) -> str:
        """'the machine was 1.52× slower in the candidate run', for a verdict's note."""
        if self.factor is None or self.ci is None:
            return "the machine changed in the candidate run (" + "; ".join(self.reasons) + ")"
        if self.factor >= 1:
            return f"the machine was {self.factor:.2f}× slower in the candidate run"
        return f"the machine was {1 / self.factor:.2f}× faster in the candidate run"

    def short(self) -> str:
        """'machine changed, 1.52× slower', for compare's verdict column."""
        if self.factor is None or self.ci is None:
            return "machine changed (" + "; ".join(self.reasons) + ")"
        return f"machine changed, {max(self.factor, 1 / self.factor):.2f}× " + (
            "slower" if self.factor >= 1 else "faster"
        )

    def line(self) -> str:
        """The note under a table: what changed, and what to do."""
        return f"Machine changed: {'; '.join(self.reasons)}. {ADVICE[0].upper()}{ADVICE[1:]}."


def readings(rows: Iterable[Mapping[str, Any]]) -> dict[Any, list[np.ndarray]]:
    """Sentinel readings by thread count, each as a one-reading round (for stats.ratio_ci)."""
    out: dict[Any, list[np.ndarray]] = {}
    for row in rows:
        values = row.get("round_sentinel_s")
        if values is None or np.isscalar(values):
            continue
        found = [norm_value(v) for v in values]
        out.setdefault(norm_value(row.get("threads")), []).extend(
            np.array([float(v)]) for v in found if v is not None and v > 0
        )
    return out


def _values(df: pd.DataFrame, field: str) -> set[str]:
    if field not in df.columns:
        return set()
    return {str(v) for v in map(norm_value, df[field]) if v is not None}


def machine_change(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    *,
    floor: float = FLOOR,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Machine:
    """Did the machine change from `baseline` to `candidate`, beyond 1 ± `floor`?"""
    rows_b, rows_c = baseline.to_dict("records"), candidate.to_dict("records")
    reasons = []
    threads = (_values(baseline, "threads"), _values(candidate, "threads"))
    if all(threads) and threads[0] != threads[1]:
        reasons.append(
            f"threads: the baseline ran {', '.join(sorted(threads[0]))}, the candidate "
            f"{', '.join(sorted(threads[1]))}"
        )
    ci = _sentinel_ratio(readings(rows_b), readings(rows_c), resamples, confidence, seed)
    if ci is not None and ci.bootstrapped and ci.beyond(floor):
        reasons.insert(
            0,
            f"the noise sentinel took {ci.point:.2f}× the baseline's time "
            f"[{ci.low:.2f}, {ci.high:.2f}], beyond 1 ± {100 * floor:g}%",
        )
    hosts = (_values(baseline, "host"), _values(candidate, "host"))
    if reasons and all(hosts) and hosts[0] != hosts[1]:
        reasons.append(f"host: {', '.join(sorted(hosts[0]))} → {', '.join(sorted(hosts[1]))}")
    # evidence beside a change, never a reason of its own: the load counts our own worker and
    # is updated every 5 s, and no measurement says it predicts a wrong verdict
    loads = (load_average(rows_b), load_average(rows_c))
    if reasons and loads[0] is not None and loads[1] is not None:
        reasons.append(
            f"load average (1 min): median {loads[0].median:.1f} in the baseline run, "
            f"{loads[1].median:.1f} in the candidate's"
        )
    return Machine(None if ci is None else ci.point, ci, floor, tuple(reasons))


def _sentinel_ratio(
    base: dict[Any, list[np.ndarray]],
    cand: dict[Any, list[np.ndarray]],
    resamples: int,
    confidence: float,
    seed: int,
) -> RatioCI | None:
    """Candidate over baseline sentinel median, at the thread count where it moved most."""
    out = None
    for threads in base.keys() & cand.keys():
        b, c = base[threads], cand[threads]
        den, num = float(np.median(np.concatenate(b))), float(np.median(np.concatenate(c)))
        ci = ratio_ci(num, den, c, b, 1, resamples=resamples, confidence=confidence, seed=seed)
        if out is None or abs(np.log(ci.point)) > abs(np.log(out.point)):
            out = ci
    return out
