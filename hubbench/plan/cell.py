"""A cell: one point of a sweep, with its typed model config, validated once when it is planned.

The cell crosses the worker pipe as JSON (`to_json` / `from_json`); the worker rebuilds the
config without validating it again. `columns()` is the cell's part of its results row. What its
run fields and measure settings are (types, defaults, meaning): hubbench.plan.runfields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hubbench import schema
from hubbench.plan.runfields import (
    ELIDED_DEFAULTS,
    OPTIONAL_RUN_FIELDS,
    RUN_DEFAULTS,
    RUN_FIELDS,
    Measure,
    inert_run_fields,
)
from hubbench.plan.variants import (
    ELIDED_CONFIG_DEFAULTS,
    BaseConfig,
    config_dict,
    config_from_dict,
    display_name,
    inert_fields,
)


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
    # decode mode only; part of what is measured (the amortisation)
    decode_tokens: int = RUN_DEFAULTS["decode_tokens"]
    # quality mode only (RUN_FIELDS says what each is)
    task: str = RUN_DEFAULTS["task"]
    kv_pairs: int = RUN_DEFAULTS["kv_pairs"]
    data: str = RUN_DEFAULTS["data"]
    data_digest: str | None = RUN_DEFAULTS["data_digest"]  # a file's content: edited, a new cell
    train_updates: int = RUN_DEFAULTS["train_updates"]
    lr: float = RUN_DEFAULTS["lr"]
    nproc: int = RUN_DEFAULTS["nproc"]  # > 1: the cell runs under torchrun (measure.ranks)
    nnodes: int = RUN_DEFAULTS["nnodes"]  # > 1: torchrun on that many nodes, one job task each
    cuda_graphs: str = RUN_DEFAULTS["cuda_graphs"]  # prefill / decode on CUDA: off | auto | on
    l2_flush: bool = RUN_DEFAULTS["l2_flush"]  # CUDA: each timed call starts with a cold L2

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
        config = {
            k: v
            for k, v in self.model_config.items()
            if not (k in ELIDED_CONFIG_DEFAULTS and v == ELIDED_CONFIG_DEFAULTS[k])
        }
        return {**run, **config}

    @property
    def explicit_identity(self) -> dict[str, Any]:
        """The identity with the elided run fields at their values, null where inert (for tables
        and labels)."""
        run, config = self.run_fields, self.model_config
        return {
            **self.identity,
            **{k: run[k] for k in ELIDED_DEFAULTS},
            **{k: config[k] for k in ELIDED_CONFIG_DEFAULTS if k in config},
        }

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def label(self, fields: Iterable[str] = ()) -> str:
        """'hub-gpt n=1024 attention=sdpa' style; `fields` adds the swept fields that apply."""
        parts = [display_name(self.variant, getattr(self.config, "mixer", None)), f"n={self.seq}"]
        identity = self.explicit_identity
        for name in fields:
            value = identity.get(name)
            if name not in ("variant", "seq", "mixer", "mixer_digest") and value is not None:
                parts.append(f"{name}={value}")
        return " ".join(parts)

    def columns(self) -> dict[str, Any]:
        """This cell's part of its row: the cell and measure columns."""
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
        # run fields at their elided defaults are left out (from_json fills them in), so a worker
        # of an older commit (run --against) reads the cells of fields it does not know
        out = {
            k: getattr(self, k)
            for k in ("index", *RUN_FIELDS)
            if not (k in ELIDED_DEFAULTS and getattr(self, k) == ELIDED_DEFAULTS[k])
        }
        out["config"] = {
            k: v
            for k, v in config_dict(self.config).items()
            if not (k in ELIDED_CONFIG_DEFAULTS and v == ELIDED_CONFIG_DEFAULTS[k])
        }
        out["measure"] = dataclasses.asdict(self.measure)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        data = dict(data)
        data["config"] = config_from_dict(data["variant"], data["config"])
        data["measure"] = Measure(**data["measure"])
        return cls(**data)
