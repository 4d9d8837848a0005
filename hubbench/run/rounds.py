"""Rounds interleaved across cells, in one isolated worker: the loop every executor runs.

Each cell is measured in `rounds` timing blocks. Pass 1 measures round 1 of every cell in plan
order, pass 2 round 2 of every cell in a shuffled order (seeded by the pass number, so every run
uses the same orders), and so on: slow drift of a shared machine then hits every cell alike, and
the statistics see the drift as between-round variance. Every round builds the cell's model
afresh in the worker (docs/measurement.md says why), and the cell's row is made after each of its
rounds (hubbench.run.rows), so an interrupted run keeps every round measured.

Outcomes, besides what a round's own exception gives (hubbench.measure.cell):
- the worker dies (segfault, os._exit, killed for memory): `error` with its exit signal and the
  tail of its stderr; a fresh worker takes the next cell;
- no answer within the cell's timeout (per round): the worker is killed, the row is `timeout`.
A cell that fails in any round is done: its row keeps the failure (`round k/R: ...`) and the
rounds measured before it. Ctrl-C reaches only the runner (the worker has its own session), which
kills the worker and keeps the rows on disk; SIGTERM and SIGHUP do the same (`stop_on_signals`).

A local run (hubbench.run.runner) and each submitit job (hubbench.run.jobs) run `measure_states`
for their cells, so a cell measures the same whichever executor ran it.

A same-run A/B (hubbench.run.against) gives each cell a state per side. Each side has its own
worker (the baseline's imports REF's worktree; each worker's hello must name the tree and commit
its side expects), and a pass measures a cell's two rounds back to back, the side that goes first
alternating from cell to cell and pass to pass: drift then hits both sides of a cell alike, and
round r of the two sides is a pair (hubbench.report.gate_ab).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hubbench.errors import HubbenchError
from hubbench.measure.entry import PROTOCOL
from hubbench.measure.env import TORCH_ENV_KEYS, host_env, load_1m
from hubbench.measure.metrics import RoundResult
from hubbench.measure.outcome import MESSAGE_CHARS
from hubbench.plan.cell import Cell
from hubbench.run.against import BASELINE, CANDIDATE, Side
from hubbench.run.eta import Eta, Progress
from hubbench.run.rows import CellState, make_row, record_load
from hubbench.run.worker import STARTUP_TIMEOUT_S, Worker, WorkerDied, WorkerTimeout


def schedule(states: list[CellState]) -> Iterator[list[CellState]]:
    """The passes, each formed when the one before it is done: pass p holds the cells whose next
    round is round p + 1, in plan order for the first pass and shuffled (seeded by p) after."""
    depth = max((s.cell.measure.rounds for s in states), default=0)
    for p in range(depth):
        group = [s for s in states if s.pending and len(s.rounds) == p]
        if p > 0:
            random.Random(p).shuffle(group)
        yield paired_sides(group, p)


def paired_sides(group: list[CellState], p: int) -> list[CellState]:
    """A same-run A/B's pass: each cell's sides back to back where its first side came, the
    candidate first in every other cell, and the other way round in the next pass."""
    if not any(s.side for s in group):
        return group
    by_cell: dict[str, list[CellState]] = {}
    for s in group:
        by_cell.setdefault(s.cell.cell_id, []).append(s)
    out: list[CellState] = []
    for k, pair in enumerate(by_cell.values()):
        first = CANDIDATE if (p + k) % 2 == 0 else BASELINE
        pair.sort(key=lambda s: s.side is None or s.side.name != first)
        out.extend(pair)
    return out


def measure_states(
    states: list[CellState],
    put: Callable[[dict[str, Any]], None],
    suite: str,
    run_id: str,
    builder: str,
    execution: Mapping[str, Any],
    on_start: Callable[[CellState, Progress], None] | None = None,
    on_done: Callable[[dict[str, Any], CellState, Progress], None] | None = None,
) -> bool:
    """Every pending round of `states` in this process' isolated worker, passes interleaved
    (schedule); each round's row goes to `put`. True if Ctrl-C (or SIGTERM) stopped it."""
    env = host_env()
    eta = Eta([s for s in states if s.pending])
    workers: dict[str | None, _Workers] = {}
    started = time.perf_counter()
    session = time.time()  # rounds of one session pair (hubbench.report.ratios)
    try:
        for group in schedule(states):
            for state in (s for s in group if s.pending):  # not failed in an earlier pass
                if on_start:
                    on_start(state, eta.progress(time.perf_counter() - started))
                side = state.side
                worker = workers.setdefault(side and side.name, _Workers(builder, side))
                load = load_1m()
                answer, measured_by = worker.run(state)
                _record(state, answer, session, (load, load_1m()))
                eta.record(state, answer["outcome"])
                row = make_row(state, suite, run_id, {**env, **measured_by}, execution)
                put(row)
                if on_done:
                    on_done(row, state, eta.progress(time.perf_counter() - started))
                if worker.failed_starts >= 2:
                    raise HubbenchError(f"the measuring worker cannot start: {row['message']}")
    except KeyboardInterrupt:
        for w in workers.values():
            w.discard()
        return True
    finally:
        for w in workers.values():
            w.close()
    return False


class _Workers:
    """The worker measuring the rounds, replaced by a fresh one when it dies or hangs."""

    def __init__(self, builder: str, side: Side | None = None) -> None:
        self.builder = side.builder if side else builder
        self.side = side
        self.worker: Worker | None = None
        self.failed_starts = 0  # in a row

    def run(self, state: CellState) -> tuple[dict[str, Any], dict[str, Any]]:
        """One round of the cell: the worker's answer, and the torch environment it ran in."""
        if self.worker is not None and not self.worker.alive:
            self.discard()
        pythonpath = self.side.pythonpath if self.side else None
        worker = self.worker = self.worker or Worker(self.builder, pythonpath)
        cell = state.cell
        try:
            if not worker.env:
                worker.start()
                self.failed_starts = 0
                if self.side is not None:
                    check_hello(worker.hello, self.side)
            answer = worker.run(cell, cell.measure.timeout_s, count_flops=not state.rounds)
            measured_by = worker.env
        except (WorkerTimeout, WorkerDied) as exc:
            answer = _failure(exc, cell, started=bool(worker.env))
            measured_by = worker.env
            self.discard()
            self.failed_starts += not measured_by
        # a worker that never started could not say which torch it had
        return answer, measured_by or dict.fromkeys(TORCH_ENV_KEYS)

    def discard(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker.close()
        self.worker = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def check_hello(hello: Mapping[str, Any], side: Side) -> None:
    """A side's worker must have imported its side's tree at its commit, speaking our protocol:
    otherwise its rows would be labelled with code they did not measure."""
    module = Path(str(hello.get("module") or "?")).resolve()
    inside = module.is_relative_to(side.root.resolve())
    problems = [f"it imported {module}, not the {side.name}'s tree {side.root}"] * (not inside)
    if hello.get("protocol") != PROTOCOL:
        problems.append(f"it speaks protocol {hello.get('protocol')}, not {PROTOCOL}")
    if hello.get("commit") != side.commit:
        problems.append(f"its tree is at {hello.get('commit')}, not {side.commit}")
    if problems:
        raise HubbenchError(
            f"the {side.name}'s worker is not the code meant: {'; '.join(problems)}"
        )


def _record(
    state: CellState,
    answer: Mapping[str, Any],
    session: float,
    load: tuple[float | None, float | None] = (None, None),
) -> None:
    outcome = answer["outcome"]
    state.wall_s += outcome["wall_s"] or 0.0
    state.device_name = outcome["device_name"] or state.device_name
    if outcome["status"] != "ok":
        total = state.cell.measure.rounds
        where = f"round {len(state.rounds) + 1}/{total}: " if state.rounds else ""
        message = f"{where}{outcome['message']}"[:MESSAGE_CHARS]
        state.failure = {**outcome, "message": message}
        return
    result = RoundResult.from_json(answer["round"])
    result.session = session
    state.rounds.append(result)
    record_load(state, *load)


def _failure(exc: Exception, cell: Cell, started: bool) -> dict[str, Any]:
    """The answer for a worker that died or did not answer in time."""
    if isinstance(exc, WorkerDied):
        status, message = "error", str(exc)[:MESSAGE_CHARS]
    elif not started:
        status, message = "error", f"the worker did not start within {STARTUP_TIMEOUT_S:g} s"
    else:
        status = "timeout"
        message = (
            f"no result within the {cell.measure.timeout_s:g} s per-cell timeout "
            "(raise it with --timeout); the worker was killed"
        )
    outcome = {"status": status, "message": message, "device_name": None, "wall_s": None}
    return {"outcome": outcome, "round": None}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP stop a run the way Ctrl-C does (the worker is killed, rows are kept)
    while in this block; outside the main thread, where no handler can be set, nothing."""

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
