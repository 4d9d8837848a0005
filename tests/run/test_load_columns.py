"""The machine's load around each round (round_load_1m_start / _end): read by the runner just
before and after the worker measures a round, kept at the round's index, and read back for
--resume as it was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from cells import ENV, cell, plan

from hubbench import schema, store
from hubbench.measure.metrics import RoundResult
from hubbench.run import rounds
from hubbench.run.rows import CellState, make_row, record_load, state_from_row
from hubbench.run.runner import prepare_run


def _round(k: int) -> RoundResult:
    return RoundResult(
        samples_s=[0.01 * (1 + k)] * 2, tokens=32, warmup_s=0.1, warmup_steps=2,
        warmup_capped=0, sentinel_s=0.01, peak_mem_bytes=None, peak_mem_reserved_bytes=None,
        mem_kind="cpu_rss", mem_baseline_bytes=None, flops_per_step=None,
        flops_per_step_analytic=1e6, peak_flops_per_s=None, peak_flops_source=None, params=9,
        session=1000.0,
    )  # fmt: skip


def test_the_columns_are_in_the_schema() -> None:
    for name in ("round_load_1m_start", "round_load_1m_end"):
        assert schema.BY_NAME[name].type == "list<float64>"
        assert name in schema.names("execution")


def test_a_round_keeps_its_index_after_rounds_without_a_reading() -> None:
    """Rounds read back from a row written before the columns existed get nulls."""
    state = CellState(cell(0, rounds=4), rounds=[_round(0), _round(1)])
    assert make_row(state, "t", "feed0001", ENV)["round_load_1m_start"] is None
    state.rounds.append(_round(2))
    record_load(state, 1.5, 2.25)
    row = make_row(state, "t", "feed0001", ENV)
    assert row["round_load_1m_start"] == [None, None, 1.5]
    assert row["round_load_1m_end"] == [None, None, 2.25]


def test_the_load_survives_the_store_and_resume(tmp_path: Path) -> None:
    c = cell(0, rounds=3)
    state = CellState(c, device_name="cpu0", wall_s=1.0)
    for k, (start, end) in enumerate([(0.5, 0.75), (3.0, None)]):
        state.rounds.append(_round(k))
        record_load(state, start, end)
    row = make_row(state, "t", "feed0001", ENV)
    assert state_from_row(c, row).loads == [(0.5, 0.75), (3.0, None)]
    store.write_rows(tmp_path / "t" / "20250101T000000Z-feed0001.parquet", [row])
    _, _, [again], _ = prepare_run(plan([c]), tmp_path, resume=True)
    assert again.loads == state.loads
    rebuilt = make_row(again, "t", "feed0001", ENV)
    assert rebuilt["round_load_1m_start"] == [0.5, 3.0]
    assert rebuilt["round_load_1m_end"] == [0.75, None]


class _FakeWorkers:
    """Stands in for the worker: a round is 'measured' between two load readings."""

    calls: ClassVar[list[str]] = []

    def __init__(self, builder: str, side: Any = None) -> None:
        self.failed_starts = 0

    def run(self, state: CellState) -> tuple[dict[str, Any], dict[str, Any]]:
        self.calls.append("round")
        outcome = {"status": "ok", "message": None, "device_name": "cpu0", "wall_s": 0.1}
        if state.cell.index == 1 and state.rounds:  # cell 1 fails in its second round
            outcome = {**outcome, "status": "error", "message": "boom"}
            return {"outcome": outcome, "round": None}, {}
        return {"outcome": outcome, "round": _round(len(state.rounds)).to_json()}, {}

    def close(self) -> None:
        pass


def test_the_runner_reads_the_load_before_and_after_each_round(monkeypatch) -> None:
    readings = iter(float(i) for i in range(100))

    def load() -> float:
        _FakeWorkers.calls.append("load")
        return next(readings)

    _FakeWorkers.calls = []
    monkeypatch.setattr(rounds, "load_1m", load)
    monkeypatch.setattr(rounds, "_Workers", _FakeWorkers)
    monkeypatch.setattr(rounds, "host_env", lambda: {k: v for k, v in ENV.items()})
    states = [CellState(cell(0, rounds=2)), CellState(cell(1, rounds=2))]
    rows: list[dict[str, Any]] = []
    assert not rounds.measure_states(states, rows.append, "t", "feed0001", "b", {
        "executor": "local", "job_id": None})  # fmt: skip
    assert _FakeWorkers.calls == ["load", "round", "load"] * 4
    # pass 1: cells 0, 1 (readings 0-3); pass 2 is shuffled, cell 1 failed in it
    ok = {s.cell.index: s for s in states}
    assert len(ok[0].loads) == 2 and ok[0].loads[0] == (0.0, 1.0)
    assert ok[1].loads == [(2.0, 3.0)]  # the failed round has no reading
    last = {r["cell_index"]: r for r in rows}
    assert last[1]["status"] == "error" and last[1]["round_load_1m_start"] == [2.0]
    assert all(end == start + 1 for s in states for start, end in s.loads)


@pytest.mark.parametrize("error", [OSError, AttributeError])
def test_no_load_average_reads_as_null(monkeypatch, error: type[Exception]) -> None:
    from hubbench.measure import env

    def missing() -> tuple[float, float, float]:
        raise error("no load average here")

    monkeypatch.setattr(env.os, "getloadavg", missing)
    assert env.load_1m() is None
    monkeypatch.undo()
    assert env.load_1m() >= 0
