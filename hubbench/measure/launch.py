"""A cell at nproc > 1, from the worker's side: its round run by torchrun, and the answer read.

The worker (hubbench.measure.cell) calls `launch`, which runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m hubbench.measure.ranks ...

and waits; rank 0 writes the round as JSON (hubbench.measure.ranks), or the first rank's
failure, already classified (oom, skipped, error) and naming its rank. Without an answer, the
cause is read from torchrun's log (`first_error`).

At nnodes > 1 the cell runs in a cluster job with one task per node (hubbench.run.jobs).
Task 0, the leader, measures the job's cells as a one-node job does; for each round, `launch`
posts the round (the cell, the rendezvous address and a free port) as `round-K.json` in the
job's mailbox folder (NODES_ENV, set by the leader task: hubbench.run.nodes) and runs torchrun
as node 0 of nnodes (static rendezvous, no --standalone); the other tasks run each posted round
as node 1, 2, ... Only global rank 0, on the leader, writes the round.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from hubbench.measure.metrics import RoundResult
from hubbench.measure.outcome import RankFailure
from hubbench.measure.process import die_with_parent
from hubbench.plan.cell import Cell

TMP_ENV = "HUBBENCH_WORKER_TMP"  # the worker's scratch folder (hubbench.run.worker sets it)
NODES_ENV = "HUBBENCH_NODES"  # a multi-node job's mailbox folder (set by its leader task)
ADDR_ENV = "HUBBENCH_NODES_ADDR"  # the leader's address, for the rendezvous


def torchrun_command(
    cell: Cell,
    cell_file: Path,
    out_file: Path,
    builder: str,
    count: bool,
    nodes: list[str] | None = None,
) -> list[str]:
    """torchrun for one node of the round: `nodes` is its rendezvous options (default: one node,
    --standalone)."""
    return [
        sys.executable, "-m", "torch.distributed.run", *(nodes or ["--standalone"]),
        f"--nproc-per-node={cell.nproc}", "-m", "hubbench.measure.ranks",
        str(cell_file), str(out_file), builder, str(int(count)),
    ]  # fmt: skip


def torchrun_env(cell: Cell) -> dict[str, str]:
    """torchrun's environment: the cell's threads per rank, the ranks' output unbuffered."""
    return {**os.environ, "OMP_NUM_THREADS": str(cell.threads), "PYTHONUNBUFFERED": "1"}


def node_options(nnodes: int, node: int, addr: str, port: int) -> list[str]:
    return [f"--nnodes={nnodes}", f"--node-rank={node}", f"--master-addr={addr}",
            f"--master-port={port}"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _post_round(cell: Cell, builder: str, count: bool) -> tuple[list[str], Path]:
    """Post this round to the job's other nodes: node 0's rendezvous options, and the post (the
    other nodes' ranks write their failures beside it: hubbench.run.nodes)."""
    box = os.environ.get(NODES_ENV)
    if not box:
        raise RankFailure(
            "error",
            f"nnodes={cell.nnodes} runs in a cluster job with a task per node: --executor slurm "
            "(or submitit-local, which runs the nodes as tasks on this host)",
        )
    addr = os.environ.get(ADDR_ENV) or socket.gethostname()
    port = free_port()
    folder = Path(box)
    k = sum(1 for _ in folder.glob("round-[0-9][0-9][0-9][0-9][0-9].json"))  # posts only
    post = {"cell": cell.to_json(), "builder": builder, "count": count, "addr": addr, "port": port}
    _write_atomic(folder / f"round-{k:05d}.json", json.dumps(post))
    return node_options(cell.nnodes, 0, addr, port), folder / f"round-{k:05d}.json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def launch(cell: Cell, builder: str, count_flops: bool) -> RoundResult:
    """One round of `cell` under torchrun; raises RankFailure for a failed rank or launch."""
    nodes, posted = _post_round(cell, builder, count_flops) if cell.nnodes > 1 else (None, None)
    # inside the worker's own scratch folder (TMP_ENV), which the runner removes when it closes
    # the worker: a worker killed for a timeout or by Ctrl-C never runs this block's cleanup
    scratch = os.environ.get(TMP_ENV) or None
    with tempfile.TemporaryDirectory(prefix="hubbench-ddp-", dir=scratch) as tmp:
        cell_file, out_file, log_file = (
            Path(tmp, "cell.json"),
            Path(tmp, "round.json"),
            Path(tmp, "torchrun.log"),
        )
        cell_file.write_text(json.dumps(cell.to_json()))
        with log_file.open("wb") as log:
            code = subprocess.call(
                torchrun_command(cell, cell_file, out_file, builder, count_flops, nodes),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=torchrun_env(cell),
                preexec_fn=die_with_parent,  # the worker killed for a timeout takes it along
            )
        # Rank 0 writes the answer once every rank has met it after the last timed step, so an
        # answer is the whole round even where a rank then failed to exit cleanly.
        answer = json.loads(out_file.read_text()) if out_file.exists() else None
        if answer is None:
            failed = first_failure(out_file, *([posted] if posted else []))
            if failed is not None:
                raise RankFailure(failed["status"], failed["message"])
            tail = first_error(log_file.read_text(errors="replace"))
            raise RankFailure("error", f"torchrun exited with code {code}: {tail}")
        return RoundResult.from_json(answer["round"])


def first_failure(*out_files: Path) -> dict | None:
    """The failure a rank wrote first (hubbench.measure.ranks.error_file) beside any of these
    answers (this node's; the other nodes' in the job's mailbox): the root cause, since the peers
    it left fail after it (a closed connection, or torchrun stopping them)."""
    found = []
    paths = (p for out in out_files for p in out.parent.glob(f"{out.stem}*.rank*.error.json"))
    for path in paths:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(found, key=lambda e: e.get("at", float("inf")), default=None)


_EXCEPTION = re.compile(
    r"^(?:\[rank(\d+)\]:\s*)?((?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception)\b.*)$"
)
_FAULT_FRAME = re.compile(r'^File ".*", line \d+ in ')  # faulthandler's, not a traceback's
_ROOT_FIELD = re.compile(r"^(rank|exitcode|traceback)\s*:\s*(.*)$")


def first_error(log: str) -> str:
    """What a failed torchrun's log says went wrong, on one line. torchrun names the rank that
    failed first (its "Root Cause"); the others only report losing it. That rank's exception if
    it raised one, else how it ended (a signal, with the frame faulthandler printed: a crash in
    C code raises nothing); without a root cause, the first exception; else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    raised: dict[str | None, str] = {}  # rank (None: unnamed) -> its first exception
    for line in lines:
        found = _EXCEPTION.match(line)
        if found and "ChildFailedError" not in line:
            raised.setdefault(found[1], found[2])
    start = next((i for i, line in enumerate(lines) if line.startswith("Root Cause")), None)
    if start is None:
        first = next(iter(raised.items()), None)
        if first is None:
            return (lines[-1] if lines else "no output")[-400:]
        return (f"rank {first[0]}: {first[1]}" if first[0] else first[1])[-400:]
    return _root_cause(lines, start, raised)[-400:]


def _root_cause(lines: list[str], start: int, raised: dict[str | None, str]) -> str:
    """The rank torchrun's "Root Cause" block (from line `start`) names, and why it ended."""
    root: dict[str, str] = {}
    for line in lines[start:]:
        found = _ROOT_FIELD.match(line)
        if found:
            root.setdefault(found[1], found[2].strip())
    rank = root.get("rank", "?").split(" ")[0]
    if rank in raised:
        return f"rank {rank}: {raised[rank]}"
    how = root.get("traceback", "")
    text = f"rank {rank} ended with " + (
        how if how.startswith("Signal") else f"exit code {root.get('exitcode', '?').split(' ')[0]}"
    )
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if fatal is not None:
        block = itertools.takewhile(lambda x: not x.startswith("Extension modules"), lines[fatal:])
        frame = next((x for x in block if _FAULT_FRAME.match(x)), "")
        text += f"; {lines[fatal]}" + (f" at {frame}" if frame else "")
    return text
