"""Plan -> rows: the run file, each cell's state (new, or resumed), and the executor that
measures the cells.

A local run measures the cells in this process' isolated worker, rounds interleaved across cells
(hubbench.run.rounds); `--executor submitit-local` or `slurm` measures them in submitit jobs
(hubbench.run.executors), each job running that same loop for its share. Either way a cell's
row is on disk after each of its rounds (hubbench.store.RunWriter), so an interrupted run keeps
every round measured and `--resume` measures only what is left: each cell's state is rebuilt
from its row (hubbench.run.rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.errors import ConfigError
from hubbench.measure.metrics import weak_scaling
from hubbench.measure.process import DEFAULT_BUILDER
from hubbench.plan.executor import ExecutorSpec
from hubbench.plan.suite import Plan
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
    states = [state_from_row(c, by_id.get(c.cell_id)) for c in plan.cells]
    return writer, previous.stem.rpartition("-")[2], states, previous


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
) -> RunResult:
    """Measure every pending round of the plan; a cell's row is on disk after each round.

    `executor` (None: local) runs the cells in submitit jobs instead of this process' worker;
    `on_jobs` then hears how the jobs stand.
    """
    local = executor is None or executor.kind == "local"
    if local:
        _one_node(plan)
    writer, run_id, states, previous = prepare_run(plan, results_dir, resume)
    skipped = sum(not s.pending for s in states)
    result = RunResult(
        writer.path, run_id, writer.rows, resumed_from=previous, skipped_done=skipped
    )
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


def _one_node(plan: Plan) -> None:
    """A local run measures cells of one node only."""
    many = max((c.nnodes for c in plan.cells), default=1)
    if many > 1:
        raise ConfigError(
            f"nnodes={many} needs a job with a task per node: --executor slurm (or "
            "submitit-local, which runs the nodes as tasks on this host)",
            ("nnodes",),
        )


def _weak_scaling(writer: store.RunWriter, put: Callable[[dict[str, Any]], None]) -> None:
    """Each multi-process row's weak-scaling efficiency, against its one-process row: known
    once both are measured, whichever run measured them."""
    for cell_id, efficiency in weak_scaling(writer.rows).items():
        row = next(r for r in writer.rows if r["cell_id"] == cell_id)
        if row["weak_scaling_efficiency"] != efficiency:
            put({**row, "weak_scaling_efficiency": efficiency})
