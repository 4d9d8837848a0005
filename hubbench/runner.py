"""Cells -> rows: one isolated worker, reused until it fails; every cell becomes a row.

Outcomes, besides what a cell's own exception gives (hubbench.execute):
- the worker dies (segfault, os._exit, killed for memory): `error` with its exit signal and the
  tail of its stderr; a fresh worker takes the next cell;
- no answer within the cell's timeout: the worker is killed, the row is `timeout`.
Ctrl-C reaches only the runner (the worker has its own session), which kills the worker and keeps
the finished rows: the run file is rewritten after every row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import schema, store
from hubbench.cell import Cell
from hubbench.env import TORCH_ENV_KEYS, host_env, utc_now
from hubbench.errors import HubbenchError
from hubbench.suite import Plan
from hubbench.worker import (
    DEFAULT_BUILDER,
    MESSAGE_CHARS,
    STARTUP_TIMEOUT_S,
    Worker,
    WorkerDied,
    WorkerTimeout,
)


@dataclass
class RunResult:
    path: Path
    run_id: str
    rows: list[dict[str, Any]]  # every row of the run file (resumed ones included)
    new_rows: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None
    skipped_done: int = 0  # cells not run because --resume found them
    interrupted: bool = False


def prepare_run(
    plan: Plan, results_dir: Path, resume: bool = False
) -> tuple[store.RunWriter, str, list[Cell], Path | None]:
    """The run file (new, or the suite's latest with --resume) and the cells still to run."""
    store.check_writable(results_dir)
    previous = store.latest_run(results_dir, plan.suite.name) if resume else None
    if previous is not None:
        rows = store.read_rows(previous, for_resume=True)
        done = {r["cell_id"] for r in rows}
        run_id = previous.stem.rpartition("-")[2]
        todo = [c for c in plan.cells if c.cell_id not in done]
        return store.RunWriter(previous, rows), run_id, todo, previous
    path, run_id = store.reserve_run(results_dir, plan.suite.name)
    return store.RunWriter(path), run_id, list(plan.cells), None


def run_plan(
    plan: Plan,
    results_dir: Path,
    *,
    resume: bool = False,
    builder: str = DEFAULT_BUILDER,
    on_start: Callable[[int, int, Cell], None] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run the plan's cells in order; each finished cell is on disk before the next starts."""
    writer, run_id, todo, previous = prepare_run(plan, results_dir, resume)
    result = RunResult(
        writer.path,
        run_id,
        writer.rows,
        resumed_from=previous,
        skipped_done=len(plan.cells) - len(todo),
    )
    env = host_env()
    worker: Worker | None = None
    failed_starts = 0
    try:
        for position, cell in enumerate(todo):
            if on_start:
                on_start(position, len(todo), cell)
            if worker is not None and not worker.alive:
                worker = _discard(worker)
            worker = worker or Worker(builder)
            try:
                if not worker.env:
                    worker.start()
                    failed_starts = 0
                answer = worker.run(cell, cell.measure.timeout_s)
                worker_env = worker.env
            except (WorkerTimeout, WorkerDied) as exc:
                answer = _failure(exc, cell, started=bool(worker.env))
                worker_env = worker.env
                worker = _discard(worker)
                failed_starts += not worker_env
            # a worker that never started could not say which torch it had
            measured_by = worker_env or dict.fromkeys(TORCH_ENV_KEYS)
            row = make_row(cell, answer, plan.suite.name, run_id, {**env, **measured_by})
            writer.append(row)
            result.new_rows.append(row)
            if on_done:
                on_done(row)
            if failed_starts >= 2:
                raise HubbenchError(f"the measuring worker cannot start: {row['message']}")
    except KeyboardInterrupt:
        result.interrupted = True
        worker = _discard(worker)
    finally:
        if worker is not None:
            worker.close()
    return result


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
    return {"outcome": outcome, "measurement": None}


def _discard(worker: Worker | None) -> None:
    if worker is not None:
        worker.kill()
        worker.close()
    return None


def make_row(
    cell: Cell, answer: Mapping[str, Any], suite: str, run_id: str, env: Mapping[str, Any]
) -> dict[str, Any]:
    """One results row from its parts; schema.row refuses a missing or unknown column."""
    identity = {
        "schema_version": schema.SCHEMA_VERSION,
        "run_id": run_id,
        "suite": suite,
        "cell_index": cell.index,
        "cell_id": cell.cell_id,
    }
    where = f"cell {cell.index}"
    measurement = answer["measurement"]
    return schema.row(
        {
            **schema.part("identity", identity, where),
            **cell.columns(),
            **schema.part("outcome", answer["outcome"], where),
            **(schema.empty("measurement") if measurement is None else measurement),
            **schema.part("env", {**env, "utc_time": utc_now()}, where),
        },
        where,
    )
