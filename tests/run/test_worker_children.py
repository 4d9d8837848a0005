"""No process of a run outlives it: a worker's children (a plug-in's helper processes) are killed
with the worker's process group when it closes (issue 33, item 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from builders import FAULT_ENV, faults
from cells import BUILDER, cell, plan

from hubbench.run.worker import Worker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_plugins_child_dies_with_the_worker(tmp_path: Path, monkeypatch) -> None:
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "child", "pid_file": str(pid_file)}))
    worker = Worker(BUILDER).start(timeout=60)
    try:
        answer = worker.run(cell(0), timeout=60)
        assert answer["outcome"]["status"] == "ok", answer["outcome"]
    finally:
        worker.close()  # the worker exits cleanly; the child it left is still in its group
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), f"child {child} outlived the worker"


@pytest.mark.slow
def test_nothing_of_a_timed_out_torchrun_cell_stays_in_the_temp_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """A torchrun cell killed for its timeout left /tmp/hubbench-ddp-* behind (its
    TemporaryDirectory never ran its cleanup); its round files now live in the worker's scratch
    folder, which closing the worker removes (issue 33, item 10)."""
    import dataclasses
    import tempfile

    from torchrun_cells import BUILDER as TINY
    from torchrun_cells import cell as torchrun_cell

    from hubbench.run.runner import run_plan

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv(FAULT_ENV, faults({"fault": "hang", "rank": 1}))
    hung = dataclasses.replace(torchrun_cell(timeout_s=20.0))
    result = run_plan(plan([hung]), tmp_path / "results", builder=TINY)
    from hubbench import store

    [row] = store.read_rows(result.path)
    assert row["status"] == "timeout", row["message"]
    left = [p.name for p in scratch.iterdir() if p.name.startswith("hubbench-")]
    assert left == [], left
