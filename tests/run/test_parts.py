"""Part files (hubbench.run.parts): what jobs wrote reaches the run file, on --resume too."""

from __future__ import annotations

from pathlib import Path

from cells import ENV, cell, failed, measured, plan

from hubbench import store
from hubbench.run.parts import PartFile, jobs_folder, leftover_rows, new_attempt, part_path
from hubbench.run.rows import make_row
from hubbench.run.runner import prepare_run


def test_resume_merges_the_part_files_a_dead_submitter_left(tmp_path: Path, build) -> None:
    cells = [cell(0, rounds=1), cell(1, rounds=1, attention="naive")]  # two cell ids
    rows = [make_row(measured(c, build), "t", "feed0001", ENV) for c in cells]
    run = store.run_path(tmp_path, "t", "feed0001")
    folder = jobs_folder(run)
    folder.mkdir(parents=True)
    store.write_rows(folder / "part-1-0.parquet", rows[:1])  # merged by nobody
    store.write_rows(run, rows[1:])
    _, _, states, previous = prepare_run(plan(cells), tmp_path, resume=True)
    assert previous == run
    assert not any(s.pending for s in states)  # nothing to measure again
    assert {r["cell_id"] for r in store.read_rows(run)} == {c.cell_id for c in cells}


def test_leftover_rows_are_those_that_measured_more(tmp_path: Path, build) -> None:
    c = cell(0, rounds=3)
    one, two = measured(c, build), measured(c, build, rounds=2)
    run = store.run_path(tmp_path, "t", "feed0001")
    folder = jobs_folder(run)
    folder.mkdir(parents=True)
    row_two = make_row(two, "t", "feed0001", ENV)
    store.write_rows(folder / "part-1-0.parquet", [make_row(one, "t", "feed0001", ENV)])
    store.write_rows(folder / "part-2-0.parquet", [row_two])
    (folder / "part-3-0.parquet").write_bytes(b"half a parquet")  # a damaged part: ignored
    assert leftover_rows(run, []) == [row_two]
    assert leftover_rows(run, [row_two]) == []  # the run has it already
    ended = make_row(failed(c), "t", "feed0001", ENV)
    ended["round_samples_s"] = row_two["round_samples_s"]  # failed in round 3
    assert leftover_rows(run, [ended]) == []


def test_a_part_file_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    folder = tmp_path / "run.jobs"
    assert [new_attempt(folder), new_attempt(folder)] == [1, 2]
    part = PartFile(part_path(folder, 2, 0))
    assert part.read() == []  # not written yet
    row = make_row(failed(cell(0)), "t", "feed0001", ENV)
    store.write_rows(part.path, [row])
    assert part.read() == [row]
    assert part.read() == []
