"""Cells into submitit jobs: which cells share a job, what a job runs, the executor it runs on.

Sharding: cells that differ only in the model (variant and its config: what compare and the gate
divide) are packed into one job where `cells_per_job` allows, so their ratios are measured
interleaved on one host. A job runs its cells exactly as a local run does
(hubbench.run.rounds.measure_states: the same isolated worker, rounds interleaved across the job's
cells) and writes each row, after each round, to its own part file (hubbench.run.parts).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.errors import HubbenchError
from hubbench.plan.cell import Cell
from hubbench.plan.executor import ExecutorSpec
from hubbench.run.nodes import follow, leading
from hubbench.run.rounds import measure_states, stop_on_signals
from hubbench.run.rows import CellState, state_from_row

CLUSTER = {"submitit-local": "local", "slurm": "slurm"}  # submitit.AutoExecutor(cluster=...)


def comparison_key(cell: Cell) -> str:
    """What a cell shares with the cells it is compared with: every run field but the variant,
    and the dtype; the model's own fields (hubs, attention, ...) may differ."""
    run = {k: v for k, v in cell.run_fields.items() if k != "variant"}
    return repr(sorted({**run, "dtype": getattr(cell.config, "dtype", None)}.items()))


def shard(states: list[CellState], cells_per_job: int) -> list[list[CellState]]:
    """States packed into jobs of at most `cells_per_job`, each comparison group whole where it
    fits, groups in plan order; a job's cells all run on the same number of nodes (its tasks)."""
    groups: dict[str, list[CellState]] = {}
    for s in states:
        groups.setdefault(comparison_key(s.cell), []).append(s)
    jobs: list[list[CellState]] = []
    current: list[CellState] = []
    for group in groups.values():
        for start in range(0, len(group), cells_per_job):
            piece = group[start : start + cells_per_job]
            other_nodes = current and current[0].cell.nnodes != piece[0].cell.nnodes
            if current and (len(current) + len(piece) > cells_per_job or other_nodes):
                jobs.append(current)
                current = []
            current = current + piece
    if current:
        jobs.append(current)
    return jobs


def nnodes_of(states: list[CellState]) -> int:
    """The nodes a job's cells run on (one value: nnodes is in comparison_key)."""
    return max(s.cell.nnodes for s in states)


# ----------------------------------------------------------------------------- the job side


@dataclass
class JobSpec:
    """What one job measures and where it writes (pickled into the job by submitit)."""

    cells: list[dict[str, Any]]  # Cell.to_json()
    rows: list[dict[str, Any] | None]  # each cell's row so far (resume), None if none
    builder: str
    part: str
    suite: str
    run_id: str
    executor: str


def run_job(job: JobSpec) -> dict[str, Any]:
    """The body of a job: measure its cells with the isolated worker, rows to its part file.

    A job of nnodes > 1 cells has a task per node: task 0 leads (measures, and posts each round
    to the others); the others follow (hubbench.run.nodes).
    """
    job_id, task, tasks = _job_task()
    cells = [Cell.from_json(c) for c in job.cells]
    states = [state_from_row(c, r) for c, r in zip(cells, job.rows, strict=True)]
    nnodes = nnodes_of(states)
    box = nodes_folder(Path(job.part))
    if nnodes > 1 and tasks != nnodes:
        raise HubbenchError(f"job {job_id}: nnodes={nnodes} cells need {nnodes} tasks, got {tasks}")
    if task > 0:
        rounds = follow(box, task)
        return {"follower": task, "rounds": rounds, "host": socket.gethostname()}
    writer = store.RunWriter(Path(job.part))
    execution = {"executor": job.executor, "job_id": job_id}
    # submitit-local runs the "nodes" as tasks on this host
    addr = "127.0.0.1" if job.executor == "submitit-local" else socket.gethostname()
    with stop_on_signals(), leading(box, addr) if nnodes > 1 else contextlib.nullcontext():
        interrupted = measure_states(
            states, writer.put, job.suite, job.run_id, job.builder, execution
        )
    return {"interrupted": interrupted, "host": socket.gethostname(), "job_id": job_id}


def nodes_folder(part: Path) -> Path:
    """A multi-node job's mailbox (hubbench.run.nodes), beside its part file."""
    return part.with_suffix(".nodes")


def _job_task() -> tuple[str | None, int, int]:
    """The job id, this task's global rank and the job's number of tasks."""
    import submitit

    with contextlib.suppress(RuntimeError, KeyError):
        env = submitit.JobEnvironment()
        return str(env.job_id), env.global_rank, env.num_tasks
    return None, 0, 1


# ----------------------------------------------------------------------------- the executor


def submitit_executor(
    spec: ExecutorSpec, folder: Path, shards: list[list[CellState]], nnodes: int
) -> Any:
    """The submitit executor for the jobs of `shards` (all of them `nnodes` nodes): on Slurm,
    nnodes nodes of one task each; submitit-local runs the nodes as tasks on this host."""
    import submitit

    cells = [s.cell for states in shards for s in states]
    cuda = any(c.device.startswith("cuda") for c in cells)
    nproc = max(c.nproc for c in cells)
    gpus = spec.gpus_per_job if spec.gpus_per_job is not None else (nproc if cuda else 0)
    executor = submitit.AutoExecutor(folder=folder, cluster=CLUSTER[spec.kind])
    slurm = spec.kind == "slurm"
    params: dict[str, Any] = {
        "name": "hubbench",
        "timeout_min": spec.time_min,
        "cpus_per_task": spec.cpus_per_job or max(c.threads * c.nproc for c in cells),
        "nodes": nnodes if slurm else 1,
        "tasks_per_node": 1 if slurm else nnodes,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if spec.mem_gb is not None:
        params["mem_gb"] = spec.mem_gb
    if slurm:
        params["slurm_array_parallelism"] = spec.jobs_at_once
        if spec.partition:
            params["slurm_partition"] = spec.partition
    executor.update_parameters(**params)
    return executor
