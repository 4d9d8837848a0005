"""Cells -> rows: rounds interleaved across cells, one isolated worker, every cell a row.

Each cell is measured in `rounds` timing blocks. Pass 1 measures round 1 of every cell in plan
order, pass 2 round 2 of every cell in a shuffled order (seeded by the pass number, so every run
uses the same orders), and so on: slow drift of a shared machine then hits every cell alike, and
the statistics (hubbench.report.stats) see the drift as between-round variance. Every round
builds the cell's model afresh in the worker (docs/measurement.md says why), and the cell's row
is rewritten after each of its rounds, so an interrupted run keeps every round measured.

Outcomes, besides what a round's own exception gives (hubbench.measure.cell):
- the worker dies (segfault, os._exit, killed for memory): `error` with its exit signal and the
  tail of its stderr; a fresh worker takes the next cell;
- no answer within the cell's timeout (per round): the worker is killed, the row is `timeout`.
A cell that fails in any round is done: its row keeps the failure (`round k/R: ...`) and the
rounds measured before it. Ctrl-C reaches only the runner (the worker has its own session), which
kills the worker and keeps the rows on disk.

`measure_states` is that loop for any list of cells; a submitit job (hubbench.run.executors) runs
it for its share of the cells, so a cell measures the same whichever executor ran it.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import schema, store
from hubbench.errors import ConfigError, HubbenchError
from hubbench.measure.env import TORCH_ENV_KEYS, host_env, utc_now
from hubbench.measure.metrics import (
    RoundResult,
    measurement_columns,
    quality_columns,
    weak_scaling,
)
from hubbench.measure.outcome import MESSAGE_CHARS
from hubbench.plan.cell import Cell
from hubbench.plan.suite import Plan
from hubbench.run.eta import Eta, Progress
from hubbench.run.executors import leftover_rows
from hubbench.run.worker import (
    DEFAULT_BUILDER,
    STARTUP_TIMEOUT_S,
    Worker,
    WorkerDied,
    WorkerTimeout,
)
from hubbench.schema import BACKEND_COLUMNS

PARTIAL = "partial"  # the status of a cell with rounds still to come


@dataclass
class CellState:
    """A cell's rounds so far and how it ended (None: still to be measured)."""

    cell: Cell
    rounds: list[RoundResult] = field(default_factory=list)
    failure: dict[str, Any] | None = None  # the outcome of the round that failed
    device_name: str | None = None
    wall_s: float = 0.0
    job_lost: bool = False  # failed with its job, not on its own (hubbench.run.executors)

    @property
    def pending(self) -> bool:
        return self.failure is None and len(self.rounds) < self.cell.measure.rounds


@dataclass
class RunResult:
    path: Path
    run_id: str
    rows: list[dict[str, Any]]  # every row of the run file (resumed ones included)
    new_rows: list[dict[str, Any]] = field(default_factory=list)  # rows this run measured
    resumed_from: Path | None = None
    skipped_done: int = 0  # cells not run because --resume found them complete
    interrupted: bool = False


def prepare_run(
    plan: Plan, results_dir: Path, resume: bool = False
) -> tuple[store.RunWriter, str, list[CellState], Path | None]:
    """The run file (new, or the suite's latest with --resume) and each cell's state."""
    store.check_writable(results_dir / plan.suite.name)  # a file or read-only folder there too
    previous = store.latest_run(results_dir, plan.suite.name) if resume else None
    if previous is None:
        path, run_id = store.reserve_run(results_dir, plan.suite.name)
        return store.RunWriter(path), run_id, [CellState(c) for c in plan.cells], None
    rows = store.read_rows(previous, for_resume=True)
    writer = store.RunWriter(previous, rows)
    for row in leftover_rows(previous, rows):  # what jobs wrote that their submitter did not merge
        writer.put(row)
    by_id = {r["cell_id"]: r for r in writer.rows}
    states = [_resumed(c, by_id.get(c.cell_id)) for c in plan.cells]
    return writer, previous.stem.rpartition("-")[2], states, previous


def _resumed(cell: Cell, row: Mapping[str, Any] | None) -> CellState:
    """A cell's state from its row in the run being resumed (absent: nothing measured)."""
    state = CellState(cell)
    if row is None:
        return state
    state.device_name, state.wall_s = row["device_name"], row["wall_s"] or 0.0
    sentinels = row["round_sentinel_s"] or []
    sessions = row["round_sessions"] or []
    for i, samples in enumerate(row["round_samples_s"] or []):
        first = i == 0  # the row's totals and maxima go to the first round, once
        state.rounds.append(
            RoundResult(
                samples_s=list(samples),
                tokens=row["tokens_per_step"],
                warmup_s=row["warmup_s"] if first else 0.0,
                warmup_steps=row["warmup_steps"] if first else 0,
                warmup_capped=row["warmup_capped"] if first else 0,
                sentinel_s=sentinels[i] if i < len(sentinels) else None,
                peak_mem_bytes=row["peak_mem_bytes"] if first else None,
                peak_mem_reserved_bytes=row["peak_mem_reserved_bytes"] if first else None,
                mem_kind=row["mem_kind"],
                mem_baseline_bytes=row["mem_baseline_bytes"],
                flops_per_step=row["flops_per_step"],
                flops_per_step_analytic=row["flops_per_step_analytic"],
                peak_flops_per_s=row["peak_flops_per_s"],
                peak_flops_source=row["peak_flops_source"],
                bytes_per_step_min=row["bytes_per_step_min"],
                peak_bytes_per_s=row["peak_bytes_per_s"],
                peak_bytes_source=row["peak_bytes_source"],
                params=row["params"],
                backends=(
                    {key: row[col] for col, key in BACKEND_COLUMNS.items() if row[col]}
                    if first
                    else {}
                ),
                session=sessions[i] if i < len(sessions) else None,
                state_bytes=row["state_bytes"] if first else None,
                quality=(
                    {k: row[k] for k in schema.names("quality")}
                    if first and row["task"] is not None
                    else None
                ),
                world_size=row["world_size"] or 1,
            )
        )
    if row["status"] not in ("ok", PARTIAL) and not row["job_lost"]:
        state.failure = {k: row[k] for k in schema.names("outcome")}
    return state


def schedule(states: list[CellState]) -> Iterator[list[CellState]]:
    """The passes, each formed when the one before it is done: pass p holds the cells whose next
    round is round p + 1, in plan order for the first pass and shuffled (seeded by p) after."""
    depth = max((s.cell.measure.rounds for s in states), default=0)
    for p in range(depth):
        group = [s for s in states if s.pending and len(s.rounds) == p]
        if p > 0:
            random.Random(p).shuffle(group)
        yield group


LOCAL = {"executor": "local", "job_id": None}  # the execution columns of a cell run here


def run_plan(
    plan: Plan,
    results_dir: Path,
    *,
    resume: bool = False,
    builder: str = DEFAULT_BUILDER,
    executor: Any = None,
    on_start: Callable[[CellState, Progress], None] | None = None,
    on_done: Callable[[dict[str, Any], CellState, Progress], None] | None = None,
    on_jobs: Callable[[Any], None] | None = None,
) -> RunResult:
    """Measure every pending round of the plan; a cell's row is on disk after each round.

    `executor` (hubbench.run.executors.ExecutorSpec; None: local) runs the cells in submitit jobs
    instead of this process' worker; `on_jobs` then hears how the jobs stand.
    """
    if (executor is None or executor.kind == "local") and any(c.nnodes > 1 for c in plan.cells):
        many = max(c.nnodes for c in plan.cells)
        raise ConfigError(
            f"nnodes={many} needs a job with a task per node: --executor slurm (or "
            "submitit-local, which runs the nodes as tasks on this host)",
            ("nnodes",),
        )
    writer, run_id, states, previous = prepare_run(plan, results_dir, resume)
    result = RunResult(
        writer.path,
        run_id,
        writer.rows,
        resumed_from=previous,
        skipped_done=sum(not s.pending for s in states),
    )
    touched: set[str] = set()

    def put(row: dict[str, Any]) -> None:
        writer.put(row)
        touched.add(row["cell_id"])

    previous_handlers = _stop_on_signals()
    try:
        if executor is None or executor.kind == "local":
            result.interrupted = measure_states(
                states, put, plan.suite.name, run_id, builder, LOCAL, on_start, on_done
            )
        else:
            from hubbench.run.executors import run_jobs

            result.interrupted = run_jobs(
                executor, states, put, plan.suite.name, run_id, builder, writer.path,
                rows=writer.rows, on_done=on_done, on_jobs=on_jobs,
            )  # fmt: skip
    finally:
        _restore(previous_handlers)
    for cell_id, efficiency in weak_scaling(writer.rows).items():
        row = next(r for r in writer.rows if r["cell_id"] == cell_id)
        if row["weak_scaling_efficiency"] != efficiency:
            put({**row, "weak_scaling_efficiency": efficiency})
    result.rows = writer.rows
    result.new_rows = [r for r in writer.rows if r["cell_id"] in touched]
    return result


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
    worker: Worker | None = None
    failed_starts = 0
    started = time.perf_counter()
    session = time.time()  # rounds of one session pair (hubbench.report.stats)
    try:
        for group in schedule(states):
            for state in group:
                if not state.pending:  # failed in an earlier pass
                    continue
                if on_start:
                    on_start(state, eta.progress(time.perf_counter() - started))
                if worker is not None and not worker.alive:
                    worker = _discard(worker)
                worker = worker or Worker(builder)
                cell = state.cell
                try:
                    if not worker.env:
                        worker.start()
                        failed_starts = 0
                    answer = worker.run(cell, cell.measure.timeout_s, count_flops=not state.rounds)
                    worker_env = worker.env
                except (WorkerTimeout, WorkerDied) as exc:
                    answer = _failure(exc, cell, started=bool(worker.env))
                    worker_env = worker.env
                    worker = _discard(worker)
                    failed_starts += not worker_env
                _record(state, answer, session)
                eta.record(state, answer["outcome"])
                # a worker that never started could not say which torch it had
                measured_by = worker_env or dict.fromkeys(TORCH_ENV_KEYS)
                row = make_row(state, suite, run_id, {**env, **measured_by}, execution)
                put(row)
                if on_done:
                    on_done(row, state, eta.progress(time.perf_counter() - started))
                if failed_starts >= 2:
                    raise HubbenchError(f"the measuring worker cannot start: {row['message']}")
    except KeyboardInterrupt:
        worker = _discard(worker)
        return True
    finally:
        if worker is not None:
            worker.close()
    return False


def _record(state: CellState, answer: Mapping[str, Any], session: float) -> None:
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


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP stop a run the way Ctrl-C does: the worker is killed, rows are kept."""

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, stop) for s in STOP_SIGNALS}


def _restore(handlers: Mapping[int, Any]) -> None:
    for s, handler in handlers.items():
        signal.signal(s, handler)


def _discard(worker: Worker | None) -> None:
    if worker is not None:
        worker.kill()
        worker.close()
    return None


def make_row(
    state: CellState,
    suite: str,
    run_id: str,
    env: Mapping[str, Any],
    execution: Mapping[str, Any] = LOCAL,
) -> dict[str, Any]:
    """A cell's row from its rounds so far; schema.row refuses a missing or unknown column.
    `execution`: the executor and job id (job_lost comes from the state)."""
    cell = state.cell
    identity = {
        "schema_version": schema.SCHEMA_VERSION,
        "run_id": run_id,
        "suite": suite,
        "cell_index": cell.index,
        "cell_id": cell.cell_id,
    }
    where = f"cell {cell.index}"
    outcome = {"status": "ok", "message": None, **(state.failure or {})}
    if state.failure is None and len(state.rounds) < cell.measure.rounds:
        outcome["status"] = PARTIAL
        outcome["message"] = (
            f"{len(state.rounds)} of {cell.measure.rounds} rounds measured; --resume measures "
            "the rest"
        )
    outcome.update(device_name=state.device_name, wall_s=state.wall_s)
    measurement = (
        measurement_columns(state.rounds, where) if state.rounds else schema.empty("measurement")
    )
    quality = quality_columns(state.rounds, where)
    return schema.row(
        {
            **schema.part("identity", identity, where),
            **cell.columns(),
            **schema.part("outcome", outcome, where),
            **schema.part("execution", {**execution, "job_lost": state.job_lost}, where),
            **measurement,
            **quality,
            **schema.part("env", {**env, "utc_time": utc_now()}, where),
        },
        where,
    )
