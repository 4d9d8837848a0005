"""The cell's own fields, beside its model config's: the run fields (what is measured) and the
measure settings (how carefully).

Each becomes a results column: hubbench.schema derives the run and measure columns from
RUN_FIELDS and `Measure`, and hubbench.plan.cell holds a cell's values. A new run field is an
entry in RUN_FIELDS (type, role, meaning) and RUN_DEFAULTS and a field of `Cell` (and a new
SCHEMA_VERSION); a model config field is declared with its variant (hubbench.plan.variants).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hubbench.plan.fields import default_threads


@dataclass(frozen=True)
class RunField:
    """A cell field that is not a model config field; its column follows from it (schema.py)."""

    type: type
    role: str  # how reports group rows: figure | series | x
    doc: str


RUN_FIELDS: dict[str, RunField] = {
    "variant": RunField(str, "series", "model variant (hubbench list)"),
    "mode": RunField(str, "figure", "fwd | fwd_bwd | train | prefill | decode"),
    "device": RunField(str, "figure", "cpu | cuda | cuda:N"),
    "batch": RunField(int, "figure", "sequences per step"),
    "seq": RunField(int, "x", "sequence length n"),
    "compile": RunField(bool, "series", "torch.compile'd step"),
    "threads": RunField(int, "figure", "torch intra-op threads the worker ran the cell with"),
    "decode_tokens": RunField(
        int, "figure", "decode: tokens generated per timed step, from the same prompt (else null)"
    ),
    "task": RunField(str, "figure", "quality: mqar | mqar-legacy | bytes (else null)"),
    "kv_pairs": RunField(int, "figure", "quality, mqar: key-value pairs per sequence (else null)"),
    "data": RunField(str, "figure", "quality, bytes: pydoc | shakespeare | a file (else null)"),
    "data_digest": RunField(
        str, "figure", "quality, bytes from a file: its content's sha256, 12 hex digits (else null)"
    ),
    "train_updates": RunField(int, "figure", "quality: optimizer updates, the training budget"),
    "lr": RunField(float, "figure", "quality: peak learning rate (AdamW, warm-up, cosine)"),
    "nproc": RunField(
        int, "figure", "processes per node the cell ran as, under torchrun (data-parallel)"
    ),
    "nnodes": RunField(
        int, "figure", "nodes the cell ran on, one cluster job task each (world nnodes x nproc)"
    ),
    "cuda_graphs": RunField(
        str,
        "series",
        "prefill, decode: off (default, as before the field) | auto | on, a timed call replayed "
        "as one CUDA graph (auto: where capture works, CUDA only; cuda_graphs_ran says what "
        "ran; else null)",
    ),
    "l2_flush": RunField(
        bool, "series", "CUDA: a buffer larger than L2 written before each timed call (cold cache)"
    ),
}
RUN_DEFAULTS: dict[str, Any] = {"mode": "fwd_bwd", "device": "auto", "batch": 1, "compile": False,
                                "decode_tokens": 64, "task": "mqar", "kv_pairs": 4,
                                "data": "pydoc", "data_digest": None, "train_updates": 1500,
                                "lr": 1e-3, "nproc": 1, "nnodes": 1, "cuda_graphs": "off",
                                "l2_flush": False}  # fmt: skip
# the data's seed is the model config's `seed` (the weights'): seeds are replicates of a cell
QUALITY_FIELDS = ("task", "kv_pairs", "data", "data_digest", "train_updates", "lr")
GPU_TIMING_FIELDS = ("cuda_graphs", "l2_flush")
CUDA_GRAPHS = ("auto", "on", "off")
GRAPH_MODES = ("prefill", "decode")  # the modes whose timed call can be one CUDA graph
# added later: absent when null
OPTIONAL_RUN_FIELDS = ("decode_tokens", *QUALITY_FIELDS, *GPU_TIMING_FIELDS)
# added later: absent from the identity at this value, so older cells keep their ids
ELIDED_DEFAULTS: dict[str, Any] = {"nproc": 1, "nnodes": 1, "cuda_graphs": "off",
                                   "l2_flush": False}  # fmt: skip


def inert_run_fields(mode: str, task: str | None) -> set[str]:
    """The run fields that cannot change what a cell of this mode (and task) measures: their
    columns are null and they are not part of the cell's identity."""
    inert = set() if mode == "decode" else {"decode_tokens"}
    inert |= set() if mode in GRAPH_MODES else {"cuda_graphs"}
    if mode == "quality":
        inert.add("l2_flush")  # a training run's updates are not kernel-level calls
    if mode != "quality":
        return inert | set(QUALITY_FIELDS)
    return inert | ({"data", "data_digest"} if str(task).startswith("mqar") else {"kv_pairs"})


def gpu_timing_problem(run: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """What is wrong with a cell's GPU timing fields (message, fields at fault), or None.

    Both need CUDA: `cuda_graphs = "on"` and `l2_flush = true` on another device are refused
    when the cell is planned, not when it runs; "auto" means off there."""
    graphs, device = run["cuda_graphs"], str(run["device"])
    if graphs not in CUDA_GRAPHS:
        return f"cuda_graphs={graphs!r} is not one of {', '.join(CUDA_GRAPHS)}", ["cuda_graphs"]
    if device.startswith("cuda"):
        return None
    if graphs == "on" and run["mode"] in GRAPH_MODES:
        return (f"cuda_graphs=on needs a CUDA device (device={device}); use auto or off",
                ["cuda_graphs", "device"])  # fmt: skip
    if run["l2_flush"] and run["mode"] != "quality":
        return (f"l2_flush=true flushes a GPU's L2 cache; device={device} has none to flush",
                ["l2_flush", "device"])  # fmt: skip
    return None


def run_defaults() -> dict[str, Any]:
    """The run fields a suite may leave out; `threads` follows config.default_threads."""
    return {**RUN_DEFAULTS, "threads": default_threads()}


def _doc(default: Any, doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Measure:
    """How carefully a cell is measured (not what is measured: not part of its identity).

    A cell is measured in `rounds` timing blocks, interleaved with the other cells' rounds; each
    round builds the model afresh, warms it up and times `repeats` steps (docs/measurement.md).
    """

    warmup: int = _doc(2, "untimed steps per round, at least (round 1's first counts FLOPs)")
    warmup_min_s: float = _doc(0.2, "... and at least this long, until step times settle")
    warmup_max_s: float = _doc(1.0, "... but no longer than this (0: exactly `warmup` steps)")
    repeats: int = _doc(5, "timed steps per round, at least")
    min_time_s: float = _doc(0.0, "... and keep timing until this much of a round is timed")
    rounds: int = _doc(5, "timing blocks per cell, interleaved with the other cells'")
    timeout_s: float = _doc(600.0, "per cell and round, model build included")


# Chosen from measurements (docs/measurement.md, "How a cell is measured"); a suite's [measure]
# and [measure.<device>] tables override them.
DEVICE_MEASURE: dict[str, Measure] = {
    "cpu": Measure(),
    # not measured yet: benchmarks/device_check.sh's A/A part measures the between-round spread
    # these should be chosen from (docs/measurement.md, "On a GPU")
    "cuda": Measure(warmup=3, warmup_min_s=0.1, repeats=10, rounds=3),
}
MEASURE_FIELDS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Measure)}
