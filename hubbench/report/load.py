"""Find runs, check their schema, and give every row a cell identity that survives re-runs.

Reading goes through `hubbench.store` (the one owner of the on-disk format); this module adds
what reports need on top: schema checks with one-line reasons, a canonical cell key (the cell
fields, not run_id / cell_index, so the same cell in two runs joins), and helpers that describe
a cell by the fields that actually vary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import ReportError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1  # the results schema this code reads

# What defines a cell (contract). warmup / repeats say how carefully it was measured, not what
# was measured, so a baseline taken with more repeats still joins its candidate.
CELL_FIELDS: tuple[str, ...] = (
    "variant", "mode", "device", "dtype", "batch", "seq", "d_model", "n_layers", "n_heads",
    "vocab", "attention", "sdpa_kernel", "mamba_impl", "hubs", "topk", "neighbours", "chunk",
    "replace", "causal", "compile", "warmup", "repeats",
)  # fmt: skip
MEASUREMENT_FIELDS: tuple[str, ...] = ("warmup", "repeats")

# Columns no report can do without; the rest are optional and filled with nulls.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "schema_version", "run_id", "suite", "variant", "seq", "status", "time_median_s",
    "tokens_per_s",
)  # fmt: skip

OPTIONAL_COLUMNS: tuple[str, ...] = (
    *CELL_FIELDS, "cell_index", "cell_id", "message", "backend_attention", "backend_mamba",
    "backend_hub", "time_min_s", "time_p10_s", "time_p90_s", "time_mean_s", "time_std_s",
    "time_count", "samples_s", "tokens_per_s_p10", "tokens_per_s_p90", "peak_mem_bytes",
    "peak_mem_reserved_bytes", "mem_kind", "flops_per_step", "flops_per_step_analytic",
    "flops_per_token", "achieved_flops_per_s", "mfu", "peak_flops_per_s", "peak_flops_source",
    "params", "hubbench_version", "git_commit", "git_dirty", "torch_version", "cuda_version",
    "cudnn_version", "device_name", "cpu_model", "threads", "host", "utc_time",
)  # fmt: skip

BASELINES_DIR = "baselines"
CONFIG_PREFIX = "config."  # model config fields without a column of their own, from config_json


def norm_value(value: Any) -> Any:
    """One spelling per value: nulls -> None, integral floats -> int, numpy scalars -> Python."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):
        with contextlib.suppress(ValueError, AttributeError):
            value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


def default_results_dir(option: str | Path | None = None) -> Path:
    """--results-dir, else $HUBBENCH_RESULTS, else ./results (the store decides)."""
    from hubbench import store

    return store.results_dir(option)


def _run_paths(results_dir: Path, suite: str | None = None) -> list[Path]:
    from hubbench import store

    # results/baselines/ holds pinned copies for the gate, not runs of a suite
    return [p for p in store.list_runs(results_dir, suite) if p.parent.name != BASELINES_DIR]


def _read_path(path: Path) -> pd.DataFrame:
    from hubbench import store
    from hubbench.errors import StoreError

    try:
        return store.read_run(path)
    except StoreError as exc:
        if "schema_version" in str(exc):
            raise ReportError(f"schema mismatch: {exc}") from exc
        raise


def resolve_path(spec: str | Path | None, results_dir: Path) -> Path:
    """A .parquet path, a run id (prefix), or None / 'latest' -> the run's parquet file."""
    from hubbench import store

    if spec is None or str(spec) == "latest":
        return latest_path(results_dir)
    return store.find_run(spec, results_dir)


def latest_path(results_dir: Path, suite: str | None = None) -> Path:
    paths = _run_paths(results_dir, suite)
    if not paths:
        where = f"{results_dir}/{suite}/" if suite else f"{results_dir}/"
        raise ReportError(f"no runs found under {where}: run `hubbench run <suite>` first")
    return paths[-1]


def check_schema(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Raise ReportError on a foreign schema; add missing optional columns as nulls."""
    if len(df) == 0:
        raise ReportError(f"run {where} has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(
            f"schema mismatch in {where}: missing column(s) {', '.join(missing)} "
            f"(results schema_version {SCHEMA_VERSION} has them)"
        )
    versions = sorted({norm_value(v) for v in df["schema_version"]}, key=str)
    if versions != [SCHEMA_VERSION]:
        raise ReportError(
            f"schema mismatch in {where}: schema_version {', '.join(map(str, versions))}; "
            f"this hubbench reads schema_version {SCHEMA_VERSION} (re-run the suite or use the "
            "hubbench version that wrote it)"
        )
    df = df.copy()
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return _expand_config(df.reset_index(drop=True))


def _expand_config(df: pd.DataFrame) -> pd.DataFrame:
    """config_json keys with no column (d_state, mlp_ratio, seed ...) -> `config.<key>` columns.

    They then take part in cell identity and labels like any cell field, so two cells that differ
    only in, say, d_state never join, and a sweep over it gets labelled.
    """
    import json

    if "config_json" not in df.columns or df["config_json"].isna().all():
        return df
    configs = [json.loads(c) if isinstance(c, str) else {} for c in df["config_json"]]
    keys = sorted({k for c in configs for k in c if k not in df.columns})
    for k in keys:
        df[CONFIG_PREFIX + k] = [c.get(k) for c in configs]
    return df


def load_run(spec: str | Path | None, results_dir: Path | None = None) -> pd.DataFrame:
    """One run by .parquet path, run id (prefix) or None (= the latest run), schema-checked."""
    path = resolve_path(spec, default_results_dir(results_dir))
    return check_schema(_read_path(path), str(path))


def load_runs(specs: Sequence[str] | None, results_dir: Path | None = None) -> pd.DataFrame:
    """Several runs pooled into one frame; a cell measured in two runs keeps the later row."""
    import pandas as pd

    frames = [load_run(s, results_dir) for s in (specs or [None])]
    if len(frames) == 1:
        return frames[0]
    df = pd.concat(frames, ignore_index=True)
    df["_key"] = cell_keys(df)
    order = df["utc_time"].astype(str) if df["utc_time"].notna().any() else df.index
    df = df.assign(_order=order).sort_values("_order", kind="stable")
    df = df.drop_duplicates("_key", keep="last").drop(columns=["_key", "_order"])
    return df.sort_index().reset_index(drop=True)


def join_fields(df: pd.DataFrame) -> list[str]:
    """The columns that make up a cell's identity in df (cell fields, then config extras)."""
    fields = [f for f in CELL_FIELDS if f in df.columns and f not in MEASUREMENT_FIELDS]
    return fields + sorted(c for c in df.columns if str(c).startswith(CONFIG_PREFIX))


def cell_keys(df: pd.DataFrame, fields: Iterable[str] | None = None) -> pd.Series:
    """A canonical string per row naming its cell; equal cells in different runs get equal keys."""
    import pandas as pd

    fields = list(fields) if fields is not None else join_fields(df)
    keys = [
        "|".join(f"{f}={norm_value(row[f])!r}" for f in fields) for _, row in df[fields].iterrows()
    ]
    return pd.Series(keys, index=df.index, dtype=object)


def varying_fields(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The fields among `fields` that take more than one value in df (nulls count as a value)."""
    out = []
    for f in fields:
        if f in df.columns and len({norm_value(v) for v in df[f]}) > 1:
            out.append(f)
    return out


def label_fields(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The fewest fields that tell df's cells apart, in CELL_FIELDS order.

    A field that only varies between variants (hubs: 8 for hubs, null otherwise) is implied by the
    variant; a field fixed by the others (sdpa_kernel given attention) adds nothing to a label.
    """
    keep = varying_fields(df, fields)
    if "variant" in keep:
        groups = [g for _, g in df.groupby(df["variant"].astype(str), sort=False)]
        keep = ["variant"] + [
            f for f in keep if f != "variant" and any(len(varying_fields(g, [f])) for g in groups)
        ]
    for f in reversed(list(keep)):
        others = [g for g in keep if g != f]
        if f == "variant" or not others:
            continue
        keys = cell_keys(df, others)
        if all(not varying_fields(g, [f]) for _, g in df.groupby(keys, sort=False)):
            keep.remove(f)
    return keep


def labeller(df: pd.DataFrame, fields: Iterable[str]) -> Callable[[Any], str]:
    """row -> short label; each variant names only the fields that vary among its own cells."""
    shown = label_fields(df, fields)
    per_variant: dict[str, list[str]] = {}
    if "variant" in df.columns:
        for v, g in df.groupby(df["variant"].astype(str), sort=False):
            per_variant[v] = ["variant", *varying_fields(g, [f for f in shown if f != "variant"])]

    def label(row: Any) -> str:
        return describe(row, per_variant.get(str(row.get("variant")), shown))

    return label


def fmt_value(field: str, value: Any) -> str:
    value = norm_value(value)
    if value is None:
        return "-"
    if field == "seq" and isinstance(value, int):
        return fmt_seq(value)
    return str(value)


def fmt_seq(n: int) -> str:
    """512 -> '512', 2048 -> '2k', 32768 -> '32k', 1536 -> '1.5k'."""
    if n >= 1024 and n % 512 == 0:
        k = n / 1024
        return f"{k:g}k"
    return str(n)


def describe(row: Any, fields: Iterable[str]) -> str:
    """'hub-gpt attention=sdpa n=2k' style label: variant bare first, the length last as n."""
    fields = list(fields)
    ordered = [f for f in fields if f != "seq"] + (["seq"] if "seq" in fields else [])
    parts = []
    for f in ordered:
        if norm_value(row[f]) is None:
            continue  # a field that does not apply to this cell's variant
        v = fmt_value(f, row[f])
        name = "n" if f == "seq" else f.removeprefix(CONFIG_PREFIX)
        parts.append(v if f == "variant" else f"{name}={v}")
    return " ".join(parts) if parts else "(single cell)"


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def require_ok(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """The ok rows, or a ReportError saying what happened to every cell."""
    ok = ok_rows(df)
    if len(ok) == 0:
        counts = df["status"].value_counts()
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        raise ReportError(
            f"run {where} has no ok cells ({summary}); nothing to measure "
            "(see the messages with `hubbench results`)"
        )
    return ok


def run_label(df: pd.DataFrame) -> str:
    ids = [str(x) for x in dict.fromkeys(df["run_id"])]
    suites = [str(x) for x in dict.fromkeys(df["suite"])]
    return f"{'+'.join(suites)} {'+'.join(ids)}"
