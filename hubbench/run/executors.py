"""Executors: where a run's cells are measured. `local` is this process' isolated worker
(hubbench.run.rounds); `submitit-local` and `slurm` shard the cells into submitit jobs
(hubbench.run.jobs), which this module submits and follows.

Each job writes its rows, after each round, to its own part file (hubbench.run.parts). The
submitting process polls the jobs, merges every row of a part that supersedes the one it has
(hubbench.store.supersedes) into the one run file (rewritten atomically,
hubbench.store.RunWriter) and removes the parts once the run is complete. So the run file is
always a valid run, a crash of the submitter loses nothing a job wrote, and plot / compare /
gate read it like a local run.

A job that fails, is cancelled or is killed leaves every cell it had not finished as an `error`
row with the job's reason and `job_lost` true, keeping the rounds it measured
(hubbench.run.lost); `--resume` submits those cells (and the ones never measured) again, and
only those. Ctrl-C cancels the jobs and keeps what they wrote. Job logs (submitit's stdout /
stderr per job) stay in `<run>.jobs/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.errors import HubbenchError
from hubbench.plan.executor import ExecutorSpec
from hubbench.run.eta import Eta, Progress
from hubbench.run.jobs import JobSpec, nnodes_of, run_job, shard, submitit_executor
from hubbench.run.lost import job_state, lost_row, lost_state, watch_slurm, why
from hubbench.run.parts import PartFile, jobs_folder, new_attempt, part_path, remove_parts
from hubbench.run.rows import CellState, state_from_row

Put = Callable[[dict[str, Any]], None]
OnDone = Callable[[dict[str, Any], CellState, Progress], None]
STARTED = ("RUNNING", "COMPLETING")  # submitit states of a job that runs


CONTROLLER_LOG = "controllers.err"  # submitit-local's job controllers' stderr, in the jobs folder


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 sent to `path` while the block runs, for processes started in it.
    submitit-local starts each job's controller with this process' stderr; a controller that
    Ctrl-C (or a cancel, which is SIGINT) stops prints a KeyboardInterrupt traceback from
    submitit's own code, which belongs in the jobs folder, not under the run's last line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class JobCounts:
    """How the jobs stand, for progress."""

    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    waiting: int = 0  # not yet submitted (submitit-local submits `parallelism` at a time)

    def line(self) -> str:
        parts = [f"{self.waiting} waiting"] * bool(self.waiting)
        parts += [f"{self.pending} pending", f"{self.running} running", f"{self.done} done"]
        parts += [f"{self.failed} failed"] * bool(self.failed)
        return "jobs: " + ", ".join(parts)


@dataclass
class Job:
    """A job as its submitter follows it."""

    index: int
    states: list[CellState]
    part: PartFile
    handle: Any = None  # the submitit job once submitted
    finished: bool = False
    failed: bool = False

    @property
    def job_id(self) -> str | None:
        return None if self.handle is None else str(self.handle.job_id)

    @property
    def running(self) -> bool:
        return self.handle is not None and not self.finished


def run_jobs(
    spec: ExecutorSpec,
    states: list[CellState],
    put: Put,
    suite: str,
    run_id: str,
    builder: str,
    run_path: Path,
    *,
    rows: list[dict[str, Any]] | None = None,
    on_done: OnDone | None = None,
    on_jobs: Callable[[JobCounts], None] | None = None,
) -> bool:
    """Measure the pending states in submitit jobs (module docstring); True if interrupted.
    `rows`: the run's rows so far (--resume), `put` takes each row the jobs add."""
    pending = [s for s in states if s.pending]
    if not pending:
        return False
    job_args = {"suite": suite, "run_id": run_id, "builder": builder}
    submitter = Submitter(spec, pending, put, run_path, rows or [], job_args)
    submitter.on_done, submitter.on_jobs = on_done, on_jobs
    return submitter.run()


class Submitter:
    """Submits the jobs of one attempt, merges what they write, and notices when they end."""

    on_done: OnDone | None = None  # hears each row merged
    on_jobs: Callable[[JobCounts], None] | None = None  # hears how the jobs stand, on change

    def __init__(
        self,
        spec: ExecutorSpec,
        pending: list[CellState],
        put: Put,
        run_path: Path,
        rows: list[dict[str, Any]],
        job_args: dict[str, str],  # suite, run_id and builder: the same in every JobSpec
    ) -> None:
        self.spec, self.put, self.job_args = spec, put, job_args
        self.folder = jobs_folder(run_path)
        self.fresh = not self.folder.exists()  # made by this attempt: removed if it submits none
        attempt = new_attempt(self.folder)
        self.marker = self.folder / f"attempt-{attempt}"
        shards = shard(pending, spec.cells_per_job)
        self.jobs = [Job(k, piece, PartFile(part_path(self.folder, attempt, k)))
                     for k, piece in enumerate(shards)]  # fmt: skip
        self.waiting = list(self.jobs)
        self.cells = {s.cell.cell_id: s.cell for s in pending}
        self.latest = {r["cell_id"]: r for r in rows}  # each cell's row so far
        self.eta = Eta(pending)
        self.started = time.perf_counter()
        self.counts: JobCounts | None = None
        self.executors = self._executors(shards)

    def _executors(self, shards: list[list[CellState]]) -> dict[int, Any]:
        """A submitit executor per node count (a job's nodes are its executor's setting)."""
        try:
            made = {n: submitit_executor(self.spec, self.folder,
                                         [p for p in shards if nnodes_of(p) == n], n)
                    for n in sorted({nnodes_of(p) for p in shards})}  # fmt: skip
        except Exception as exc:  # submitit could not set up this executor (no sbatch, ...)
            self.abandon()
            raise HubbenchError(
                f"--executor {self.spec.kind}: {' '.join(str(exc).split())}"
            ) from exc
        if self.spec.kind == "slurm":
            watch_slurm()
        return made

    def run(self) -> bool:
        """Poll until every job has ended; True if Ctrl-C stopped it (the jobs are cancelled)."""
        try:
            while self.poll():
                time.sleep(self.spec.poll_s)
        except KeyboardInterrupt:
            self.cancel()
            return True
        if not any(s.pending for job in self.jobs for s in self.final_states(job)):
            # every row is in the run file: this attempt's, and earlier ones' (merged on --resume)
            remove_parts(self.folder)
        return False

    def poll(self) -> bool:
        """Submit the jobs there is room for, merge what the jobs wrote, finish those that
        ended; False once every job has ended."""
        room = len(self.waiting)
        if self.spec.kind != "slurm":  # slurm: the array's parallelism limits it
            room = self.spec.jobs_at_once - sum(j.running for j in self.jobs)
        if self.waiting and room > 0:
            self.submit(self.waiting[:room])
            self.waiting = self.waiting[room:]
        for job in (j for j in self.jobs if j.running):
            self.merge(job)
            if job.handle.done():
                self.merge(job)
                self.finish(job)
        self.tell_counts()
        return bool(self.waiting) or not all(j.finished for j in self.jobs)

    def submit(self, batch: list[Job]) -> None:
        handles: dict[int, Any] = {}
        try:
            for n, executor in self.executors.items():
                mine = [j for j in batch if nnodes_of(j.states) == n]
                if not mine:
                    continue
                if self.spec.kind == "slurm":
                    batched: Any = executor.batch()
                else:  # submitit-local's job controllers inherit fd 2: theirs is a log file
                    batched = stderr_to(self.folder / CONTROLLER_LOG)
                with batched:
                    made = [executor.submit(run_job, self.payload(j)) for j in mine]
                handles.update({j.index: h for j, h in zip(mine, made, strict=True)})
        except Exception as exc:  # sbatch refused (no such partition, no Slurm, ...)
            # jobs an earlier group submitted are live: their folder holds their pickles,
            # logs and parts, so it is kept (their ids are in it for scancel)
            if not handles and not any(j.handle is not None for j in self.jobs):
                self.abandon()
            raise HubbenchError(
                f"--executor {self.spec.kind}: submitting failed: {' '.join(str(exc).split())}"
            ) from exc
        for job in batch:
            job.handle = handles[job.index]
            # a job that ended without a result is waited for this long (submitit: 15 s)
            job.handle._results_timeout_s = 5

    def abandon(self) -> None:
        """Undo an attempt that submitted no job: its folder if it made it (a refused
        `--executor slurm` left an empty `.jobs/` with submitit's scripts), else its marker."""
        if self.fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            self.marker.unlink(missing_ok=True)

    def payload(self, job: Job) -> JobSpec:
        return JobSpec(
            cells=[s.cell.to_json() for s in job.states],
            rows=[self.latest.get(s.cell.cell_id) for s in job.states],
            part=str(job.part.path),
            executor=self.spec.kind,
            **self.job_args,
        )

    def merge(self, job: Job) -> None:
        for row in job.part.read():
            self.accept(row)

    def accept(self, row: dict[str, Any], state: CellState | None = None) -> None:
        """A cell's row, if it supersedes the one the run has: to the run file, the estimate
        and the caller. `state`: the row's, where the caller has it."""
        cell_id = row["cell_id"]
        old = self.latest.get(cell_id)
        if row == old or not store.supersedes(row, old):
            return
        cell = self.cells[cell_id]
        state = state or state_from_row(cell, row)
        self.latest[cell_id] = row
        self.put(row)
        self.eta.catch_up(state_from_row(cell, old), state)
        if self.on_done:
            self.on_done(row, state, self.progress())

    def progress(self) -> Progress:
        left = [[s.cell.cell_id for s in j.states] for j in self.jobs if not j.finished]
        elapsed = time.perf_counter() - self.started
        return self.eta.progress(elapsed, jobs=left, at_once=self.spec.jobs_at_once)

    def final_states(self, job: Job) -> list[CellState]:
        return [state_from_row(s.cell, self.latest.get(s.cell.cell_id)) for s in job.states]

    def finish(self, job: Job) -> None:
        """A job is done: if it did not measure everything it was given, its cells are lost."""
        job.finished = True
        reason = self.failure(job)
        if reason is None and any(s.pending for s in self.final_states(job)):
            reason = f"job {job.job_id} ended without measuring every round"
        if reason is not None:
            job.failed = True
            self.lose(job, reason)

    def failure(self, job: Job) -> str | None:
        """Why the job failed, from its result (task 0's, a multi-node job's leader)."""
        try:
            outcome = job.handle.results()[0]
        except Exception as exc:  # the job failed, was cancelled or killed
            return why(job.handle, exc)
        if outcome.get("interrupted"):
            return f"job {job.job_id} was stopped by a signal (cancelled or out of time)"
        return None

    def lose(self, job: Job, reason: str) -> None:
        """Every cell the job left unfinished: an error row with the job's reason."""
        execution = {"executor": self.spec.kind, "job_id": job.job_id}
        args = self.job_args
        for s in job.states:
            row = self.latest.get(s.cell.cell_id)
            if not state_from_row(s.cell, row).pending:
                continue
            lost = lost_state(s, row, reason)
            self.accept(lost_row(lost, row, args["suite"], args["run_id"], execution), lost)

    def cancel(self) -> None:
        """Ctrl-C: cancel the jobs, give them 30 s to stop their workers, keep what they wrote."""
        for job in (j for j in self.jobs if j.running):
            with contextlib.suppress(Exception):
                job.handle.cancel(check=False)
        deadline = time.monotonic() + 30
        for job in (j for j in self.jobs if j.running):
            while not job.handle.done() and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(Exception):
                self.merge(job)

    def tell_counts(self) -> None:
        counts = JobCounts(waiting=len(self.waiting))
        for job in (j for j in self.jobs if j.handle is not None):
            if job.finished:
                counts.failed += job.failed
                counts.done += not job.failed
            elif job.part.path.exists() or job_state(job.handle).upper() in STARTED:
                counts.running += 1
            else:
                counts.pending += 1
        if self.on_jobs and counts != self.counts:
            self.on_jobs(counts)
        self.counts = counts
