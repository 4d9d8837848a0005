"""Find runs, check their schema, and give every row a cell identity that survives re-runs.

Reading goes through `hubbench.store` (the one owner of the on-disk format) and the field lists
come from `hubbench.schema`; this module adds what reports need on top: a one-line reason for an
unusable run, a canonical cell key (the cell fields, not run_id / cell_index, so the same cell in
two runs joins), and helpers that describe a cell by the fields that actually vary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.plan.variants import display_name
from hubbench.report.format import fmt_seq

if TYPE_CHECKING:
    import pandas as pd


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
    """A .parquet path, a run id (prefix), `latest` / `latest~N` or None (= latest)."""
    from hubbench import store

    return store.find_run(spec, results_dir)


def check_schema(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Raise ReportError for a run no report can use; add absent columns as nulls."""
    if len(df) == 0:
        raise ReportError(f"run {where} has no rows")
    missing = [c for c in schema.REQUIRED if c not in df.columns]
    if missing:
        raise ReportError(
            f"schema mismatch in {where}: missing column(s) {', '.join(missing)} "
            f"(results schema_version {schema.SCHEMA_VERSION} has them)"
        )
    df = df.copy()
    for col in schema.NAMES:
        if col not in df.columns:
            df[col] = None
        else:
            df[col] = _typed_column(df[col], schema.BY_NAME[col].type)
    if df["status"].isna().any() or df["variant"].isna().any() or df["seq"].isna().any():
        raise ReportError(f"run {where}: rows without a status, variant or seq; not a usable run")
    return _unusable_as_errors(df.reset_index(drop=True))


def _typed_column(column: pd.Series, kind: str) -> pd.Series:
    """A column as its schema type; a value of another type (a hand-edited or foreign file)
    becomes null, so no report trips over it."""
    import pandas as pd

    if kind in ("int64", "float64"):
        values = pd.to_numeric(column, errors="coerce").astype(float)
        if kind == "int64":  # whole numbers an int64 holds, nothing else
            values[(values % 1 != 0) | (values.abs() > 2**63 - 1)] = float("nan")
        return values
    if kind == "string":
        return column.map(lambda v: v if isinstance(v, str) else None).astype(object)
    if kind == "bool":
        return column.map(lambda v: bool(v) if isinstance(v, (bool, int)) and v in (0, 1)
                          else None).astype(object)  # fmt: skip

    def as_list(v: Any) -> Any:
        return v if hasattr(v, "__len__") and not isinstance(v, str) else None

    return column.map(as_list).astype(object)


def _unusable_as_errors(df: pd.DataFrame) -> pd.DataFrame:
    """An `ok` row whose step time or tokens/s is missing, zero, negative or infinite (a
    hand-edited or damaged file) cannot be plotted or divided by: it reads as an `error` row
    that says why, so every report shows it as a failed cell instead of crashing on it."""
    import numpy as np

    ok = df["status"] == "ok"
    for col in ("time_median_s", "tokens_per_s"):
        values = _numeric(df[col])
        bad = ok & ~(np.isfinite(values) & (values > 0))
        if bad.any():
            df.loc[bad, "message"] = [f"unusable measurement in the file: {col} = {v}"
                                      for v in df.loc[bad, col]]  # fmt: skip
            df.loc[bad, "status"] = "error"
            ok &= ~bad
    return df


def _numeric(column: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").astype(float)


def load_run(spec: str | Path | None, results_dir: Path | None = None) -> pd.DataFrame:
    """One run by .parquet path, run id (prefix) or None (= the latest run), schema-checked."""
    path = resolve_path(spec, default_results_dir(results_dir))
    return check_schema(_read_path(path), str(path))


def load_runs(specs: Sequence[str] | None, results_dir: Path | None = None) -> pd.DataFrame:
    """Several runs pooled into one frame, every row kept (figures tell the runs apart)."""
    import pandas as pd

    frames = [load_run(s, results_dir) for s in (specs or [None])]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def overlapping_runs(df: pd.DataFrame) -> bool:
    """Whether two runs in df measured the same cell (then run_id tells their rows apart)."""
    if df["run_id"].nunique() < 2:
        return False
    keys = cell_keys(df)
    return bool(keys.groupby(keys).transform("size").gt(1).any())


def join_fields(df: pd.DataFrame) -> list[str]:
    """The columns that make up a cell's identity in df, in schema order."""
    return [f for f in schema.cell_fields() if f in df.columns]


def cell_keys(df: pd.DataFrame, fields: Iterable[str] | None = None) -> pd.Series:
    """A canonical string per row naming its cell; equal cells in different runs get equal keys."""
    import pandas as pd

    fields = list(fields) if fields is not None else join_fields(df)
    keys = [
        "|".join(f"{f}={norm_value(row[f])!r}" for f in fields) for _, row in df[fields].iterrows()
    ]
    return pd.Series(keys, index=df.index, dtype=object)


def plain_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Every row as a dict of plain values (NaN and NA as None): for code that reads rows."""
    return [{k: norm_value(v) for k, v in r.items()} for r in df.to_dict("records")]


def records(df: pd.DataFrame, fields: Iterable[str]) -> list[dict[str, Any]]:
    """Rows of df as dicts of plain Python values (norm_value), for the schema helpers."""
    fields = [f for f in fields if f in df.columns]
    return [{f: norm_value(v) for f, v in zip(fields, row, strict=True)}
            for row in df[fields].itertuples(index=False)]  # fmt: skip


def varying_fields(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The fields among `fields` that take more than one value in df (nulls count as a value)."""
    fields = [f for f in fields if f in df.columns]
    return schema.varying(records(df, fields), fields)


def label_fields(df: pd.DataFrame, fields: Iterable[str]) -> list[str]:
    """The fewest fields that tell df's cells apart, in schema order.

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


def describe(row: Any, fields: Iterable[str]) -> str:
    """'hub-gpt attention=sdpa n=2k' style label: variant bare first, the length last as n."""
    fields = list(fields)
    ordered = [f for f in fields if f != "seq"] + (["seq"] if "seq" in fields else [])
    parts = []
    for f in ordered:
        if norm_value(row[f]) is None:
            continue  # a field that does not apply to this cell's variant
        if f in ("mixer", "mixer_digest"):
            continue  # the variant's display name carries the mixer's class name
        v = fmt_value(f, row[f])
        if f == "mixer_options":  # {"window":64} -> window=64
            parts += [f"{k}={o}" for k, o in mixer_options(v).items()]
            continue
        if f == "variant":  # a plug-in variant by its mixer's class name
            v = display_name(v, norm_value(row.get("mixer")) if "mixer" in row else None)
        name = "n" if f == "seq" else f
        parts.append(v if f == "variant" else f"{name}={v}")
    return " ".join(parts) if parts else "(single cell)"


def mixer_options(text: str) -> dict[str, Any]:
    """A row's mixer_options JSON as a dict (the text itself if it is not a JSON object)."""
    import json

    try:
        values = json.loads(text)
    except ValueError:
        return {"mixer_options": text}
    return values if isinstance(values, dict) else {"mixer_options": text}


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
