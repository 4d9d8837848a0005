"""A cell: one point of a sweep, with its typed model config, validated once when it is planned.

The cell crosses the worker pipe as JSON (`to_json` / `from_json`); the worker rebuilds the
config without validating it again. `columns()` is the cell's part of its results row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hubbench.plan.fields import default_threads
from hubbench.plan.variants import BaseConfig, config_dict, config_from_dict, inert_fields


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
    "task": RunField(str, "figure", "quality: mqar | bytes (else null)"),
    "kv_pairs": RunField(int, "figure", "quality, mqar: key-value pairs per sequence (else null)"),
    "data": RunField(str, "figure", "quality, bytes: pydoc | shakespeare | a file (else null)"),
    "train_updates": RunField(int, "figure", "quality: optimizer updates, the training budget"),
    "lr": RunField(float, "figure", "quality: peak learning rate (AdamW, warm-up, cosine)"),
    "nproc": RunField(
        int, "figure", "processes per node the cell ran as, under torchrun (data-parallel)"
    ),
    "nnodes": RunField(
        int, "figure", "nodes the cell ran on, one cluster job task each (world nnodes x nproc)"
    ),
}
RUN_DEFAULTS: dict[str, Any] = {"mode": "fwd_bwd", "device": "auto", "batch": 1, "compile": False,
                                "decode_tokens": 64, "task": "mqar", "kv_pairs": 4,
                                "data": "pydoc", "train_updates": 1500,
                                "lr": 1e-3, "nproc": 1, "nnodes": 1}  # fmt: skip
# the data's seed is the model config's `seed` (the weights'): seeds are replicates of a cell
QUALITY_FIELDS = ("task", "kv_pairs", "data", "train_updates", "lr")
OPTIONAL_RUN_FIELDS = ("decode_tokens", *QUALITY_FIELDS)  # added later: absent when null
# added later: absent from the identity at this value
ELIDED_DEFAULTS: dict[str, Any] = {"nproc": 1, "nnodes": 1}


def inert_run_fields(mode: str, task: str | None) -> set[str]:
    """The run fields that cannot change what a cell of this mode (and task) measures: their
    columns are null and they are not part of the cell's identity."""
    inert = set() if mode == "decode" else {"decode_tokens"}
    if mode != "quality":
        return inert | set(QUALITY_FIELDS)
    return inert | ({"data"} if task == "mqar" else {"kv_pairs"})


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
    "cuda": Measure(warmup=3, warmup_min_s=0.1, repeats=10, rounds=3),
}
MEASURE_FIELDS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Measure)}


@dataclass(frozen=True)
class Cell:
    index: int
    variant: str
    mode: str
    device: str  # resolved: cpu | cuda | cuda:N
    batch: int
    seq: int
    compile: bool
    threads: int  # torch intra-op threads in the worker
    config: BaseConfig  # validated; every field, inert ones included
    measure: Measure
    decode_tokens: int = 64  # decode mode only; part of what is measured (the amortisation)
    # quality mode only (RUN_FIELDS says what each is)
    task: str = "mqar"
    kv_pairs: int = 4
    data: str = "pydoc"
    train_updates: int = 1500
    lr: float = 1e-3
    nproc: int = 1  # > 1: the cell runs under torchrun (hubbench.measure.ranks)
    nnodes: int = 1  # > 1: torchrun on that many nodes, one job task each (hubbench.run.executors)

    @property
    def world(self) -> int:
        """The processes that run the timed step together."""
        return self.nproc * self.nnodes

    @property
    def model_config(self) -> dict[str, Any]:
        """The config with inert fields as None: what the row and the cell's identity record."""
        inert = inert_fields(self.config)
        return {k: (None if k in inert else v) for k, v in config_dict(self.config).items()}

    @property
    def run_fields(self) -> dict[str, Any]:
        """The run fields, null where inert (decode_tokens unless decoding, the quality fields
        outside the quality mode)."""
        inert = inert_run_fields(self.mode, self.task)
        return {k: (None if k in inert else getattr(self, k)) for k in RUN_FIELDS}

    @property
    def identity(self) -> dict[str, Any]:
        """The fields that define what is measured (not how carefully). Null run fields, and
        nproc and nnodes at 1, are left out, so cells keep the ids they had before those fields
        existed."""
        run = {
            k: v
            for k, v in self.run_fields.items()
            if (k not in OPTIONAL_RUN_FIELDS or v is not None)
            and not (k in ELIDED_DEFAULTS and v == ELIDED_DEFAULTS[k])
        }
        return {**run, **self.model_config}

    @property
    def explicit_identity(self) -> dict[str, Any]:
        """The identity with the elided run fields at their values (for tables and labels)."""
        return {**self.identity, **{k: getattr(self, k) for k in ELIDED_DEFAULTS}}

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def label(self, fields: Iterable[str] = ()) -> str:
        """'hub-gpt n=1024 attention=sdpa' style; `fields` adds the swept fields that apply."""
        from hubbench.plan.variants import display_name

        parts = [display_name(self.variant, getattr(self.config, "mixer", None)), f"n={self.seq}"]
        identity = self.explicit_identity
        for name in fields:
            value = identity.get(name)
            if name not in ("variant", "seq", "mixer", "mixer_digest") and value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)

    def columns(self) -> dict[str, Any]:
        """This cell's part of its row: the cell and measure columns."""
        from hubbench import schema  # schema derives its run and measure columns from here

        config = self.model_config
        cell = {name: None for name in schema.names("cell")}
        cell.update(self.run_fields)  # run fields first, then config
        cell.update(config)
        cell["config_json"] = json.dumps(config, sort_keys=True)
        measure = dataclasses.asdict(self.measure)
        return {
            **schema.part("cell", cell, f"cell {self.index}"),
            **schema.part("measure", measure, f"cell {self.index}"),
        }

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("index", *RUN_FIELDS)}
        out["config"] = config_dict(self.config)
        out["measure"] = dataclasses.asdict(self.measure)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        data = dict(data)
        data["config"] = config_from_dict(data["variant"], data["config"])
        data["measure"] = Measure(**data["measure"])
        return cls(**data)
