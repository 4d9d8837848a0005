"""The nodes of a multi-node job (nnodes > 1): one cluster task per node, joined by a mailbox.

Task 0, the leader, measures the job's cells as a one-node job does, inside `leading`: a mailbox
folder, a heartbeat, and the end posted when it is done. For each round its worker posts the
round as `round-K.json` and runs torchrun as node 0 (hubbench.measure.launch). The other tasks
`follow`: they run each posted round, in order, as node 1, 2, ...; a follower gives up on a round
when the leader posts the next one or the end (the leader's round failed or timed out), and
stops when the leader's heartbeat goes stale. hubbench.run.jobs.run_job starts both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hubbench.measure.launch import (
    ADDR_ENV,
    NODES_ENV,
    node_options,
    torchrun_command,
    torchrun_env,
)
from hubbench.plan.cell import Cell

HEARTBEAT_S = 5.0
STALE_S = 60.0  # a leader silent this long is gone
JOIN_S = 600.0  # a follower waits this long for its leader to start


@contextmanager
def leading(box: Path, addr: str) -> Iterator[None]:
    """The leader task's side: the mailbox set up for `launch`, a heartbeat, the end posted."""
    box.mkdir(parents=True, exist_ok=True)
    alive = box / "alive"
    alive.touch()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            alive.touch()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    before = {k: os.environ.get(k) for k in (NODES_ENV, ADDR_ENV)}
    os.environ[NODES_ENV], os.environ[ADDR_ENV] = str(box), addr
    try:
        yield
    finally:
        stop.set()
        (box / "end").touch()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _leader_gone(box: Path, waited: float) -> bool:
    alive = box / "alive"
    if not alive.exists():
        return waited > JOIN_S
    return time.time() - alive.stat().st_mtime > STALE_S


def follow(box: Path, node: int, poll_s: float = 0.2) -> int:
    """A follower task's side: run every round the leader posts, as node `node`, until it posts
    the end or goes silent; the number of rounds run."""
    started = time.monotonic()
    k = 0
    while True:
        post = box / f"round-{k:05d}.json"
        if post.exists():
            _run_as_node(json.loads(post.read_text()), node, box, k, poll_s)
            k += 1
            continue
        if (box / "end").exists() or _leader_gone(box, time.monotonic() - started):
            return k
        time.sleep(poll_s)


def _run_as_node(post: dict[str, Any], node: int, box: Path, k: int, poll_s: float) -> None:
    cell = Cell.from_json(post["cell"])
    nodes = node_options(cell.nnodes, node, post["addr"], post["port"])
    with tempfile.TemporaryDirectory(prefix="hubbench-node-") as tmp:
        cell_file = Path(tmp, "cell.json")
        cell_file.write_text(json.dumps(post["cell"]))
        # its ranks' failures go beside the post, where the leader looks for the first one
        answer = box / f"round-{k:05d}.node{node}.json"
        command = torchrun_command(cell, cell_file, answer, post["builder"], post["count"],
                                   nodes)  # fmt: skip
        with (box / f"node-{node}.log").open("ab") as log:
            log.write(f"== round {k}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                    env=torchrun_env(cell), start_new_session=True)  # fmt: skip
            try:
                _wait_for_round(proc, box, k, poll_s)
            finally:
                if proc.poll() is None:
                    _kill_group(proc)


def _wait_for_round(proc: subprocess.Popen[bytes], box: Path, k: int, poll_s: float) -> None:
    """Until this node's torchrun of round `k` ends, or the leader moves on without it."""
    while proc.poll() is None:
        given_up = (box / f"round-{k + 1:05d}.json").exists() or (box / "end").exists()
        if given_up or _leader_gone(box, 0.0):
            _kill_group(proc)
            return
        time.sleep(poll_s)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
