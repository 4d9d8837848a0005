"""--resume of a same-run A/B: each side's rows come back to their own states, and a run is only
continued by the code versions it started with (in process, no worker)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cells import ENV, cell, measured, plan

from hubbench import store
from hubbench.errors import ConfigError
from hubbench.run.against import Side
from hubbench.run.rows import CellState, make_row
from hubbench.run.runner import prepare_run, resumed_baseline


def sides(base: str = "b" * 40) -> list[Side]:
    return [Side("candidate", "c" * 40, Path("/c"), "m:f"),
            Side("baseline", base, Path("/b"), "m:f", "/b")]  # fmt: skip


def on(state: CellState, side: Side) -> CellState:
    return dataclasses.replace(state, side=side)


def test_an_ab_run_resumes_side_by_side(tmp_path: Path, build) -> None:
    cells = [cell(0, rounds=3), cell(1, seq=64, rounds=3)]
    cand, base = sides()
    # cell 0: the candidate has 2 rounds, the baseline 1; cell 1: nothing yet
    rows = [
        make_row(on(measured(cells[0], build, rounds=2), cand), "t", "feed0002", ENV),
        make_row(on(measured(cells[0], build, rounds=1), base), "t", "feed0002", ENV),
    ]
    old = tmp_path / "t" / "20250101T000000Z-feed0002.parquet"
    store.write_rows(old, rows)
    assert resumed_baseline(tmp_path, "t") == "b" * 40
    _, run_id, states, previous = prepare_run(plan(cells), tmp_path, True, sides())
    assert previous == old and run_id == "feed0002"
    found = [(s.cell.index, s.side.name, len(s.rounds)) for s in states]
    assert found == [(0, "candidate", 2), (0, "baseline", 1), (1, "candidate", 0),
                     (1, "baseline", 0)]  # fmt: skip
    assert states[1].key == rows[1]["cell_id"] == f"{cells[0].cell_id}/baseline"


def test_resume_refuses_other_code_versions(tmp_path: Path, build) -> None:
    cells = [cell(0, rounds=2)]
    base = sides()[1]
    row = make_row(on(measured(cells[0], build, rounds=1), base), "t", "feed0003", ENV)
    store.write_rows(tmp_path / "t" / "20250101T000000Z-feed0003.parquet", [row])
    with pytest.raises(ConfigError, match=f"continue it with --against {'b' * 40}"):
        prepare_run(plan(cells), tmp_path, True, sides("a" * 40))
    with pytest.raises(ConfigError, match="a same-run A/B against"):
        prepare_run(plan(cells), tmp_path, True)
    plain = make_row(measured(cells[0], build, rounds=1), "t", "feed0004", ENV)
    store.write_rows(tmp_path / "t" / "20250102T000000Z-feed0004.parquet", [plain])
    assert resumed_baseline(tmp_path, "t") is None
    with pytest.raises(ConfigError, match="is an ordinary run"):
        prepare_run(plan(cells), tmp_path, True, sides())
