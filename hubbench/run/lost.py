"""Lost jobs: a job that failed, was cancelled or was killed, and how its submitter notices.

Every cell such a job had not finished becomes an `error` row with the job's reason and
`job_lost` true, keeping the rounds it measured; --resume submits those cells again (a lost
row is pending: hubbench.run.rows.state_from_row). On a Slurm without accounting, job states are
read from squeue (`watch_slurm`), so that a job killed before writing its result is not waited
for forever.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from typing import Any

from hubbench.measure.env import TORCH_ENV_KEYS, host_env
from hubbench.measure.outcome import MESSAGE_CHARS
from hubbench.run.rows import CellState, env_of, make_row, state_from_row


def lost_state(state: CellState, row: Mapping[str, Any] | None, reason: str) -> CellState:
    """The state of a cell its job left unfinished, from its latest row: an error with the
    job's reason, lost with the job."""
    lost = state_from_row(state.cell, row)
    measured = f"{len(lost.rounds)} of {state.cell.measure.rounds} rounds measured"
    lost.failure = {
        "status": "error",
        "message": f"{reason}; {measured}; --resume measures the rest"[:MESSAGE_CHARS],
        "device_name": lost.device_name,
        "wall_s": lost.wall_s,
    }
    lost.job_lost = True
    return lost


def lost_row(
    lost: CellState, row: Mapping[str, Any] | None, suite: str, run_id: str, execution: Any
) -> dict[str, Any]:
    """The row of a lost cell: in the environment of its latest row, else this host's."""
    env = env_of(row) if row else {**host_env(), **dict.fromkeys(TORCH_ENV_KEYS)}
    return make_row(lost, suite, run_id, env, execution)


def why(handle: Any, exc: Exception) -> str:
    """One line: how the job ended, the last line it wrote to stderr, where its logs are."""
    from submitit.core.utils import UncompletedJobError

    job_id, state = handle.job_id, job_state(handle)
    if isinstance(exc, UncompletedJobError):  # killed or cancelled before it wrote a result
        how = f"job {job_id} ended without a result (state {state})"
    else:  # the job's function raised: its traceback's last line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        last = lines[-1] if lines else type(exc).__name__
        how = f"job {job_id} failed (state {state}): {last}"
    err = ""
    with contextlib.suppress(Exception):
        tail = [line.strip() for line in (handle.stderr() or "").splitlines() if line.strip()]
        err = f"; its stderr: {tail[-1][-160:]}" if tail else ""
    log = ""
    with contextlib.suppress(Exception):
        log = f"; log {handle.paths.stderr.name}"
    return f"{how}{err}{log}"[:400]


def job_state(handle: Any) -> str:
    """submitit's state of a job (RUNNING, CANCELLED, ...), UNKNOWN where it cannot say."""
    try:
        return str(handle.state)
    except Exception:  # a state is only for messages and counts
        return "UNKNOWN"


def watch_slurm() -> None:
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
