"""The slurm executor against a real Slurm: the single-node cluster `.ci/slurm-up` starts.

CI starts it before the tests; elsewhere these tests skip, saying why, unless a Slurm whose
partition ($HUBBENCH_SLURM_PARTITION, default `debug`) has an idle node answers `sinfo`.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import FAULT_ENV, faults
from cells import BUILDER, grid

from hubbench import store
from hubbench.plan.executor import ExecutorSpec
from hubbench.plan.suite import Plan
from hubbench.run.runner import run_plan

PARTITION_ENV = "HUBBENCH_SLURM_PARTITION"


def _partition() -> str:
    import os

    return os.environ.get(PARTITION_ENV, "debug")


@pytest.fixture(scope="module")
def slurm() -> str:
    """The partition to submit to, or skip with the reason Slurm is not usable."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sbatch / sinfo not found); .ci/slurm-up starts one")
    partition = _partition()
    try:
        out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%T"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer within 20 s: no Slurm controller")
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed") for s in states):
        why = " ".join((out.stderr or out.stdout or "no nodes").split())[:200]
        pytest.skip(f"Slurm partition {partition!r} has no idle node: {why}")
    return partition


@pytest.mark.slow
def test_a_slurm_run_equals_a_local_run(
    tmp_path: Path, slurm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    cells = grid()
    plan = Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))
    spec = ExecutorSpec(kind="slurm", partition=slurm, cells_per_job=2, time_min=10, poll_s=1.0)
    result = run_plan(plan, tmp_path / "slurm", builder=BUILDER, executor=spec)
    rows = store.read_rows(result.path)
    assert {r["status"] for r in rows} == {"ok"}, [r["message"] for r in rows]
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in cells)
    assert {r["executor"] for r in rows} == {"slurm"}
    jobs = {r["job_id"] for r in rows}
    assert len(jobs) == 2 and all(j and "_" in j for j in jobs)  # one array, two tasks
    local = run_plan(plan, tmp_path / "local", builder=BUILDER)
    assert {r["cell_id"] for r in local.rows} == {r["cell_id"] for r in rows}
    same = ("variant", "seq", "attention", "tokens_per_step", "time_rounds", "params")
    assert sorted(tuple(r[k] for k in same) for r in rows) == sorted(
        tuple(r[k] for k in same) for r in local.rows
    )


def _running_jobs(mine: Path) -> list[str]:
    """The running jobs whose logs go under `mine` (this test's folder): never another run's, or
    a user's job on a shared cluster, which the test would otherwise scancel."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "--Format=JobArrayID:40,STDOUT:1000"],
                         capture_output=True, text=True, timeout=20)  # fmt: skip
    # JobArrayID reads as %i does (an array task as 50_1); STDOUT is where submitit logs it
    rows = [line.split() for line in out.stdout.splitlines()]
    return [row[0] for row in rows if len(row) == 2 and row[1].startswith(str(mine))]


@pytest.mark.slow
def test_a_cancelled_slurm_job_leaves_error_rows_and_resume_fills_them(
    tmp_path: Path, slurm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = grid()
    plan = Plan(SimpleNamespace(name="t"), cells, [], 0, ("variant", "seq"))
    spec = ExecutorSpec(kind="slurm", partition=slurm, cells_per_job=2, time_min=10, poll_s=0.5)
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "hang", "seq": 64}))  # that job never ends
    cancelled: list[str] = []

    def cancel_the_hung_job() -> None:  # once the other job is done, scancel the one left
        seen_two = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = _running_jobs(tmp_path)
            seen_two = seen_two or len(running) == 2
            if seen_two and len(running) == 1:
                subprocess.run(["scancel", running[0]], check=True, timeout=20)
                cancelled.append(running[0])
                return
            time.sleep(0.5)

    killer = threading.Thread(target=cancel_the_hung_job, daemon=True)
    killer.start()
    started = time.monotonic()
    first = run_plan(plan, tmp_path, builder=BUILDER, executor=spec)
    killer.join(timeout=5)
    assert cancelled, "the two jobs were never seen running"
    assert time.monotonic() - started < 90  # noticed from squeue, not waited for forever
    rows = {r["seq"]: r for r in store.read_rows(first.path)}
    lost = [r for r in store.read_rows(first.path) if r["seq"] == 64]
    assert {(r["status"], r["job_lost"]) for r in lost} == {("error", True)}
    assert all(r["job_id"] == cancelled[0] for r in lost)
    assert all("cancelled" in r["message"].lower() for r in lost), lost[0]["message"]
    assert rows[32]["status"] == "ok"

    monkeypatch.delenv(FAULT_ENV)
    again = run_plan(plan, tmp_path, resume=True, builder=BUILDER, executor=spec)
    assert {r["status"] for r in store.read_rows(again.path)} == {"ok"}
    assert {r["cell_id"] for r in again.new_rows} == {r["cell_id"] for r in lost}
