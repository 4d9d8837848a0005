"""Executors: cells sharded into submitit jobs, rows assembled into one run file, lost jobs.

The end-to-end tests submit real jobs through submitit's local executor (subprocesses running
the same code a Slurm job runs) with the test builder (tests/builders.py); the Slurm tests are
in test_slurm.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from builders import FAULT_ENV, faults
from test_runner import ENV, plan
from test_runner import cell as runner_cell

from hubbench import store
from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.cell import Cell
from hubbench.plan.executor import ExecutorSpec, make_spec, spec_from
from hubbench.plan.suite import load_suite
from hubbench.run.executors import JobCounts, comparison_key, jobs_folder, shard
from hubbench.run.runner import CellState, _resumed, make_row, run_plan

BUILDER = f"{Path(__file__).with_name('builders.py')}:build_tiny"


def cell(index: int, rounds: int = 2, **fields) -> Cell:
    return runner_cell(index, rounds=rounds, **fields)


def grid() -> list[Cell]:
    """Two comparison groups (seq 32, 64), each a transformer with two attention kernels."""
    cells = []
    for seq in (32, 64):
        for attention in ("naive", "sdpa"):
            cells.append(cell(len(cells), seq=seq, attention=attention))
    return cells


# ----------------------------------------------------------------------------- specs


def test_shard_packs_comparison_groups_into_one_job() -> None:
    states = [CellState(c) for c in grid()]
    jobs = shard(states, cells_per_job=2)
    assert [[s.cell.seq for s in job] for job in jobs] == [[32, 32], [64, 64]]
    assert comparison_key(states[0].cell) == comparison_key(states[1].cell)
    assert comparison_key(states[0].cell) != comparison_key(states[2].cell)
    # three per job: a group is split only where it does not fit
    assert [len(j) for j in shard(states, cells_per_job=3)] == [2, 2]
    assert [len(j) for j in shard(states, cells_per_job=1)] == [1, 1, 1, 1]
    assert [len(j) for j in shard(states, cells_per_job=8)] == [4]


def test_executor_spec_checks_every_key() -> None:
    assert make_spec({"cells_per_job": 3}, kind="slurm", partition="gpu").cells_per_job == 3
    assert make_spec({}, kind=None).kind == "local"
    assert ExecutorSpec(kind="submitit-local").jobs_at_once == 1
    assert ExecutorSpec(kind="slurm").jobs_at_once == 16
    with pytest.raises(ConfigError, match="unknown executor 'kube'"):
        make_spec({}, kind="kube")
    with pytest.raises(ConfigError, match="cells_per_job must be >= 1"):
        make_spec({}, kind="slurm", cells_per_job=0)
    with pytest.raises(ConfigError, match="partition applies to --executor slurm only"):
        make_spec({}, kind="submitit-local", partition="gpu")
    with pytest.raises(ConfigError, match="unknown key 'nodes'"):
        spec_from({"nodes": 2}, "s.toml: executor")
    with pytest.raises(ConfigError, match="time_min must be int"):
        spec_from({"time_min": "1h"}, "s.toml: executor")


def test_suite_executor_table(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[defaults]\nvariant = "transformer"\n[executor]\ncells_per_job = 2\n'
                    'partition = "gpu"\ntime_min = 30\n')  # fmt: skip
    assert load_suite(path).executor == {"cells_per_job": 2, "partition": "gpu", "time_min": 30}
    path.write_text('[defaults]\nvariant = "transformer"\n[executor]\ncells_per_job = -1\n')
    with pytest.raises(SuiteError, match=r"s\.toml: executor: cells_per_job must be >= 1"):
        load_suite(path)


def test_job_counts_line() -> None:
    assert JobCounts(1, 2, 3).line() == "jobs: 1 pending, 2 running, 3 done"
    assert JobCounts(0, 0, 1, 1, waiting=2).line() == (
        "jobs: 2 waiting, 0 pending, 0 running, 1 done, 1 failed"
    )


def test_a_row_lost_with_its_job_is_measured_again_on_resume() -> None:
    c = cell(0)
    state = CellState(c)
    state.failure = {"status": "error", "message": "job 7 failed", "device_name": None,
                     "wall_s": 0.0}  # fmt: skip
    state.job_lost = True
    row = make_row(state, "t", "feed0001", ENV, {"executor": "slurm", "job_id": "7"})
    assert (row["status"], row["job_lost"], row["executor"]) == ("error", True, "slurm")
    assert _resumed(c, row).pending
    state.job_lost = False  # the cell's own failure stays a failure
    assert not _resumed(c, make_row(state, "t", "feed0001", ENV)).pending


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def no_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _local(**kw) -> ExecutorSpec:
    return ExecutorSpec(kind="submitit-local", poll_s=0.2, **kw)


@pytest.mark.slow
def test_submitit_local_run_equals_a_local_run(tmp_path: Path, no_faults: None) -> None:
    cells = grid()
    seen = []
    result = run_plan(plan(cells), tmp_path, builder=BUILDER,
                      executor=_local(cells_per_job=2, parallelism=2),
                      on_jobs=lambda counts: seen.append(counts.line()))  # fmt: skip
    rows = store.read_rows(result.path)
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in cells)
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["time_rounds"] == 2 and r["executor"] == "submitit-local" for r in rows)
    jobs = {r["seq"]: r["job_id"] for r in rows}
    assert len(set(jobs.values())) == 2 and None not in jobs.values()  # one job per group
    assert all(r["job_lost"] is False for r in rows)
    assert seen[-1] == "jobs: 0 pending, 0 running, 2 done"
    folder = jobs_folder(result.path)
    assert not list(folder.glob("part-*.parquet"))  # merged, then removed
    assert list(folder.glob("*_log.out"))  # submitit's logs stay
    # the same cells through the local worker: the same set of cells, the same columns
    local = run_plan(plan(cells), tmp_path / "local", builder=BUILDER)
    assert {r["cell_id"] for r in local.rows} == {r["cell_id"] for r in rows}
    assert {r["executor"] for r in local.rows} == {"local"}


@pytest.mark.slow
def test_a_killed_job_leaves_error_rows_and_resume_fills_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = grid()
    # the seq 64 job's process is killed (SIGKILL) in its second cell's round
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "kill_parent", "seq": 64, "build": 2}))
    first = run_plan(plan(cells), tmp_path, builder=BUILDER, executor=_local(cells_per_job=2))
    by_seq: dict[int, list[dict]] = {}
    for r in store.read_rows(first.path):
        by_seq.setdefault(r["seq"], []).append(r)
    assert len(first.rows) == 4
    assert {(r["status"], r["job_lost"]) for r in by_seq[32]} == {("ok", False)}
    lost = by_seq[64]
    assert {(r["status"], r["job_lost"]) for r in lost} == {("error", True)}
    job = lost[0]["job_id"]
    assert all(r["job_id"] == job and r["message"].startswith(f"job {job} ") for r in lost)
    assert all("--resume measures the rest" in r["message"] for r in lost)
    # the first cell of that job had measured round 1 before the kill: the row keeps it
    assert sorted(r["time_rounds"] or 0 for r in lost) == [0, 1]

    monkeypatch.delenv(FAULT_ENV)
    again = run_plan(plan(cells), tmp_path, resume=True, builder=BUILDER,
                     executor=_local(cells_per_job=2))  # fmt: skip
    assert again.path == first.path
    rows = {r["cell_id"]: r for r in store.read_rows(again.path)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(r["time_rounds"] == 2 and not r["job_lost"] for r in rows.values())
    assert {r["cell_id"] for r in again.new_rows} == {r["cell_id"] for r in lost}
    kept = {r["cell_id"]: r for r in by_seq[32]}
    assert all(rows[k]["utc_time"] == kept[k]["utc_time"] for k in kept)  # not run again


def test_the_executor_option_is_checked_before_anything_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hubbench.cli import app

    out = CliRunner().invoke(
        app, ["run", "ci", "--executor", "kube", "--results-dir", str(tmp_path)]
    )
    assert out.exit_code != 0
    assert "unknown executor 'kube'; valid: local, submitit-local, slurm" in out.output
    assert not list(tmp_path.rglob("*.parquet"))
    assert os.listdir(tmp_path) == []


def test_resume_merges_the_part_files_a_dead_submitter_left(
    tmp_path: Path, no_faults: None
) -> None:
    from hubbench.run.runner import prepare_run

    cells = [cell(0, rounds=1), cell(1, rounds=1, attention="sdpa")]
    done = run_plan(plan(cells), tmp_path, builder=BUILDER)
    rows = store.read_rows(done.path)
    folder = jobs_folder(done.path)
    folder.mkdir()
    store.write_rows(folder / "part-1-0.parquet", rows[:1])  # merged by nobody
    store.write_rows(done.path, rows[1:])
    _, _, states, previous = prepare_run(plan(cells), tmp_path, resume=True)
    assert previous == done.path
    assert not any(s.pending for s in states)  # nothing to measure again
    assert {r["cell_id"] for r in store.read_rows(done.path)} == {c.cell_id for c in cells}
