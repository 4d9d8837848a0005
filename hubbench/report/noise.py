"""The machine's noise during a run, from the sentinel timed before every round (measure.py).

The sentinel does the same work every time, so its spread over a run says how steady the machine
was, and a round whose sentinel took SLOW more than the run's median (among rounds with the same
thread count) ran while the machine was slowed by something else. Rounds are flagged, not
dropped: their drift is what the two-stage bootstrap is there to absorb.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hubbench.stats import summarize

SLOW = 0.25  # a round whose sentinel took 25% longer than the run's median is flagged


@dataclass
class Noise:
    readings: int  # sentinel readings (rounds) in the run
    spread: float  # p90 / p10 - 1 of the sentinel, the widest over thread counts
    slow: list[str] = field(default_factory=list)  # "hub-gpt n=2048 round 3 (+41%)"

    def line(self) -> str:
        text = (
            f"noise: the sentinel varied {100 * self.spread:.0f}% (p10-p90) over "
            f"{self.readings} rounds"
        )
        if not self.slow:
            return text + f"; no round ran more than {100 * SLOW:g}% slow"
        shown = "; ".join(self.slow[:4]) + ("; ..." if len(self.slow) > 4 else "")
        return text + f"; {len(self.slow)} round(s) ran more than {100 * SLOW:g}% slow: {shown}"


def _value(value: Any) -> Any:
    from hubbench.report.load import norm_value

    return norm_value(value)


def noise(rows: Iterable[Mapping[str, Any]]) -> Noise | None:
    """The run's noise, or None when its rows carry no sentinel readings."""
    groups: dict[Any, list[tuple[str, int, float]]] = {}
    for row in rows:
        readings = row.get("round_sentinel_s")
        if readings is None or isinstance(readings, float):
            continue
        label = f"cell {_value(row.get('cell_index'))} ({row['variant']} n={_value(row['seq'])})"
        for i, value in enumerate(readings):
            if _value(value) is not None:
                groups.setdefault(_value(row.get("threads")), []).append((label, i + 1, value))
    if not groups:
        return None
    spread, slow, count = 0.0, [], 0
    for readings in groups.values():
        stats = summarize([v for _, _, v in readings])
        spread = max(spread, stats.p90 / stats.p10 - 1)
        count += len(readings)
        slow += [
            f"{label} round {r} (+{100 * (v / stats.median - 1):.0f}%)"
            for label, r, v in readings
            if v > (1 + SLOW) * stats.median
        ]
    return Noise(count, spread, slow)
