"""The machine's noise during a run, from the sentinel timed before every round (measure.py), and
its load, from the 1-minute load average the runner read around every round.

The sentinel does the same work every time, so its spread over a run says how steady the machine
was, and a round whose sentinel took SLOW more than the run's median (among rounds with the same
thread count) ran while the machine was slowed by something else. Rounds are flagged, not
dropped: their drift is what the two-stage bootstrap is there to absorb.

In a same-run A/B (rows with a `side`) each side's sentinel is judged against its own median: the
baseline's worker is REF's code, whose sentinel may not be this one, and each side runs in its
own worker process. A slow round is named with its side.

The load average is the machine's, not a side's: one figure for the run (median and max of the
readings), which counts hubbench's own worker (about `threads` while it measures).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hubbench.stats import summarize

SLOW = 0.25  # a round whose sentinel took 25% longer than the run's median is flagged
LOAD_COLUMNS = ("round_load_1m_start", "round_load_1m_end")


@dataclass
class Load:
    """The 1-minute load average over a run's rounds (their starts and ends)."""

    readings: int
    median: float
    max: float

    def words(self) -> str:
        return f"load average (1 min) median {self.median:.1f}, max {self.max:.1f}"


@dataclass
class Noise:
    readings: int  # sentinel readings (rounds) in the run
    spread: float  # p90 / p10 - 1 of the sentinel, the widest over thread counts and sides
    slow: list[str] = field(default_factory=list)  # "cell 4 (hub-gpt n=2048) round 3 (+41%)"
    sides: dict[str, float] = field(default_factory=dict)  # A/B: each side's widest spread
    load: Load | None = None

    def line(self) -> str:
        if self.readings:
            text = (
                f"noise: the sentinel varied {self._spread()} (p10-p90) over {self.readings} rounds"
            )
            if not self.slow:
                text += f"; no round ran more than {100 * SLOW:g}% slow"
            else:
                shown = "; ".join(self.slow[:4]) + ("; ..." if len(self.slow) > 4 else "")
                text += f"; {len(self.slow)} round(s) ran more than {100 * SLOW:g}% slow: {shown}"
        else:
            text = "noise: no sentinel readings"
        return text + (f"; {self.load.words()}" if self.load else "")

    def _spread(self) -> str:
        if not self.sides:
            return f"{100 * self.spread:.0f}%"
        return " and ".join(f"{100 * s:.0f}% ({name})" for name, s in self.sides.items())


def _value(value: Any) -> Any:
    from hubbench.report.load import norm_value

    return norm_value(value)


def _list(value: Any) -> list[Any]:
    """A per-round column's values (a list, an array from parquet; nothing for a null)."""
    if value is None or isinstance(value, (float, int, str)):
        return []
    return [_value(v) for v in value]


def noise(rows: Iterable[Mapping[str, Any]]) -> Noise | None:
    """The run's noise, or None when its rows carry neither sentinel nor load readings."""
    rows = list(rows)
    groups: dict[tuple[Any, Any], list[tuple[str, str, float]]] = {}
    for row in rows:
        side = _value(row.get("side"))
        label = f"cell {_value(row.get('cell_index'))} ({row['variant']} n={_value(row['seq'])})"
        for i, value in enumerate(_list(row.get("round_sentinel_s"))):
            if value is not None:
                where = f"round {i + 1}" + (f", {side}" if side else "")
                groups.setdefault((side, _value(row.get("threads"))), []).append(
                    (label, where, value)
                )
    load = load_average(rows)
    if not groups and load is None:
        return None
    spread, slow, count, sides = 0.0, [], 0, {}
    for (side, _), readings in groups.items():
        stats = summarize([v for _, _, v in readings])
        this = stats.p90 / stats.p10 - 1
        spread = max(spread, this)
        if side:
            sides[side] = max(sides.get(side, 0.0), this)
        count += len(readings)
        slow += [
            f"{label} {where} (+{100 * (v / stats.median - 1):.0f}%)"
            for label, where, v in readings
            if v > (1 + SLOW) * stats.median
        ]
    return Noise(count, spread, slow, dict(sorted(sides.items())), load)


def load_average(rows: Iterable[Mapping[str, Any]]) -> Load | None:
    """The median and max of the load averages the rows recorded; None when none did (rows
    written before schema 11, or a system without getloadavg)."""
    values = sorted(
        v
        for row in rows
        for column in LOAD_COLUMNS
        for v in _list(row.get(column))
        if v is not None
    )
    if not values:
        return None
    return Load(len(values), summarize(values).median, values[-1])
