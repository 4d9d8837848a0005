"""Results on disk: one parquet file per run, long format (one row per cell), schema-versioned.

Layout: <results>/<suite>/<YYYYmmddTHHMMSSZ>-<run_id>.parquet. The file is rewritten after
every finished cell, atomically (a temp file in the same directory, then os.replace), so an
interrupted or crashed run leaves every finished row readable, and two runs at once write two
files. The store knows columns, not models: rows arrive as plain dicts.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import StoreError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
RESULTS_ENV = "HUBBENCH_RESULTS"
DEFAULT_RESULTS_DIR = "results"

# (column, arrow type); order is the file's column order. Add columns, never rename them.
COLUMNS: tuple[tuple[str, str], ...] = (
    # identity
    ("schema_version", "int64"),
    ("run_id", "string"),
    ("suite", "string"),
    ("cell_index", "int64"),
    ("cell_id", "string"),
    # cell fields (null where they do not apply to the variant)
    ("variant", "string"),
    ("mode", "string"),
    ("device", "string"),
    ("dtype", "string"),
    ("batch", "int64"),
    ("seq", "int64"),
    ("d_model", "int64"),
    ("n_layers", "int64"),
    ("n_heads", "int64"),
    ("vocab", "int64"),
    ("attention", "string"),
    ("sdpa_kernel", "string"),
    ("mamba_impl", "string"),
    ("hubs", "int64"),
    ("topk", "int64"),
    ("neighbours", "int64"),
    ("chunk", "int64"),
    ("replace", "float64"),
    ("causal", "bool"),
    ("compile", "bool"),
    ("warmup", "int64"),
    ("repeats", "int64"),
    ("min_time_s", "float64"),
    ("timeout_s", "float64"),
    ("config_json", "string"),  # the full model config (every field, nulls where inert)
    # outcome
    ("status", "string"),
    ("message", "string"),
    # what ran
    ("backend_attention", "string"),
    ("backend_mamba", "string"),
    ("backend_hub", "string"),
    # step time
    ("time_median_s", "float64"),
    ("time_min_s", "float64"),
    ("time_p10_s", "float64"),
    ("time_p90_s", "float64"),
    ("time_mean_s", "float64"),
    ("time_std_s", "float64"),
    ("time_count", "int64"),
    ("samples_s", "list<float64>"),
    ("tokens_per_step", "int64"),
    ("tokens_per_s", "float64"),
    ("tokens_per_s_p10", "float64"),
    ("tokens_per_s_p90", "float64"),
    # memory
    ("peak_mem_bytes", "int64"),
    ("peak_mem_reserved_bytes", "int64"),
    ("mem_kind", "string"),
    ("mem_baseline_bytes", "int64"),
    # FLOPs
    ("flops_per_step", "float64"),
    ("flops_per_step_analytic", "float64"),
    ("flops_per_token", "float64"),
    ("achieved_flops_per_s", "float64"),
    ("mfu", "float64"),
    ("mfu_basis", "string"),
    ("peak_flops_per_s", "float64"),
    ("peak_flops_source", "string"),
    ("params", "int64"),
    # environment
    ("hubbench_version", "string"),
    ("git_commit", "string"),
    ("git_dirty", "bool"),
    ("torch_version", "string"),
    ("cuda_version", "string"),
    ("cudnn_version", "string"),
    ("device_name", "string"),
    ("cpu_model", "string"),
    ("threads", "int64"),
    ("host", "string"),
    ("utc_time", "string"),
    ("warmup_s", "float64"),  # wall time of the untimed warm-up steps (FLOP counting included)
    ("wall_s", "float64"),  # the cell's wall time in the worker: build, warm-up, timing
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


def arrow_schema():
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "list<float64>": pa.list_(pa.float64()),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


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


def run_path(directory: Path, suite: str, run_id: str, when: dt.datetime | None = None) -> Path:
    when = when or dt.datetime.now(dt.UTC)
    return directory / suite / f"{when.strftime('%Y%m%dT%H%M%SZ')}-{run_id}.parquet"


def list_runs(directory: str | Path, suite: str | None = None) -> list[Path]:
    """Run files under `directory`, oldest first (names start with the UTC stamp)."""
    directory = Path(directory)
    pattern = f"{suite}/*.parquet" if suite else "*/*.parquet"
    paths = [p for p in directory.glob(pattern) if not p.name.startswith(".")]
    return sorted(paths, key=lambda p: (p.name, str(p)))


def latest_run(directory: str | Path, suite: str | None = None) -> Path | None:
    runs = list_runs(directory, suite)
    return runs[-1] if runs else None


def find_run(spec: str | Path, directory: str | Path | None = None) -> Path:
    """A .parquet path, or a run id (or unique prefix) under the results directory."""
    path = Path(spec)
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


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write `rows` as the whole run file, atomically (temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMN_NAMES)
        if unknown:
            raise StoreError(f"row has column(s) outside the schema: {', '.join(sorted(unknown))}")
    full = [{name: row.get(name) for name in COLUMN_NAMES} for row in rows]
    try:
        table = pa.Table.from_pylist(full, schema=arrow_schema())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"rows do not fit the results schema: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A run file as plain dicts (None for nulls), for resuming it."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read run file {path}: {exc}") from exc
    _check_version({r.get("schema_version") for r in rows}, path)
    return [{k: v for k, v in r.items() if k in COLUMN_NAMES} for r in rows]


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
    _check_version(set(df["schema_version"].tolist()), path)
    return df


def _check_version(versions: set[Any], path: Path) -> None:
    if versions and versions != {SCHEMA_VERSION}:
        found = ", ".join(str(v) for v in sorted(versions, key=str))
        raise StoreError(
            f"{path}: schema_version {found}; this hubbench reads schema_version {SCHEMA_VERSION}"
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
    import pyarrow.parquet as pq

    try:
        statuses = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"cannot read run file {path}: {exc}") from exc
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    stamp, _, run_id = path.stem.rpartition("-")
    return RunInfo(path, path.parent.name, run_id, stamp, len(statuses), counts)


class RunWriter:
    """Holds a run's rows and rewrites its file after each one."""

    def __init__(self, path: Path, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        write_rows(self.path, self.rows)
