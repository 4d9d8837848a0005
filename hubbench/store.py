"""Results on disk: one parquet file per run, long format (one row per cell), schema-versioned.

Layout: <results>/<suite>/<YYYYmmddTHHMMSSZ>-<run_id>.parquet. The file is rewritten after
every finished cell, atomically (a temp file in the same directory, then os.replace), so an
interrupted or crashed run leaves every finished row readable, and two runs at once write two
files. The store knows columns (hubbench.schema), not models: rows arrive as plain dicts.
A row is checked against the schema once: where it is made (hubbench.run.rows), by
`write_rows` when it comes from elsewhere, or when it is read from a file to be written back
(`read_rows(for_resume=True)`); `RunWriter` rewrites rows already checked without checking them
again. Which of two rows of one cell a run keeps is `supersedes`, the one merge policy. Files are
created with the permissions the umask allows (0644 under the usual 022), so a group can read a
shared results directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import StoreError
from hubbench.plan.find import BASELINES_DIR, suite_name_problem

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

RESULTS_ENV = "HUBBENCH_RESULTS"
DEFAULT_RESULTS_DIR = "results"
LATEST = re.compile(r"latest(?:~(\d+))?")


# ----------------------------------------------------------------------------- locations


def results_dir(option: str | Path | None = None) -> Path:
    """--results-dir, else $HUBBENCH_RESULTS, else ./results."""
    return Path(option or os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS_DIR)


def check_writable(directory: Path) -> None:
    """Create `directory` and prove a file can be written there; StoreError otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise StoreError(
            f"results directory {directory} is not writable ({exc.strerror or exc}); "
            f"choose another with --results-dir or ${RESULTS_ENV}"
        ) from exc


def new_run_id() -> str:
    return secrets.token_hex(4)


def check_suite(suite: str, runs_go_there: bool = True) -> str:
    """`suite` as the one folder under the results directory its runs are in (hubbench.plan.find
    says what may name one), so that no caller reads or writes a run outside it."""
    problem = suite_name_problem(suite, runs_go_there=runs_go_there)
    if problem:
        raise StoreError(f"suite name {suite!r} {problem}: it cannot name a folder of runs")
    return suite


def run_path(directory: Path, suite: str, run_id: str, when: dt.datetime | None = None) -> Path:
    check_suite(suite)
    when = when or dt.datetime.now(dt.UTC)
    return directory / suite / f"{when.strftime('%Y%m%dT%H%M%SZ')}-{run_id}.parquet"


def reserve_run(directory: Path, suite: str) -> tuple[Path, str]:
    """A new run's file name and id, not taken by any run under `directory`."""
    taken = {p.stem.rpartition("-")[2] for p in list_runs(directory)}
    while True:
        run_id = new_run_id()
        path = run_path(directory, suite, run_id)
        if run_id not in taken and not path.exists():
            return path, run_id


def list_runs(directory: str | Path, suite: str | None = None) -> list[Path]:
    """Run files under `directory`, oldest first (names start with the UTC stamp)."""
    directory = Path(directory)
    # the suite's folder by name, never as a pattern: a suite `c*` must not list ci's runs
    if suite:
        found = (directory / check_suite(suite, runs_go_there=False)).glob("*.parquet")
    else:
        found = directory.glob("*/*.parquet")
    paths = [p for p in found if not p.name.startswith(".") and p.is_file()]
    return sorted(paths, key=lambda p: (p.name, str(p)))


def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The table of one parquet file, read through one open file.

    Not `pq.read_table(path)`: that takes the file's size, then opens it again, and a writer's
    os.replace between the two (a job rewriting its part file while the submitter merges it) gives
    the new file's bytes read with the old file's size: "Deserializing page header failed".
    One descriptor holds one inode, so a reader sees the old file or the new one, whole.

    Without Arrow's thread pools: a process whose reads had started them sometimes aborted at
    exit ("terminate called without an active exception", SIGABRT; apache/arrow#34314), 2 in 20
    processes that read four run files on two busy cores here, which fails a `hubbench` command
    that had done its work. `pq.read_table` starts a pool even with use_threads=False (it goes
    through the dataset API); ParquetFile.read without threads or pre-buffering starts none.
    """
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        return pq.ParquetFile(f, pre_buffer=False).read(columns=columns, use_threads=False)


def readable(path: Path) -> bool:
    """Whether `path` is an intact parquet file (its footer reads), without reading its rows."""
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as f:
            pq.read_metadata(f)
    except (OSError, ValueError):
        return False
    return True


def latest_run(directory: str | Path, suite: str | None = None, back: int = 0) -> Path | None:
    """The newest run (of `suite`), or the one `back` runs before it; pinned baselines never."""
    runs = _measured(directory, suite)
    return runs[-1 - back] if back < len(runs) else None


def _measured(directory: str | Path, suite: str | None = None) -> list[Path]:
    """Runs that `latest` may name: not pinned baselines, and not a truncated or foreign file."""
    return [
        p for p in list_runs(directory, suite) if p.parent.name != BASELINES_DIR and readable(p)
    ]


def find_run(spec: str | Path | None, directory: str | Path | None = None) -> Path:
    """How every command names a run: a .parquet path, a run id (or unique prefix), or
    `latest` / `latest~N` (the newest run, or the one N runs before it; None means latest)."""
    latest = LATEST.fullmatch(str(spec or "latest"))
    if latest is not None:
        where = results_dir(directory)
        back = int(latest.group(1) or 0)
        found = latest_run(where, back=back)
        if found is None:
            have = len(_measured(where))
            if not have:
                raise StoreError(f"no runs found under {where}/: run `hubbench run <suite>` first")
            raise StoreError(f"{spec}: only {have} run(s) under {where}/")
        return found
    path = Path(str(spec))
    if path.suffix == ".parquet" or path.is_file():
        if not path.is_file():
            raise StoreError(f"run file {path} does not exist")
        return path
    directory = results_dir(directory)
    hits = [p for p in list_runs(directory) if p.stem.rsplit("-", 1)[-1].startswith(str(spec))]
    if not hits:
        raise StoreError(
            f"no run {str(spec)!r} under {directory}/; `hubbench results` lists the runs"
        )
    if len(hits) > 1:
        names = ", ".join(p.stem for p in hits[:5])
        raise StoreError(f"run id {str(spec)!r} is ambiguous under {directory}/: {names}")
    return hits[0]


# ----------------------------------------------------------------------------- write / read


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write `rows`, each checked against the schema, as the whole run file, atomically."""
    _write(path, [schema.row(r, f"{path.name} row {i}") for i, r in enumerate(rows)])


def _write(path: Path, rows: list[dict[str, Any]], token: str | None = None) -> None:
    """Write rows already checked as the whole run file: a temp file, then os.replace.
    `token` goes into the file's metadata: the writer then knows the file for its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(rows, schema=schema.arrow_schema())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"rows do not fit the results schema: {exc}") from exc
    if token is not None:
        table = table.replace_schema_metadata({WRITER_KEY: token})
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets a later run remove what a killed one left (clean_stale)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}.{os.getpid()}.", suffix=TEMP_SUFFIX
        )
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: a shared results dir needs more
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreError(
            f"cannot write run file {path}: {exc.strerror or exc}; the rows it held before are "
            "intact: fix that (free space, permissions), then continue with --resume"
        ) from exc
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink(missing_ok=True)


TEMP_SUFFIX = ".tmp"


def clean_stale(directory: Path) -> list[Path]:
    """Remove temp and lock files left in `directory` by hubbench processes that no longer run."""
    removed = []
    for p in directory.glob(f".*.*{TEMP_SUFFIX}"):
        parts = p.name.split(".")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if pid is not None and not _alive(pid):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_rows(path: Path, for_resume: bool = False) -> list[dict[str, Any]]:
    """A run file as plain dicts (None for nulls), every column of this schema present.

    `for_resume`: the rows will be written back with new ones, so they must be of this
    schema_version exactly (an older file is read, never extended) and fit the schema: a file
    another program wrote is checked row by row here, one of this schema's columns and types is
    not (Arrow kept every value to its column's type).
    """
    try:
        table = _read_table(path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read run file {path}: {exc}") from exc
    if "schema_version" not in table.column_names:
        raise StoreError(f"{path} is not a hubbench run file (no schema_version column)")
    rows = table.to_pylist()
    versions = [r.get("schema_version") for r in rows]
    _check_version(versions, path)
    if for_resume and set(versions) - {schema.SCHEMA_VERSION}:
        raise StoreError(
            f"{path} was written with schema_version {', '.join(map(str, sorted(versions)))}; "
            f"--resume extends only schema_version {schema.SCHEMA_VERSION} runs: start a new run"
        )
    rows = [_upgrade(r) for r in rows]
    if for_resume and not table.schema.equals(schema.arrow_schema()):
        rows = [schema.row(r, f"{path.name} row {i}") for i, r in enumerate(rows)]
    return rows


RUN_NAME = re.compile(r"\d{8}T\d{6}Z-([0-9a-f]{8})")
CELL_ID = re.compile(r"[0-9a-f]{12}(?:/[a-z]+)?")


def read_resumable(path: Path, suite: str) -> list[dict[str, Any]]:
    """The rows of a run `--resume` may extend: read_rows(for_resume=True) of a file hubbench
    wrote for `suite`. A parquet file that merely has the schema's columns (issue 33, item 8:
    --resume wrote real rows into one, and the run stayed unusable) is refused before anything
    is written: its name must be `<UTC stamp>-<run id>.parquet`, and every row must carry that
    run id, this suite and a cell id, as every row a run writes does."""
    rows = read_rows(path, for_resume=True)
    problem = _foreign(path, rows, suite)
    if problem:
        raise StoreError(
            f"--resume: {path} is not a {suite} run hubbench wrote ({problem}); move it out of "
            f"{path.parent}/ or run without --resume"
        )
    return rows


def _foreign(path: Path, rows: list[dict[str, Any]], suite: str) -> str | None:
    """Why `rows` cannot be the run file `path` of `suite`, or None."""
    name = RUN_NAME.fullmatch(path.stem)
    if name is None:
        return "its name is not <YYYYmmddTHHMMSSZ>-<8 hex digits>.parquet"
    if not rows:
        return "it has no rows"
    for i, row in enumerate(rows):
        if row.get("run_id") != name.group(1):
            return f"row {i} has run_id {row.get('run_id')!r}, its name says {name.group(1)}"
        if row.get("suite") != suite:
            return f"row {i} has suite {row.get('suite')!r}"
        if not CELL_ID.fullmatch(str(row.get("cell_id"))):
            return f"row {i} has cell_id {row.get('cell_id')!r}"
    if len({r["cell_id"] for r in rows}) < len(rows):
        return "two rows have one cell_id"
    return None


def read_run(spec: str | Path, directory: str | Path | None = None) -> pd.DataFrame:
    """One run as a DataFrame, by path or run id. Plain `pandas.read_parquet(path)` works too."""
    import pandas as pd

    path = find_run(spec, directory)
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read run file {path}: {exc}") from exc
    if "schema_version" not in df.columns:
        raise StoreError(f"{path} is not a hubbench run file (no schema_version column)")
    _check_version(df["schema_version"].tolist(), path)
    if list(df.columns) == list(schema.NAMES):
        return df
    upgraded = [_upgrade(r) for r in df.astype(object).where(df.notna(), None).to_dict("records")]
    return pd.DataFrame(upgraded, columns=list(schema.NAMES))


# columns added later whose value in an older row is known, not null
UPGRADE_DEFAULTS: dict[str, Any] = {"nproc": 1, "nnodes": 1, "executor": "local"}


def _upgrade(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row of an older schema as this one: new columns null (UPGRADE_DEFAULTS where an older
    row's value is known), config columns from config_json."""
    out = {name: row.get(name) for name in schema.NAMES}
    for key, value in UPGRADE_DEFAULTS.items():
        if key not in row:
            out[key] = value
    if "world_size" not in row and row.get("tokens_per_s") is not None:  # one process measured
        out["world_size"], out["tokens_per_s_per_rank"] = 1, row["tokens_per_s"]
    if set(schema.NAMES) - set(row) and isinstance(row.get("config_json"), str):
        try:
            config = json.loads(row["config_json"])
        except ValueError:
            config = {}
        for key, value in config.items() if isinstance(config, dict) else ():
            if key in out and key not in row:
                out[key] = value
    _upgrade_elided(row, out)
    return out


def _upgrade_elided(row: Mapping[str, Any], out: dict[str, Any]) -> None:
    """Fields added at a value every older row had (they are elided from cell ids there):
    filled where they apply, so an older row and a newer one of one cell pool as one."""
    from hubbench.plan.runfields import ELIDED_DEFAULTS, GRAPH_MODES

    if "council" not in row and out.get("hubs") is not None and out.get("council") is None:
        out["council"] = "auto"
    if "cuda_graphs" not in row and out.get("mode") in GRAPH_MODES:
        out["cuda_graphs"] = ELIDED_DEFAULTS["cuda_graphs"]
    if "l2_flush" not in row and out.get("mode") not in (None, "quality"):
        out["l2_flush"] = ELIDED_DEFAULTS["l2_flush"]


def _check_version(values: Iterable[Any], path: Path) -> None:
    versions = {v if isinstance(v, int) and not isinstance(v, bool) else repr(v) for v in values}
    bad = {v for v in versions if not isinstance(v, int) or not 1 <= v <= schema.SCHEMA_VERSION}
    if bad:
        found = ", ".join(str(v) for v in sorted(bad, key=str))
        raise StoreError(
            f"{path}: schema_version {found}; this hubbench reads schema_version 1 to "
            f"{schema.SCHEMA_VERSION} (upgrade hubbench to read it)"
        )


@dataclass
class RunInfo:
    path: Path
    suite: str
    run_id: str
    stamp: str
    rows: int
    status: dict[str, int]


def run_info(path: Path) -> RunInfo:
    try:
        statuses = _read_table(path, ["status"]).column("status").to_pylist()
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"cannot read run file {path}: {exc}") from exc
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    stamp, _, run_id = path.stem.rpartition("-")
    return RunInfo(path, path.parent.name, run_id, stamp, len(statuses), counts)


def supersedes(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether `new` replaces `old`, two rows of one cell: the one merge policy of a run file
    (its writers, the part files of jobs, --resume). The row that measured more wins: more
    rounds, or as many with the cell ended (ok, or its own failure) where the other's has not
    (partial, or lost with its job); between rows as far along, the newer."""
    return old is None or _progress(new) >= _progress(old)


def _progress(row: Mapping[str, Any]) -> tuple[int, bool]:
    ended = row["status"] != "partial" and not row["job_lost"]
    return len(row["round_samples_s"] or []), ended


WRITER_KEY = b"hubbench.writer"  # file metadata: the RunWriter write that made the file


class RunWriter:
    """Holds a run's rows and rewrites its file after each change.

    Writers of one run may run at once (two `--resume` of it): each write locks the run's
    directory (flock, held for the write only) and, unless the file on disk is the one this
    writer wrote last, reads it and merges in this writer's rows by cell (`supersedes`), so no
    writer drops another's rows. Rows given to `put` were checked where they were made
    (hubbench.run.rows) or read (read_rows): they are not checked again.
    """

    def __init__(self, path: Path, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self.mine: dict[str, dict[str, Any]] = {}  # rows this writer wrote, by cell id
        self.token: str | None = None  # in the metadata of the file this writer wrote last
        if path.parent.is_dir():
            clean_stale(path.parent)

    def put(self, row: Mapping[str, Any]) -> None:
        """Add `row`, or replace the row of the same cell (a cell's row grows round by round)."""
        self.mine[row["cell_id"]] = dict(row)
        with self._locked():
            ours = self.token is not None and _writer_token(self.path) == self.token
            if self.path.exists() and not ours:  # another writer's, or this writer's first put
                merged = {r["cell_id"]: r for r in read_rows(self.path, for_resume=True)}
                news = self.mine
            else:
                merged = {r["cell_id"]: r for r in self.rows}
                news = {row["cell_id"]: self.mine[row["cell_id"]]}
            for cell_id, mine in news.items():
                if supersedes(mine, merged.get(cell_id)):
                    merged[cell_id] = mine
            self.rows = list(merged.values())
            self.token = secrets.token_hex(8)
            _write(self.path, self.rows, self.token)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"cannot lock run file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _writer_token(path: Path) -> str | None:
    """The token of the RunWriter write that made `path` (None: another program's file)."""
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as f:
            metadata = pq.read_metadata(f).metadata or {}
    except (OSError, ValueError):
        return None
    token = metadata.get(WRITER_KEY)
    return token.decode() if token is not None else None
