"""Executors: where a run's cells are measured. `local` is this process' isolated worker
(hubbench.run.runner); `submitit-local` and `slurm` shard the cells into submitit jobs.

A job runs its cells exactly as a local run does (hubbench.run.runner.measure_states: the same
isolated worker, rounds interleaved across the job's cells) and writes each row, after each
round, to its own part file `<run>.jobs/part-<attempt>-<k>.parquet`. The submitting process
polls the jobs, merges every new or grown row of a part into the one run file (rewritten
atomically, hubbench.store.RunWriter) and removes the parts once the run is complete. So the run
file is always a valid run, a crash of the submitter loses nothing a job wrote, and plot /
compare / gate read it like a local run.

A job that fails, is cancelled or is killed leaves every cell it had not finished as an `error`
row with the job's reason and `job_lost` true, keeping the rounds it measured; `--resume`
submits those cells (and the ones never measured) again, and only those. Ctrl-C cancels the
jobs and keeps what they wrote.

Sharding: cells that differ only in the model (variant and its config: what compare and the
gate divide) are packed into one job where `cells_per_job` allows, so their ratios are
measured interleaved on one host. Job logs (submitit's stdout / stderr per job) stay in
`<run>.jobs/`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench.errors import HubbenchError
from hubbench.plan.executor import ExecutorSpec

CLUSTER = {"submitit-local": "local", "slurm": "slurm"}  # submitit.AutoExecutor(cluster=...)


# ----------------------------------------------------------------------------- sharding


def comparison_key(cell: Any) -> str:
    """What a cell shares with the cells it is compared with: every run field but the variant,
    and the dtype; the model's own fields (hubs, attention, ...) may differ."""
    run = {k: v for k, v in cell.run_fields.items() if k != "variant"}
    return repr(sorted({**run, "dtype": getattr(cell.config, "dtype", None)}.items()))


def shard(states: list[Any], cells_per_job: int) -> list[list[Any]]:
    """States packed into jobs of at most `cells_per_job`, each comparison group whole where it
    fits, groups in plan order; a job's cells all run on the same number of nodes (its tasks)."""
    groups: dict[str, list[Any]] = {}
    for s in states:
        groups.setdefault(comparison_key(s.cell), []).append(s)
    jobs: list[list[Any]] = []
    current: list[Any] = []
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
    to the others); the others follow (hubbench.measure.ranks).
    """
    from hubbench import store
    from hubbench.plan.cell import Cell
    from hubbench.run.nodes import follow, leading
    from hubbench.run.runner import _restore, _resumed, _stop_on_signals, measure_states

    job_id, task, tasks = _job_task()
    states = [_resumed(Cell.from_json(c), r) for c, r in zip(job.cells, job.rows, strict=True)]
    nnodes = max(s.cell.nnodes for s in states)
    box = nodes_folder(Path(job.part))
    if nnodes > 1 and tasks != nnodes:
        raise HubbenchError(f"job {job_id}: nnodes={nnodes} cells need {nnodes} tasks, got {tasks}")
    if task > 0:
        rounds = follow(box, task)
        return {"follower": task, "rounds": rounds, "host": socket.gethostname()}
    writer = store.RunWriter(Path(job.part))
    execution = {"executor": job.executor, "job_id": job_id}
    handlers = _stop_on_signals()
    # submitit-local runs the "nodes" as tasks on this host
    addr = "127.0.0.1" if job.executor == "submitit-local" else socket.gethostname()
    try:
        with leading(box, addr) if nnodes > 1 else contextlib.nullcontext():
            interrupted = measure_states(
                states, writer.put, job.suite, job.run_id, job.builder, execution
            )
    finally:
        _restore(handlers)
    return {"interrupted": interrupted, "host": socket.gethostname(), "job_id": job_id}


def nodes_folder(part: Path) -> Path:
    """A multi-node job's mailbox (hubbench.measure.ranks), beside its part file."""
    return part.with_suffix(".nodes")


def _job_task() -> tuple[str | None, int, int]:
    """The job id, this task's global rank and the job's number of tasks."""
    import submitit

    with contextlib.suppress(RuntimeError, KeyError):
        env = submitit.JobEnvironment()
        return str(env.job_id), env.global_rank, env.num_tasks
    return None, 0, 1


# ----------------------------------------------------------------------------- the submitter


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
class _Job:
    index: int
    states: list[Any]
    part: Path
    handle: Any = None  # the submitit job once submitted
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> last merged row
    mtime: float = -1.0
    finished: bool = False
    failed: bool = False

    @property
    def job_id(self) -> str | None:
        return None if self.handle is None else str(self.handle.job_id)


def jobs_folder(run_path: Path) -> Path:
    return run_path.with_suffix(".jobs")


def leftover_rows(run_path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows part files left next to the run hold that `rows` lacks: those of jobs whose
    submitter died before merging them (a part row wins over a missing, lost or shorter one)."""
    from hubbench import store

    by_id = {r["cell_id"]: r for r in rows}
    newer: dict[str, dict[str, Any]] = {}
    folder = jobs_folder(run_path)
    for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else ():
        try:
            found = store.read_rows(part, for_resume=True)
        except HubbenchError:  # a damaged or foreign part: the cells run again
            continue
        for row in found:
            have = newer.get(row["cell_id"]) or by_id.get(row["cell_id"])
            if have is None or have["job_lost"] or _rounds(row) > _rounds(have):
                newer[row["cell_id"]] = row
    return list(newer.values())


def _rounds(row: Mapping[str, Any]) -> int:
    return len(row["round_samples_s"] or [])


def _executor(spec: ExecutorSpec, folder: Path, shards: list[list[Any]], nnodes: int) -> Any:
    """The submitit executor for the jobs of `shards` (all of them `nnodes` nodes): on Slurm,
    nnodes nodes of one task each; submitit-local runs the nodes as tasks on this host."""
    import submitit

    cells = [s.cell for states in shards for s in states]
    cuda = any(c.device.startswith("cuda") for c in cells)
    nproc = max(c.nproc for c in cells)
    gpus = spec.gpus_per_job if spec.gpus_per_job is not None else (nproc if cuda else 0)
    cpus = spec.cpus_per_job or max(c.threads * c.nproc for c in cells)
    executor = submitit.AutoExecutor(folder=folder, cluster=CLUSTER[spec.kind])
    slurm = spec.kind == "slurm"
    params: dict[str, Any] = {
        "name": "hubbench",
        "timeout_min": spec.time_min,
        "cpus_per_task": cpus,
        "nodes": nnodes if slurm else 1,
        "tasks_per_node": 1 if slurm else nnodes,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if spec.mem_gb is not None:
        params["mem_gb"] = spec.mem_gb
    if spec.kind == "slurm":
        params["slurm_array_parallelism"] = spec.jobs_at_once
        if spec.partition:
            params["slurm_partition"] = spec.partition
        _watch_slurm()
    executor.update_parameters(**params)
    return executor


def _watch_slurm() -> None:
    """Job states from squeue where sacct has no accounting to read from.

    submitit asks sacct; on a Slurm without accounting storage (a single-node or test
    cluster) every call fails, a job's state stays UNKNOWN, and a job cancelled or killed
    before writing its result would be waited for forever. squeue keeps finished jobs for
    MinJobAge (300 s by default), so it is polled at most every 10 s.
    """
    import subprocess

    from submitit.slurm import slurm

    if getattr(slurm.SlurmJob.watcher, "squeue", False) or shutil.which("squeue") is None:
        return
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"],
                               capture_output=True, timeout=20)  # fmt: skip
        if probe.returncode == 0:
            return
    except (OSError, subprocess.TimeoutExpired):
        pass
    slurm.SlurmJob.watcher = _squeue_watcher_class()(delay_s=10)


def _squeue_watcher_class() -> type:
    from submitit.slurm import slurm

    class Watcher(slurm.SlurmInfoWatcher):
        """submitit's Slurm watcher reading `squeue --states=all` instead of sacct."""

        squeue = True

        def _make_command(self) -> list[str] | None:
            ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
            if not ids:
                return None
            return ["squeue", "--noheader", "--states=all", "-o", "%i|%T|%N", "-j", ",".join(ids)]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info("JobID|State|NodeList\n" + text)

    return Watcher


def run_jobs(
    spec: ExecutorSpec,
    states: list[Any],
    put: Callable[[dict[str, Any]], None],
    suite: str,
    run_id: str,
    builder: str,
    run_path: Path,
    *,
    rows: list[dict[str, Any]] | None = None,
    on_done: Callable[[dict[str, Any], Any, Any], None] | None = None,
    on_jobs: Callable[[JobCounts], None] | None = None,
) -> bool:
    """Measure the pending states in submitit jobs (module docstring); True if interrupted."""
    from hubbench import store
    from hubbench.run.runner import Progress, _resumed

    pending = [s for s in states if s.pending]
    if not pending:
        return False
    by_id = {r["cell_id"]: r for r in rows or ()}
    folder = jobs_folder(run_path)
    folder.mkdir(parents=True, exist_ok=True)
    attempt = 1 + sum(1 for _ in folder.glob("attempt-*"))
    (folder / f"attempt-{attempt}").touch()
    shards = shard(pending, spec.cells_per_job)
    jobs = [
        _Job(k, piece, folder / f"part-{attempt}-{k}.parquet") for k, piece in enumerate(shards)
    ]

    def nodes_of(states: list[Any]) -> int:
        return max(s.cell.nnodes for s in states)  # one value: nnodes is in comparison_key

    try:
        executors = {
            n: _executor(spec, folder, [p for p in shards if nodes_of(p) == n], n)
            for n in sorted({nodes_of(p) for p in shards})
        }
    except Exception as exc:  # submitit could not set up this executor (no sbatch, ...)
        raise HubbenchError(f"--executor {spec.kind}: {' '.join(str(exc).split())}") from exc
    left = {s.cell.cell_id: s.cell.measure.rounds - len(s.rounds) for s in pending}
    total = sum(left.values())
    started = time.perf_counter()

    before = {s.cell.cell_id: len(s.rounds) for s in pending}

    def progress() -> Progress:
        done = 0
        for j in jobs:
            for cid, row in j.seen.items():
                if row["status"] in ("ok", "partial"):
                    done += len(row["round_samples_s"] or []) - before[cid]
                else:  # failed: no rounds to come
                    done += left[cid]
        elapsed = time.perf_counter() - started
        remaining = elapsed / done * (total - done) if done else None
        return Progress(done, total, elapsed, remaining)

    def merge(job: _Job) -> None:
        if not job.part.exists():
            return
        mtime = job.part.stat().st_mtime_ns
        if mtime == job.mtime:
            return
        try:
            rows = store.read_rows(job.part)
        except HubbenchError:  # not whole (a foreign write?): read again next poll; if it never
            return  # reads, the job's unfinished cells become lost rows when it ends
        job.mtime = mtime
        for row in rows:
            cid = row["cell_id"]
            if job.seen.get(cid) == row:
                continue
            job.seen[cid] = row
            put(row)
            if on_done:
                state = next(s for s in job.states if s.cell.cell_id == cid)
                on_done(row, _resumed(state.cell, row), progress())

    def lose(job: _Job, reason: str) -> None:
        """Every cell the job left unfinished: an error row with the job's reason."""
        from hubbench.measure.env import TORCH_ENV_KEYS, host_env
        from hubbench.run.runner import make_row

        for s in job.states:
            cid = s.cell.cell_id
            last = job.seen.get(cid) or by_id.get(cid)
            state = _resumed(s.cell, last)
            if not state.pending:
                continue
            measured = f"{len(state.rounds)} of {s.cell.measure.rounds} rounds measured"
            state.failure = {
                "status": "error",
                "message": f"{reason}; {measured}; --resume measures the rest"[:500],
                "device_name": state.device_name,
                "wall_s": state.wall_s,
            }
            state.job_lost = True
            env = {k: last[k] for k in _env_names()} if last else {
                **host_env(), **dict.fromkeys(TORCH_ENV_KEYS)}  # fmt: skip
            env.pop("utc_time", None)
            execution = {"executor": spec.kind, "job_id": job.job_id}
            row = make_row(state, suite, run_id, env, execution)
            job.seen[cid] = row
            put(row)
            if on_done:
                on_done(row, state, progress())

    def submit(batch: list[_Job]) -> None:
        payloads = [
            JobSpec(
                cells=[s.cell.to_json() for s in j.states],
                rows=[by_id.get(s.cell.cell_id) for s in j.states],
                builder=builder,
                part=str(j.part),
                suite=suite,
                run_id=run_id,
                executor=spec.kind,
            )
            for j in batch
        ]
        handles: dict[int, Any] = {}
        try:
            for n, executor in executors.items():
                mine = [(j, p) for j, p in zip(batch, payloads, strict=True)
                        if nodes_of(j.states) == n]  # fmt: skip
                if not mine:
                    continue
                if spec.kind == "slurm":
                    with executor.batch():
                        made = [executor.submit(run_job, p) for _, p in mine]
                else:
                    made = [executor.submit(run_job, p) for _, p in mine]
                handles.update({j.index: h for (j, _), h in zip(mine, made, strict=True)})
        except Exception as exc:  # sbatch refused (no such partition, no Slurm, ...)
            raise HubbenchError(
                f"--executor {spec.kind}: submitting failed: {' '.join(str(exc).split())}"
            ) from exc
        for j in batch:
            j.handle = h = handles[j.index]
            # a job that ended without a result is waited for this long (submitit: 15 s)
            h._results_timeout_s = 5

    counts_seen: JobCounts | None = None
    waiting = list(jobs)
    try:
        while True:
            active = [j for j in jobs if j.handle is not None and not j.finished]
            room = len(waiting) if spec.kind == "slurm" else spec.jobs_at_once - len(active)
            if waiting and room > 0:
                submit(waiting[:room])
                waiting = waiting[room:]
            for j in jobs:
                if j.handle is None or j.finished:
                    continue
                merge(j)
                if j.handle.done():
                    merge(j)
                    _finish(j, lose)
            counts = _counts(jobs, len(waiting))
            if on_jobs and counts != counts_seen:
                on_jobs(counts)
                counts_seen = counts
            if not waiting and all(j.finished for j in jobs):
                break
            time.sleep(spec.poll_s)
    except KeyboardInterrupt:
        for j in jobs:
            if j.handle is not None and not j.finished:
                with contextlib.suppress(Exception):
                    j.handle.cancel(check=False)
        deadline = time.monotonic() + 30  # let the jobs stop their workers and write
        for j in jobs:
            while j.handle is not None and not j.handle.done() and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(Exception):
                merge(j)
        return True
    if all(not s.pending for j in jobs for s in _final_states(j)):
        # every row is in the run file: this attempt's, and earlier ones' (merged on --resume)
        for part in folder.glob("part-*.parquet"):
            part.unlink(missing_ok=True)
        for box in folder.glob("part-*.nodes"):
            shutil.rmtree(box, ignore_errors=True)
    return False


def _env_names() -> tuple[str, ...]:
    from hubbench import schema

    return schema.names("env")


def _final_states(job: _Job) -> list[Any]:
    from hubbench.run.runner import _resumed

    return [_resumed(s.cell, job.seen.get(s.cell.cell_id)) for s in job.states]


def _finish(job: _Job, lose: Callable[[_Job, str], None]) -> None:
    """A job is done: if it did not measure everything it was given, its cells are lost."""
    job.finished = True
    reason = None
    try:
        outcome = job.handle.results()[0]  # task 0's (a multi-node job's leader)
    except Exception as exc:  # the job failed, was cancelled or killed
        reason = _why(job, exc)
    else:
        if outcome.get("interrupted"):
            reason = f"job {job.job_id} was stopped by a signal (cancelled or out of time)"
    if reason is None and any(s.pending for s in _final_states(job)):
        reason = f"job {job.job_id} ended without measuring every round"
    if reason is not None:
        job.failed = True
        lose(job, reason)


def _why(job: _Job, exc: Exception) -> str:
    """One line: how the job ended, the last line it wrote to stderr, where its logs are."""
    from submitit.core.utils import UncompletedJobError

    state = _state(job.handle)
    if isinstance(exc, UncompletedJobError):  # killed or cancelled before it wrote a result
        how = f"job {job.job_id} ended without a result (state {state})"
    else:  # the job's function raised: its traceback's last line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        last = lines[-1] if lines else type(exc).__name__
        how = f"job {job.job_id} failed (state {state}): {last}"
    err = ""
    with contextlib.suppress(Exception):
        tail = [line.strip() for line in (job.handle.stderr() or "").splitlines() if line.strip()]
        err = f"; its stderr: {tail[-1][-160:]}" if tail else ""
    log = ""
    with contextlib.suppress(Exception):
        log = f"; log {job.handle.paths.stderr.name}"
    return f"{how}{err}{log}"[:400]


def _state(handle: Any) -> str:
    try:
        return str(handle.state)
    except Exception:  # a state is only for the message
        return "UNKNOWN"


def _counts(jobs: list[_Job], waiting: int) -> JobCounts:
    counts = JobCounts(waiting=waiting)
    for j in jobs:
        if j.handle is None:
            continue
        if j.finished:
            if j.failed:
                counts.failed += 1
            else:
                counts.done += 1
        elif j.part.exists() or _state(j.handle).upper() in ("RUNNING", "COMPLETING"):
            counts.running += 1
        else:
            counts.pending += 1
    return counts
