"""Synthetic runs with realistic, complete rows (hubbench.schema) for the report tests.

Step times follow a simple cost model (attention quadratic in n, Mamba and HubRouter linear) with
log-normal per-step noise, so plots, fits and crossovers behave as they would on real data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rows import full_row

from hubbench import schema

SEQS = (512, 1024, 2048, 4096, 8192, 16384, 32768)

# (linear s per token, quadratic s per token^2) of one step at batch 1 (made-up, GPU-like)
_COST = {
    ("transformer", "naive"): (2.0e-7, 4.0e-11),
    ("transformer", "sdpa"): (2.0e-7, 6.0e-12),
    ("jamba", "naive"): (3.0e-7, 5.0e-12),
    ("jamba", "sdpa"): (3.0e-7, 1.0e-12),
    ("hub-gpt", "sdpa"): (2.6e-7, 0.0),
    ("hub-jamba", "sdpa"): (3.3e-7, 0.0),
}

ENV = {
    "hubbench_version": "0.1.0",
    "git_commit": "abc1234",
    "git_dirty": False,
    "torch_version": "2.13.0",
    "cuda_version": "12.8",
    "cudnn_version": "91000",
    "device_name": "NVIDIA H200",
    "cpu_model": "Intel Xeon",
    "threads": 16,
    "host": "node1",
}


def cell(variant: str, seq: int, attention: str = "sdpa", **fields: Any) -> dict[str, Any]:
    hub = variant.startswith("hub")  # synthetic data may know its own variants
    mamba = "jamba" in variant
    base: dict[str, Any] = {
        "variant": variant,
        "mode": "fwd",
        "device": "cuda",
        "dtype": "bf16",
        "batch": 8,
        "seq": seq,
        "d_model": 512,
        "n_layers": 8,
        "n_heads": 8,
        "vocab": 256,
        "attention": attention if variant != "hub-jamba" else None,
        "sdpa_kernel": "auto" if attention == "sdpa" else None,
        "mamba_impl": "fused" if mamba else None,
        "hubs": 8 if hub else None,
        "topk": 64 if hub else None,
        "neighbours": 1 if hub else None,
        "chunk": 64 if hub else None,
        "replace": 1.0 if variant == "hub-gpt" else None,
        "causal": True,
        "compile": False,
        "warmup": 3,
        "repeats": 20,
    }
    base.update(fields)
    return base


def grid(
    variants: tuple[str, ...] = ("transformer", "jamba", "hub-jamba", "hub-gpt"),
    seqs: tuple[int, ...] = SEQS,
    **fields: Any,
) -> list[dict[str, Any]]:
    out = []
    for v in variants:
        attns = ("naive", "sdpa") if v in ("transformer", "jamba") else ("sdpa",)
        for a in attns:
            out.extend(cell(v, n, attention=a, **fields) for n in seqs)
    return out


def _median_time(c: dict[str, Any]) -> float:
    key = (c["variant"], c["attention"] or "sdpa")
    lin, quad = _COST.get(key, (4e-7, 0.0))
    n = c["seq"]
    hub_scale = 1.0
    if c.get("hubs") is not None:
        hub_scale = (c["hubs"] + c["topk"] + c["chunk"]) / (8 + 64 + 64)
    return c["batch"] * (lin * n * hub_scale + quad * n * n) + 2e-4  # + launch overhead


def _speed_of_light(c: dict[str, Any]) -> float:
    """A synthetic ceiling: linear for a hub variant, with a quadratic attention term else; low
    enough that every cell stays under it (a fraction over 1 is flagged: the peak is too low)."""
    tokens = c["batch"] * c["seq"]
    attention = 0.0 if c.get("hubs") is not None else c["seq"] / 4096
    return 6.0 * 25e6 * tokens * (1.0 + attention) / 9.89e14 / 5


def make_run(
    cells: list[dict[str, Any]],
    *,
    run_id: str = "r0000001",
    suite: str = "throughput",
    status: dict[tuple[str, str | None, int], str] | None = None,
    slowdown: dict[str, float] | None = None,
    noise: float = 0.03,
    samples: int = 20,
    seed: int = 0,
    schema_version: int = schema.SCHEMA_VERSION,
    utc_time: str = "2025-01-01T00:00:00Z",
    extra: dict[str, Any] | None = None,
    rounds: int | None = None,
    drift: float = 0.0,
    sentinel: float | None = None,
    machine: float = 1.0,
) -> pd.DataFrame:
    """Rows for `cells`; status[(variant, attention, seq)] marks failures ('oom', ...).

    With `rounds`, each cell's `samples` are split into that many rounds measured in one session,
    and round r of every cell shares the run's drift of pass r (log-normal, sd `drift`), as the
    runner's interleaved passes would see a machine that slows and recovers.

    With `sentinel` (its median seconds on the machine), each row records a noise-sentinel
    reading per round (`round_sentinel_s`), sharing its pass's drift, with noise `noise` drawn
    apart (the step times are those of the same run without a sentinel). `machine` is how much
    slower the machine ran: it stretches every step and the sentinel alike.
    """
    rng = np.random.default_rng(seed)
    readings = np.random.default_rng(seed + 10_000)
    passes = rng.normal(0.0, drift, rounds) if rounds else None
    rows = []
    for i, c in enumerate(cells):
        st = (status or {}).get((c["variant"], c["attention"], c["seq"]), "ok")
        row: dict[str, Any] = {
            "schema_version": schema_version,
            "run_id": run_id,
            "suite": suite,
            "cell_index": i,
            "cell_id": hashlib.sha1(repr(sorted(c.items())).encode()).hexdigest()[:12],
            **c,
            "status": st,
            "message": None if st == "ok" else f"{st}: synthetic failure",
            "backend_attention": None,
            "backend_mamba": "mamba:fused" if c["mamba_impl"] else None,
            "backend_hub": "hubrouter" if c["hubs"] is not None else None,
            "mem_kind": "cuda_allocated",
            "params": 25_000_000,
            "utc_time": utc_time,
            **ENV,
        }
        if c["attention"] == "naive":
            row["backend_attention"] = "naive"
        elif c["attention"] == "sdpa":
            row["backend_attention"] = "sdpa:flash"
        if st == "ok":
            t = _median_time(c) * (1.0 + (slowdown or {}).get(c["variant"], 0.0)) * machine
            s = t * np.exp(rng.normal(0.0, noise, size=samples))
            by_round = None
            if passes is not None:
                by_round = [list(x) for x in np.array_split(s, rounds)]
                by_round = [[v * np.exp(passes[r]) for v in x] for r, x in enumerate(by_round)]
                s = np.concatenate(by_round)
            tokens = c["batch"] * c["seq"]
            p10, p90 = np.quantile(s, [0.1, 0.9])
            med = float(np.median(s))
            mem = 4e8 + c["batch"] * c["seq"] * 2e4
            if c["attention"] == "naive":
                mem += c["batch"] * c["n_heads"] * c["seq"] ** 2 * 2.0
            flops = 6.0 * 25e6 * tokens
            row.update(
                time_median_s=med,
                time_min_s=float(s.min()),
                time_p10_s=float(p10),
                time_p90_s=float(p90),
                time_mean_s=float(s.mean()),
                time_std_s=float(s.std()),
                time_count=samples,
                samples_s=[float(x) for x in s],
                round_samples_s=by_round,
                round_sessions=None if by_round is None else [1.0] * rounds,
                time_rounds=1 if by_round is None else rounds,
                tokens_per_s=tokens / med,
                tokens_per_s_p10=tokens / p90,
                tokens_per_s_p90=tokens / p10,
                peak_mem_bytes=int(mem),
                peak_mem_reserved_bytes=int(mem * 1.1),
                flops_per_step=flops,
                flops_per_step_analytic=flops,
                flops_per_token=flops / tokens,
                achieved_flops_per_s=flops / med,
                mfu=flops / med / 9.89e14,
                peak_flops_per_s=9.89e14,
                peak_flops_source="table",
            )
            light = _speed_of_light(c)
            row.update(
                speed_of_light_s=light,
                speed_of_light_tokens_per_s=tokens / light,
                speed_of_light_basis="compute",
                speed_of_light_fraction=light / med,
            )
        else:
            row.update(samples_s=[], time_count=0)
        if sentinel is not None:
            shift = passes if passes is not None else np.zeros(1)
            wobble = readings.normal(0.0, noise, len(shift))
            row["round_sentinel_s"] = [
                float(x) for x in sentinel * machine * np.exp(shift + wobble)
            ]
        row.update(extra or {})
        rows.append(full_row(**row))
    return pd.DataFrame(rows, columns=list(schema.NAMES))


def write_run(df: pd.DataFrame, results_dir: Path, stamp: str = "20250101T000000Z") -> Path:
    """Store the rows through hubbench.store (so they must fit its schema) under results_dir."""
    from hubbench import store

    suite, run_id = df["suite"].iloc[0], df["run_id"].iloc[0]
    path = results_dir / suite / f"{stamp}-{run_id}.parquet"
    store.write_rows(path, [_typed(r) for r in df.to_dict("records")])
    return path


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A DataFrame row back to schema types: NaN -> None, integral floats in int columns -> int."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and np.isnan(v):
            v = None
        if v is not None and schema.BY_NAME[k].type == "int64":
            v = int(v)
        out[k] = v
    return out
