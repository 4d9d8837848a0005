"""Plan -> rows: the run file, each cell's state (new, or resumed), and the executor that
measures the cells.

A local run measures the cells in this process' isolated worker, rounds interleaved across cells
(hubbench.run.rounds); `--executor submitit-local` or `slurm` measures them in submitit jobs
(hubbench.run.executors), each job running that same loop for its share. Either way a cell's
row is on disk after each of its rounds (hubbench.store.RunWriter), so an interrupted run keeps
every round measured and `--resume` measures only what is left: each cell's state is rebuilt
from its row (hubbench.run.rows).

`sides` (a same-run A/B, hubbench.run.against) measures every cell under both code versions:
a state per cell and side, in two workers, the sides' rounds paired pass by pass; --resume
continues such a run only against the same baseline commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.errors import ConfigError
from hubbench.measure.metrics import weak_scaling
from hubbench.measure.process import DEFAULT_BUILDER
from hubbench.plan.executor import ExecutorSpec, check_cells
from hubbench.plan.suite import Plan
from hubbench.run.against import BASELINE, Side
from hubbench.run.against import resumed_baseline as resumed_baseline  # its old home
from hubbench.run.eta import Progress
from hubbench.run.executors import JobCounts, run_jobs
from hubbench.run.parts import leftover_rows
from hubbench.run.rounds import measure_states, stop_on_signals
from hubbench.run.rows import LOCAL, CellState, state_from_row


@dataclass
class RunResult:
    path: Path
    run_id: str
    rows: list[dict[str, Any]]  # every row of the run file (resumed ones included)
    new_rows: list[dict[str, Any]] = field(default_factory=list)  # rows this run measured
    resumed_from: Path | None = None
    skipped_done: int = 0  # cells not run because --resume found them complete
    interrupted: bool = False
    edited_data: list[str] = field(default_factory=list)  # --resume: data files since edited


def edited_data(plan: Plan, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The data files of the plan whose rows in a resumed run were trained on other content:
    their cells are new (data_digest is in the identity), the old seeds are not pooled in."""
    now = {(c.data, c.data_digest) for c in plan.cells if c.data_digest}
    files = {data for data, _ in now}
    had = {(r.get("data"), r.get("data_digest")) for r in rows if r.get("data") in files}
    return sorted({data for data, digest in had if digest and (data, digest) not in now})


def prepare_run(
    plan: Plan, results_dir: Path, resume: bool = False, sides: Sequence[Side] = ()
) -> tuple[store.RunWriter, str, list[CellState], Path | None]:
    """The run file (new, or the suite's latest with --resume) and each cell's state: one per
    cell, or one per cell and side (`sides`: a same-run A/B)."""
    store.check_writable(results_dir / plan.suite.name)  # a file or read-only folder there too
    previous = store.latest_run(results_dir, plan.suite.name) if resume else None
    if previous is None:
        path, run_id = store.reserve_run(results_dir, plan.suite.name)
        states = [CellState(c, side=side) for c in plan.cells for side in sides or (None,)]
        return store.RunWriter(path), run_id, states, None
    rows = store.read_resumable(previous, plan.suite.name)
    check_resumed_sides(previous, rows, sides)
    writer = store.RunWriter(previous, rows)
    for row in leftover_rows(previous, rows):  # what jobs wrote that their submitter did not merge
        writer.put(row)
    by_id = {r["cell_id"]: r for r in writer.rows}
    states = []
    for cell in plan.cells:
        for side in sides or (None,):
            key = cell.cell_id + (side.suffix() if side else "")
            states.append(state_from_row(cell, by_id.get(key), side))
    return writer, previous.stem.rpartition("-")[2], states, previous


def check_resumed_sides(path: Path, rows: list[dict[str, Any]], sides: Sequence[Side]) -> None:
    """--resume continues a run with the code versions it started with: an A/B run only as the
    same A/B (its baseline commit), an ordinary run only as an ordinary one."""
    had = {r.get("side_commit") for r in rows if r.get("side") == BASELINE}
    now = {s.commit for s in sides if s.name == BASELINE}
    if had == now:
        return
    if not had:
        raise ConfigError(f"--resume: {path.name} is an ordinary run; --against cannot continue it")
    raise ConfigError(
        f"--resume: {path.name} is a same-run A/B against {', '.join(sorted(had))}; continue it "
        f"with --against {sorted(had)[0]}" + (f", not {sorted(now)[0]}" if now else "")
    )


def run_plan(
    plan: Plan,
    results_dir: Path,
    *,
    resume: bool = False,
    builder: str = DEFAULT_BUILDER,
    executor: ExecutorSpec | None = None,
    on_start: Callable[[CellState, Progress], None] | None = None,
    on_done: Callable[[dict[str, Any], CellState, Progress], None] | None = None,
    on_jobs: Callable[[JobCounts], None] | None = None,
    sides: Sequence[Side] = (),
) -> RunResult:
    """Measure every pending round of the plan; a cell's row is on disk after each round.

    `executor` (None: local) runs the cells in submitit jobs instead of this process' worker;
    `on_jobs` then hears how the jobs stand. `sides`: a same-run A/B (local only).
    """
    local = executor is None or executor.kind == "local"
    check_cells(executor or ExecutorSpec(), plan.cells, ab=bool(sides))
    writer, run_id, states, previous = prepare_run(plan, results_dir, resume, sides)
    skipped = sum(not s.pending for s in states)
    result = RunResult(
        writer.path, run_id, writer.rows, resumed_from=previous, skipped_done=skipped,
        edited_data=edited_data(plan, writer.rows) if previous is not None else [],
    )  # fmt: skip
    touched: set[str] = set()

    def put(row: dict[str, Any]) -> None:
        writer.put(row)
        touched.add(row["cell_id"])

    suite = plan.suite.name
    with stop_on_signals():
        if local:
            result.interrupted = measure_states(
                states, put, suite, run_id, builder, LOCAL, on_start, on_done
            )
        else:
            result.interrupted = run_jobs(
                executor, states, put, suite, run_id, builder, writer.path,
                rows=writer.rows, on_done=on_done, on_jobs=on_jobs,
            )  # fmt: skip
    _weak_scaling(writer, put)
    result.rows = writer.rows
    result.new_rows = [r for r in writer.rows if r["cell_id"] in touched]
    return result


def _weak_scaling(writer: store.RunWriter, put: Callable[[dict[str, Any]], None]) -> None:
    """Each multi-process row's weak-scaling efficiency, against its one-process row: known
    once both are measured, whichever run measured them."""
    for cell_id, efficiency in weak_scaling(writer.rows).items():
        row = next(r for r in writer.rows if r["cell_id"] == cell_id)
        if row["weak_scaling_efficiency"] != efficiency:
            put({**row, "weak_scaling_efficiency": efficiency})
