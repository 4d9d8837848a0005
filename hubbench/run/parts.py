"""Part files: what each job writes, and how its rows reach the one run file.

Each job writes its cells' rows, after each round, to its own part file
`<run>.jobs/part-<attempt>-<k>.parquet` (attempt: how many times the run was submitted). The
submitter reads a part when it changes and merges every row that supersedes the one it has
(hubbench.store.supersedes) into the run file; --resume merges what a submitter that died had
not (`leftover_rows`). The parts are removed once the run is complete.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbench import store
from hubbench.errors import HubbenchError


def jobs_folder(run_path: Path) -> Path:
    """Where a run's jobs keep their part files, mailboxes and submitit's logs."""
    return run_path.with_suffix(".jobs")


def new_attempt(folder: Path) -> int:
    """The number of this submission of the run's cells (1, then 2 after a --resume, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    attempt = 1 + sum(1 for _ in folder.glob("attempt-*"))
    (folder / f"attempt-{attempt}").touch()
    return attempt


def part_path(folder: Path, attempt: int, job: int) -> Path:
    return folder / f"part-{attempt}-{job}.parquet"


def leftover_rows(run_path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows in part files left next to the run that supersede those of `rows`: what jobs
    wrote that their submitter, dead, did not merge."""
    have = {r["cell_id"]: r for r in rows}
    newer: dict[str, dict[str, Any]] = {}
    folder = jobs_folder(run_path)
    for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else ():
        try:
            found = store.read_rows(part, for_resume=True)
        except HubbenchError:  # a damaged or foreign part: the cells run again
            continue
        for row in found:
            cell_id = row["cell_id"]
            old = newer.get(cell_id) or have.get(cell_id)
            if row != old and store.supersedes(row, old):
                newer[cell_id] = row
    return list(newer.values())


def remove_parts(folder: Path) -> None:
    """Every part and mailbox of every attempt: the run file holds their rows."""
    for part in folder.glob("part-*.parquet"):
        part.unlink(missing_ok=True)
    for box in folder.glob("part-*.nodes"):
        shutil.rmtree(box, ignore_errors=True)


@dataclass
class PartFile:
    """A job's part file as its submitter reads it: again only when it changed."""

    path: Path
    mtime: int = -1

    def read(self) -> list[dict[str, Any]]:
        """Its rows if it changed since the last read; none if not, or if it does not read
        whole (a write under way elsewhere: read again next poll; if it never reads, the job's
        unfinished cells become lost rows when the job ends)."""
        if not self.path.exists():
            return []
        mtime = self.path.stat().st_mtime_ns
        if mtime == self.mtime:
            return []
        try:
            rows = store.read_rows(self.path, for_resume=True)
        except HubbenchError:
            return []
        self.mtime = mtime
        return rows
