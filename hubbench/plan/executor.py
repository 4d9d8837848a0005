"""The executor a run asks for: a suite's `[executor]` table, then the command line's options.

Planning only: the spec says where cells are to be measured and how they are sharded into jobs;
hubbench.run.executors submits the jobs. A suite file's table is checked here, key by key, when
the suite is loaded, so a typo fails before anything runs (docs/cluster.md).
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from hubbench.errors import ConfigError

EXECUTORS = ("local", "submitit-local", "slurm")


@dataclass(frozen=True)
class ExecutorSpec:
    """How a run is executed: the `[executor]` table of a suite, then the command line."""

    kind: str = "local"
    cells_per_job: int = 4
    parallelism: int | None = None  # jobs at once (slurm: the array's %N); local default 1
    partition: str | None = None  # slurm
    time_min: int = 60  # each job's time limit
    gpus_per_job: int | None = None  # default: nproc of its cells on CUDA, else 0
    cpus_per_job: int | None = None  # default: the most threads x nproc of its cells
    mem_gb: float | None = None
    poll_s: float = 1.0

    def check(self, where: str = "executor") -> ExecutorSpec:
        if self.kind not in EXECUTORS:
            raise ConfigError(
                f"{where}: unknown executor {self.kind!r}; valid: {', '.join(EXECUTORS)}",
                ("executor",),
            )
        for name in ("cells_per_job", "parallelism", "time_min", "cpus_per_job"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}: {name} must be >= 1 (got {value})", (name,))
        for name in ("gpus_per_job", "mem_gb"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{where}: {name} must be >= 0 (got {value})", (name,))
        if not self.poll_s > 0:
            raise ConfigError(f"{where}: poll_s must be > 0 (got {self.poll_s})", ("poll_s",))
        if self.partition is not None and self.kind != "slurm":
            raise ConfigError(f"{where}: partition applies to --executor slurm only")
        if self.kind == "local" and (self.parallelism or 1) > 1:
            raise ConfigError(
                f"{where}: parallelism {self.parallelism} needs --executor submitit-local (jobs "
                "as processes on this host) or slurm: the local executor measures one cell at "
                "a time",
                ("parallelism",),
            )
        return self

    @property
    def jobs_at_once(self) -> int:
        return self.parallelism or (16 if self.kind == "slurm" else 1)

    def describe(self) -> str:
        """One line for a plan: where its cells run and how many jobs at once."""
        if self.kind == "local":
            return "executor local: one cell at a time in this process' worker"
        per = f"{self.cells_per_job} cell{'s' if self.cells_per_job != 1 else ''} per job"
        return f"executor {self.kind}: {per}, at most {self.jobs_at_once} job(s) at once"


def accepted_types(annotation: Any) -> tuple[type, ...]:
    """The TOML value types a field of this annotation takes: `int | None` -> (int,); a float
    field takes an int as well (`mem_gb = 8`)."""
    kinds = tuple(t for t in typing.get_args(annotation) or (annotation,) if t is not type(None))
    return (int, *kinds) if float in kinds and int not in kinds else kinds


_HINTS = typing.get_type_hints(ExecutorSpec)
# field -> the types its value may have in a suite file, read from the dataclass
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    f.name: accepted_types(_HINTS[f.name]) for f in fields(ExecutorSpec)
}


def spec_from(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A suite's `[executor]` table, checked key by key (its values; the kind may be absent)."""
    for key, value in table.items():
        if key not in SPEC_TYPES:
            raise ConfigError(f"{where}: unknown key {key!r}; valid: {', '.join(SPEC_TYPES)}")
        types = SPEC_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(
                f"{where}: {key} must be {' or '.join(t.__name__ for t in types)} (got {value!r})"
            )
    ExecutorSpec(**{"kind": "slurm", **table}).check(where)
    return dict(table)


def make_spec(table: Mapping[str, Any], **options: Any) -> ExecutorSpec:
    """The suite's table with the command line's options (None: not given) on top."""
    given = {k: v for k, v in options.items() if v is not None}
    merged = {**table, **given}
    if merged.get("kind", "local") == "local" and "parallelism" not in given:
        merged.pop("parallelism", None)  # a suite's setting for its jobs, not for a local run
    return ExecutorSpec(**merged).check()


def check_cells(spec: ExecutorSpec, cells: Iterable[Any], ab: bool = False) -> None:
    """What the executor asks of the cells, checked by the run and by `--dry-run` alike: a
    local run measures cells of one node; an A/B (`ab`) runs locally; on this host (local,
    submitit-local) a cell runs at most one process per CPU core this process may use."""
    cells = list(cells)
    many = max((c.nnodes for c in cells), default=1)
    if spec.kind == "local" and many > 1:
        raise ConfigError(
            f"nnodes={many} needs a job with a task per node: --executor slurm (or "
            "submitit-local, which runs the nodes as tasks on this host)",
            ("nnodes",),
        )
    if spec.kind != "local" and ab:
        raise ConfigError(
            "--against measures both code versions in this process' workers: use --executor local",
            ("executor",),
        )
    if spec.kind != "local":
        longest = max((c.measure.timeout_s for c in cells), default=0.0)
        if spec.time_min * 60 < longest:  # submitit kills the job at time_min, cell or not
            raise ConfigError(
                f"job time {spec.time_min} min is shorter than a cell's timeout ({longest:g} s, "
                "measure.timeout_s): its job would be killed first and the cell lost; ask for "
                f"--job-time {math.ceil(longest / 60) + 5} or more",
                ("time_min",),
            )
    if spec.kind == "slurm":
        return  # the nodes' cores are the cluster's to know (sbatch refuses what none has)
    cores = host_cores()
    world = max((c.nproc * c.nnodes for c in cells), default=1)
    if world > cores:
        raise ConfigError(
            f"--nproc: a cell of {world} processes (nproc x nnodes) on a host with {cores} CPU "
            f"core(s): the {spec.kind} executor runs at most {cores} per cell here (a cluster: "
            "--executor slurm)",
            ("nproc",),
        )


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
