"""No process of a run outlives it: a worker's children (a plug-in's helper processes) are killed
with the worker's process group when it closes (issue 33, item 2)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from builders import FAULT_ENV, faults
from cells import BUILDER, cell

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
