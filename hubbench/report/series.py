"""From a results frame to what a figure shows: facets (one figure each) and series (one line each).

A facet holds the rows that share every figure field (device, mode, dtype, batch, model shape),
so a figure never silently mixes, say, bf16 and fp32. Within a facet a series is one mixer
configuration (variant, attention backend, hub parameters ...), its points the sequence lengths.
Failed and skipped rows stay in their series so the plots can mark them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbench import schema
from hubbench.plan.variants import baseline_of, display_name, display_order, is_baseline, is_router
from hubbench.report.load import (
    cell_keys,
    fmt_value,
    label_fields,
    mixer_options,
    norm_value,
    overlapping_runs,
    varying_fields,
)
from hubbench.report.style import SeriesStyle, family, series_style, sibling_style

if TYPE_CHECKING:
    import pandas as pd

# A figure holds its device and every `figure` cell field fixed; `series` fields tell its lines
# apart (hubbench.schema gives each cell field its role).
FIGURE_FIELDS = ("device_name", *schema.fields_with_role("figure"))
SERIES_FIELDS = schema.fields_with_role("series")
# Paper notation for the hub parameters (hubrouter.md), so legends read like the paper.
SYMBOLS = {"hubs": "M", "topk": "k", "neighbours": "r", "chunk": "C"}
MODE_TEXT = {"fwd": "forward", "fwd_bwd": "forward+backward", "train": "train step"}


@dataclass
class Series:
    label: str
    variant: str
    attention: str | None  # requested backend
    backend: str | None  # what ran, e.g. "sdpa:flash" (several joined with "/")
    style: SeriesStyle
    rows: pd.DataFrame  # every status, sorted by seq
    by_run: bool = False  # pooled runs measured the same cells: one series per run

    @property
    def ok(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] != "ok"]

    @property
    def run_id(self) -> str:
        return str(self.rows["run_id"].iloc[0])

    @property
    def is_hub(self) -> bool:
        return is_router(self.variant)

    @property
    def is_attention_baseline(self) -> bool:
        return is_baseline(self.variant)


@dataclass
class Facet:
    fixed: dict[str, Any]  # figure-field values shared by every row
    split: list[str]  # the figure fields that differ between this run's facets
    df: pd.DataFrame

    @property
    def slug(self) -> str:
        values = [(f, self.fixed[f]) for f in self.split]  # unset fields leave no empty slot
        return "-".join(s for s in (_slug(f, v) for f, v in values if v is not None) if s)


def _slug(field: str, value: Any) -> str:
    prefix = {"batch": "b", "d_model": "d", "n_layers": "L", "n_heads": "h", "vocab": "V",
              "kv_pairs": "kv", "train_updates": "u"}  # fmt: skip
    text = f"{prefix.get(field, '')}{fmt_value(field, value)}"
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def facets(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> list[Facet]:
    """One facet per combination of the figure fields (and `extra`, e.g. mem_kind) in df."""
    fields = [f for f in (*FIGURE_FIELDS, *extra) if f in df.columns]
    df = df.copy()
    for derived in ("device_name", *extra):
        # what a cell records only when it ran (device_name for one that failed before touching
        # the device, mem_kind for one that never measured): such a cell belongs with the cells
        # of its device, not in a figure (and a file name) of its own
        if derived in df.columns and "device" in df.columns:
            values = df.groupby(df["device"].astype(str))[derived]
            df[derived] = values.transform(lambda s: s.ffill().bfill())
    split = varying_fields(df, fields)
    if not split:
        return [Facet(_fixed(df, fields), [], df)]
    keys = cell_keys(df, split)
    return [Facet(_fixed(g, fields), split, g) for _, g in df.groupby(keys, sort=False)]


def _fixed(df: pd.DataFrame, fields: list[str]) -> dict[str, Any]:
    return {f: norm_value(df[f].iloc[0]) for f in fields}


def series_fields(df: pd.DataFrame) -> list[str]:
    """What tells the lines of a figure apart; run_id too when pooled runs share cells."""
    fields = [f for f in SERIES_FIELDS if f in df.columns]
    return [*fields, "run_id"] if overlapping_runs(df) else fields


def build_series(df: pd.DataFrame) -> list[Series]:
    """The series of one facet, baselines first, in a stable order."""
    fields = series_fields(df)
    shown = [f for f in label_fields(df, fields) if f != "variant"]
    # a hub variant names its attention backend only when the facet has several for it
    hub_attn = {
        str(v) for v, g in df.groupby(df["variant"].astype(str))
        if is_router(str(v)) and varying_fields(g, ["attention"])
    }  # fmt: skip
    keys = cell_keys(df, fields)
    ambiguous = _ambiguous_mixers(df)
    found = []
    for _, g in df.groupby(keys, sort=False):
        first = g.iloc[0]
        variant = str(first["variant"])
        rank = (display_order(variant), variant, *(sortable(first[f]) for f in fields))
        found.append((rank, first, g))
    found.sort(key=lambda t: t[0])
    # siblings: series sharing a variant's base style (hub-gpt at M = 4, 8, 16 ...)
    bases = [_base(str(f["variant"]), norm_value(f["attention"])) for _, f, _ in found]
    out: list[Series] = []
    for (_, first, g), base in zip(found, bases, strict=True):
        variant, attention, backend = (
            str(first["variant"]),
            norm_value(first["attention"]),
            _backend(g),
        )
        siblings = [k for k, b in enumerate(bases) if b == base]
        style = series_style(variant, backend or attention)
        if len(siblings) > 1:
            style = sibling_style(style, siblings.index(len(out)), len(siblings))
        out.append(
            Series(
                label=_label(first, shown, backend, variant in hub_attn, ambiguous),
                variant=variant,
                attention=attention,
                backend=backend,
                style=style,
                rows=g.sort_values("seq"),
                by_run="run_id" in fields,
            )
        )
    return out


def _base(variant: str, attention: str | None) -> tuple[str, str | None]:
    return (variant, None if is_router(variant) else family(attention))


def sortable(value: Any) -> tuple[int, Any]:
    """Numbers before strings, numerically (M=4 before M=16); nulls first."""
    v = norm_value(value)
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, float(v))
    return (2, str(v))


def _backend(g: pd.DataFrame) -> str | None:
    ran = [str(v) for v in dict.fromkeys(g["backend_attention"]) if norm_value(v) is not None]
    if not ran:
        return None
    if len(ran) == 1:
        return ran[0]
    head = ran[0].split(":")[0]
    if all(r.split(":")[0] == head for r in ran):  # sdpa:flash / sdpa:efficient
        return head + ":" + "/".join(r.split(":", 1)[-1] for r in ran)
    return "/".join(ran)


def _ambiguous_mixers(df: pd.DataFrame) -> set[str]:
    """Plug-in specs whose class name another spec in the facet shares (v1.py:M, v2.py:M)."""
    if "mixer" not in df.columns:
        return set()
    specs = {str(v) for v in df["mixer"] if norm_value(v) is not None}
    names = [display_name("mixer-gpt", spec) for spec in specs]
    return {spec for spec, name in zip(specs, names, strict=True) if names.count(name) > 1}


def _label(
    row: Any, shown: list[str], backend: str | None, hub_attention: bool, ambiguous: set[str]
) -> str:
    mixer = norm_value(row["mixer"]) if "mixer" in row else None
    parts = [display_name(str(row["variant"]), mixer)]  # a plug-in by its class name
    if mixer in ambiguous:  # two files define this class: say which one
        parts[0] += f" ({mixer.rsplit(':', 1)[0]})"
    attention = norm_value(row["attention"])
    if attention is not None and (is_baseline(str(row["variant"])) or hub_attention):
        parts.append(backend or str(attention))
    params = []
    for f in shown:
        value = norm_value(row[f])
        if f in ("attention", "sdpa_kernel", "mixer", "mixer_digest") or value is None:
            continue
        if f == "mixer_options":
            params += [f"{k}={o}" for k, o in mixer_options(str(value)).items()]
            continue
        name = SYMBOLS.get(f, "run" if f == "run_id" else f)
        params.append(f"{name}={fmt_value(f, value)}")
    if params:
        parts.append(" ".join(params))
    return " · ".join(parts)


def speedup_pairs(series: list[Series]) -> list[tuple[Series, Series, str]]:
    """(hub, its baseline, 'native' | 'optimised') for every baseline backend in the facet.

    Pooled runs that share cells pair each hub series with the baselines of its own run.
    """
    pooled = any(s.by_run for s in series)
    pairs = []
    for hub in series:
        want = baseline_of(hub.variant)
        for base in series:
            if base.variant != want or (pooled and base.run_id != hub.run_id):
                continue
            kind = "native" if (base.attention or "") == "naive" else "optimised"
            pairs.append((hub, base, kind))
    return pairs


def title_parts(facet: Facet) -> tuple[str, str]:
    """('NVIDIA H200 · bf16 · forward · batch 8', 'd_model 512 · 8 layers · 8 heads')."""
    f = facet.fixed
    device = str(f.get("device_name") or f.get("device") or "?")
    if str(f.get("device")) == "cpu":  # CPU numbers mean little without the thread count
        threads = {norm_value(t) for t in facet.df["threads"]} - {None}
        if len(threads) == 1:
            n = threads.pop()
            device += f" ({n} thread{'s' if n != 1 else ''})"
    mode = f.get("mode")
    main = [
        str(device),
        str(f.get("dtype") or "?"),
        MODE_TEXT.get(str(mode), str(mode)),
        f"batch {f.get('batch')}",
    ]
    shape = []
    if f.get("d_model") is not None:
        shape.append(f"d_model {f['d_model']}")
    if f.get("n_layers") is not None:
        shape.append(f"{f['n_layers']} layer{'s' * (f['n_layers'] != 1)}")
    if f.get("n_heads") is not None:
        shape.append(f"{f['n_heads']} head{'s' * (f['n_heads'] != 1)}")
    if f.get("mem_kind"):
        shape.append(str(f["mem_kind"]).replace("_", " "))
    return " · ".join(main), " · ".join(shape)
