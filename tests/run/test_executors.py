"""Executors: cells submitted as submitit jobs, rows merged into one run file, lost jobs.

The end-to-end tests (slow) submit real jobs through submitit's local executor (subprocesses
running the same code a Slurm job runs) with the test builder (tests/builders.py); the Slurm
tests are in test_slurm.py. The submitter's own logic is tested without submitting, against a
job that has ended.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from builders import FAULT_ENV, faults
from cells import BUILDER, ENV, cell, grid, measured, plan

from hubbench import store
from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.executor import ExecutorSpec, make_spec, spec_from
from hubbench.plan.suite import load_suite
from hubbench.run.executors import JobCounts, Submitter
from hubbench.run.parts import jobs_folder
from hubbench.run.rows import CellState, make_row, state_from_row
from hubbench.run.runner import run_plan

# ----------------------------------------------------------------------------- specs


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


def test_parallelism_is_never_silently_ignored() -> None:
    # the local executor measures one cell at a time: asking it for two is an error, not a
    # run that takes twice as long as the user planned for
    with pytest.raises(ConfigError, match="parallelism 2 needs --executor submitit-local"):
        make_spec({}, kind=None, parallelism=2)
    with pytest.raises(ConfigError, match="parallelism 3 needs"):
        make_spec({}, kind="local", parallelism=3)
    # a suite's table sets it for its jobs (`--executor submitit-local | slurm`): a local run
    # of that suite goes on, one cell at a time
    assert make_spec({"parallelism": 8}, kind=None).jobs_at_once == 1
    assert make_spec({"parallelism": 8}, kind="slurm").jobs_at_once == 8
    assert make_spec({}, kind="local", parallelism=1).jobs_at_once == 1
    spec = make_spec({"kind": "submitit-local", "cells_per_job": 1}, kind=None, parallelism=2)
    assert (spec.kind, spec.jobs_at_once) == ("submitit-local", 2)
    assert spec.describe() == "executor submitit-local: 1 cell per job, at most 2 job(s) at once"
    assert "one cell at a time" in make_spec({}, kind=None).describe()


@pytest.mark.parametrize(
    "suite", ["quality", "quality-capacity", "quality-hubs", "quality-bytes", "quality-replace"]
)
def test_quality_suites_run_cells_as_jobs(suite: str) -> None:
    # `hubbench run quality --parallelism 2` (issue 30's command) trains two cells at once
    from hubbench.plan import expand, find_suite, load_suite
    from hubbench.plan.executor import check_cells

    loaded = load_suite(find_suite(suite))
    spec = make_spec(loaded.executor, kind=None, parallelism=2)
    assert (spec.kind, spec.cells_per_job, spec.jobs_at_once) == ("submitit-local", 1, 2)
    cells = expand(loaded).cells
    check_cells(spec, cells)  # each job's time limit is above its cell's timeout
    # submitit kills a job at its time limit: a limit under a cell's timeout loses the cell
    longest = max(c.measure.timeout_s for c in cells)
    short = dataclasses.replace(spec, time_min=int(longest) // 60 - 1)
    with pytest.raises(ConfigError, match=r"job time \d+ min is shorter than a cell's timeout"):
        check_cells(short, cells)


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


# ----------------------------------------------------------------------------- the submitter


class FakeHandle:
    """A submitit job that has ended: with `result`, or without one (killed)."""

    job_id = "77"
    state = "CANCELLED"

    def __init__(self, result: dict | None) -> None:
        self.result = result

    def done(self) -> bool:
        return True

    def results(self) -> list[dict]:
        from submitit.core.utils import UncompletedJobError

        if self.result is None:
            raise UncompletedJobError("job 77 has no result")
        return [self.result]

    def stderr(self) -> str:
        return "slurmstepd: error: *** JOB 77 CANCELLED ***\n"


def test_the_submitter_merges_what_a_job_wrote_and_loses_the_rest(tmp_path: Path, build) -> None:
    """Without submitting: a job's part file holds one cell's first round, then the job is
    killed; both cells get their rows, the lost one measured again on resume."""
    cells = [cell(0, rounds=2), cell(1, rounds=2, attention="naive")]
    states = [CellState(c) for c in cells]
    rows, heard = [], []
    submitter = Submitter(ExecutorSpec(kind="submitit-local"), states, rows.append,
                          tmp_path / "t" / "run.parquet", [],
                          {"suite": "t", "run_id": "feed0001", "builder": BUILDER})  # fmt: skip
    submitter.on_done = lambda row, state, progress: heard.append(progress)
    [job] = submitter.jobs
    execution = {"executor": "submitit-local", "job_id": "77"}
    first = make_row(measured(cells[0], build), "t", "feed0001", ENV, execution)
    store.write_rows(job.part.path, [first])
    job.handle, submitter.waiting = FakeHandle(None), []  # as if submitted, then killed
    submitter.merge(job)
    submitter.finish(job)
    submitter.tell_counts()
    assert rows[0] == first
    assert [(r["cell_id"], r["status"], r["job_lost"]) for r in rows[1:]] == [
        (cells[0].cell_id, "error", True),
        (cells[1].cell_id, "error", True),
    ]
    assert rows[1]["round_samples_s"] == first["round_samples_s"]  # its round is kept
    assert rows[1]["message"].startswith("job 77 ended without a result (state CANCELLED)")
    assert "JOB 77 CANCELLED" in rows[1]["message"]
    assert [p.done for p in heard] == [1, 2, 4]  # every round of the job is accounted for
    assert heard[-1].remaining_s == 0.0
    assert all(state_from_row(c, r).pending for c, r in zip(cells, rows[1:], strict=True))
    assert submitter.counts == JobCounts(failed=1)


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


# ----------------------------------------------------------------------------- refusals (issue 33)


def dry(*args: str):
    from typer.testing import CliRunner

    from hubbench.cli import app

    return CliRunner().invoke(app, ["run", "ci", "--dry-run", *args])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--executor", "slurm", "--cells-per-job", "0"], "cells_per_job must be >= 1 (got 0)"),
        (["--nnodes", "2"], "nnodes=2 needs a job with a task per node"),
        (["--against", "HEAD", "--executor", "submitit-local"],
         "--against measures both code versions in this process' workers"),
        (["--nproc", "100000"], "--nproc: a cell of 100000 processes (nproc x nnodes) on a host"),
        (["--nproc", "50000", "--nnodes", "2", "--executor", "submitit-local"],
         "a cell of 100000 processes"),
    ],
)  # fmt: skip
def test_a_dry_run_applies_the_runs_executor_checks(args: list[str], said: str) -> None:
    out = dry(*args)
    assert out.exit_code == 2, out.output
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and said in line


def test_nproc_is_bounded_by_the_hosts_cores_not_on_slurm() -> None:
    from hubbench.plan.executor import check_cells, host_cores

    cores = host_cores()
    fits = dataclasses.replace(cell(0), nproc=cores)
    too_many = dataclasses.replace(cell(1), nproc=cores + 1)
    check_cells(ExecutorSpec(), [fits])
    with pytest.raises(ConfigError, match=f"runs at most {cores} per cell here"):
        check_cells(ExecutorSpec(kind="submitit-local"), [fits, too_many])
    check_cells(ExecutorSpec(kind="slurm"), [too_many])  # the cluster's nodes, not this host
    assert dry("--nproc", str(cores)).exit_code == 0


class Refused:
    """A submitit executor whose sbatch refuses every submission."""

    def batch(self):
        import contextlib

        return contextlib.nullcontext()

    def submit(self, *args: object) -> None:
        raise RuntimeError("sbatch: error: Batch job submission failed: no controller")


@pytest.mark.parametrize("where", ["setup", "submit"])
def test_a_refused_submission_leaves_no_jobs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import hubbench.run.executors as executors
    from hubbench.errors import HubbenchError

    def made(*args: object) -> Refused:
        if where == "setup":
            raise RuntimeError("Could not detect slurm")
        return Refused()

    monkeypatch.setattr(executors, "submitit_executor", made)
    monkeypatch.setattr(executors, "watch_slurm", lambda: None)
    run = tmp_path / "t" / "20260101T000000Z-feed0001.parquet"
    with pytest.raises(HubbenchError, match="--executor slurm: "):
        submitter = Submitter(ExecutorSpec(kind="slurm"), [CellState(cell(0))], print, run, [],
                              {"suite": "t", "run_id": "feed0001", "builder": BUILDER})  # fmt: skip
        submitter.poll()
    assert not jobs_folder(run).exists()
    # a resumed run's folder (an earlier attempt's logs) stays, without this attempt's marker
    (jobs_folder(run) / "attempt-1").parent.mkdir(parents=True)
    (jobs_folder(run) / "attempt-1").touch()
    with pytest.raises(HubbenchError):
        Submitter(ExecutorSpec(kind="slurm"), [CellState(cell(0))], print, run, [],
                  {"suite": "t", "run_id": "feed0001", "builder": BUILDER}).poll()  # fmt: skip
    assert sorted(p.name for p in jobs_folder(run).iterdir()) == ["attempt-1"]


def test_started_processes_write_their_stderr_to_the_jobs_folder(tmp_path: Path, capfd) -> None:
    """submitit-local's controllers inherit fd 2: started under stderr_to, a traceback of
    theirs (Ctrl-C stops them with SIGINT) lands in the log, not under the run's table."""
    import subprocess
    import sys

    from hubbench.run.executors import stderr_to

    log = tmp_path / "jobs" / "controllers.err"
    with stderr_to(log):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('boom')"])
    child.wait()
    print("after", file=sys.stderr)
    assert log.read_text() == "boom"
    assert capfd.readouterr().err == "after\n"


@pytest.mark.slow
def test_ctrl_c_on_a_submitit_local_run_prints_no_traceback(tmp_path: Path) -> None:
    """Ctrl-C at a terminal signals the whole process group, the job controllers included:
    the quality suites run as submitit-local jobs, and each controller printed submitit's
    KeyboardInterrupt traceback above hubbench's 'interrupted' line."""
    import signal
    import subprocess
    import sys
    import time

    results = tmp_path / "results"
    args = [sys.executable, "-m", "hubbench", "run", "ci", "--executor", "submitit-local",
            "--cells-per-job", "1", "--parallelism", "2",
            "--results-dir", str(results)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(results.glob("ci/*.jobs/*_submitted.pkl")):
        time.sleep(0.2)
    time.sleep(1.0)  # the controllers are running
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "KeyboardInterrupt" not in err
    [log] = results.glob("ci/*.jobs/controllers.err")
    assert log.exists()
