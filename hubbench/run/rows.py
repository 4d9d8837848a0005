"""A cell's state and its row, both ways: the one mapping between them.

The runner keeps each cell's rounds so far as a CellState (hubbench.run.rounds); `make_row`
turns it into the cell's row after every round, `state_from_row` turns a stored row back into
the state: for --resume (hubbench.run.runner), and for the rows a job wrote (the submitter,
hubbench.run.executors). `make_row(state_from_row(cell, row))` is `row` again, utc_time aside
(tests/run/test_rows.py). Which of two rows of a cell a run keeps is hubbench.store.supersedes.

In a same-run A/B (hubbench.run.against) each cell has a state per side: its rows carry `side`
and `side_commit`, the commit in `git_commit`, and a cell_id ending in `/candidate` or
`/baseline`, so the two sides are two rows to the store's merge, --resume and every report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hubbench import schema
from hubbench.errors import SchemaError
from hubbench.measure.env import utc_now
from hubbench.measure.metrics import (
    RoundResult,
    measurement_columns,
    quality_columns,
)
from hubbench.plan.cell import Cell
from hubbench.run.against import BASELINE, Side

PARTIAL = "partial"  # the status of a cell with rounds still to come
LOCAL = {"executor": "local", "job_id": None}  # the execution columns of a cell run here


@dataclass
class CellState:
    """A cell's rounds so far and how it ended (None: still to be measured)."""

    cell: Cell
    rounds: list[RoundResult] = field(default_factory=list)
    failure: dict[str, Any] | None = None  # the outcome of the round that failed
    device_name: str | None = None
    wall_s: float = 0.0
    job_lost: bool = False  # failed with its job, not on its own (hubbench.run.lost)
    side: Side | None = None  # which code version measures it (same-run A/B only)
    # the 1-minute load average at each measured round's start and end (the runner's reading)
    loads: list[tuple[float | None, float | None]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The cell_id of its row: the cell's, with the side where there is one."""
        return self.cell.cell_id + (self.side.suffix() if self.side else "")

    @property
    def pending(self) -> bool:
        return self.failure is None and len(self.rounds) < self.cell.measure.rounds


def make_row(
    state: CellState,
    suite: str,
    run_id: str,
    env: Mapping[str, Any],
    execution: Mapping[str, Any] = LOCAL,
) -> dict[str, Any]:
    """A cell's row from its rounds so far; a missing or unknown column is a SchemaError.
    `execution`: the executor and job id (job_lost comes from the state).

    Each group of columns is checked once, where it is made (schema.part: here, Cell.columns,
    measurement_columns, quality_columns); the groups hold every column once, so the row is
    only put in file order, and the store writes it without checking it again.
    """
    cell = state.cell
    where = f"cell {cell.index}"
    identity = {
        "schema_version": schema.SCHEMA_VERSION,
        "run_id": run_id,
        "suite": suite,
        "cell_index": cell.index,
        "cell_id": state.key,
    }
    measured = state.rounds
    values = {
        **schema.part("identity", identity, where),
        **cell.columns(),
        **_side_columns(state.side),
        **schema.part("outcome", _outcome(state), where),
        **schema.part("execution", {**execution, **_execution(state)}, where),
        **(measurement_columns(measured, where) if measured else schema.empty("measurement")),
        **quality_columns(measured, where),
        **schema.part("env", {**env, **_side_env(state.side), "utc_time": utc_now()}, where),
    }
    unknown = sorted(set(values) - set(schema.NAMES))
    missing = sorted(set(schema.NAMES) - set(values))
    if unknown or missing:  # the groups checked their columns' types; here only the names
        raise SchemaError(
            f"{where}: a row's columns do not match the schema (unknown: "
            f"{', '.join(unknown) or '-'}; missing: {', '.join(missing) or '-'})"
        )
    return {name: values[name] for name in schema.NAMES}


def _execution(state: CellState) -> dict[str, Any]:
    """The execution columns the state holds: job_lost, and the load around each round (null
    before any round was measured, so that a row read back gives the same row)."""
    loads = state.loads or None
    return {
        "job_lost": state.job_lost,
        "round_load_1m_start": loads and [start for start, _ in loads],
        "round_load_1m_end": loads and [end for _, end in loads],
    }


def record_load(state: CellState, start: float | None, end: float | None) -> None:
    """The load around the round just appended to `state.rounds`: rounds of a row written
    before the load was recorded get nulls, so round i's load stays at index i."""
    state.loads += [(None, None)] * (len(state.rounds) - 1 - len(state.loads))
    state.loads.append((start, end))


def _side_columns(side: Side | None) -> dict[str, Any]:
    if side is None:
        return {}
    return {"side": side.name, "side_commit": side.commit}


def _side_env(side: Side | None) -> dict[str, Any]:
    """The baseline's rows were measured by REF's clean worktree, not the runner's tree."""
    if side is None or side.name != BASELINE:
        return {}
    return {"git_commit": side.commit, "git_dirty": False}


def _outcome(state: CellState) -> dict[str, Any]:
    outcome = {"status": "ok", "message": None, **(state.failure or {})}
    done, total = len(state.rounds), state.cell.measure.rounds
    if state.failure is None and done < total:
        outcome["status"] = PARTIAL
        outcome["message"] = f"{done} of {total} rounds measured; --resume measures the rest"
    return {**outcome, "device_name": state.device_name, "wall_s": state.wall_s}


def env_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The environment a row was measured in (make_row stamps a new row's utc_time)."""
    return {name: row[name] for name in schema.names("env")}


def state_from_row(
    cell: Cell, row: Mapping[str, Any] | None, side: Side | None = None
) -> CellState:
    """A cell's state from its stored row (None: nothing measured). A row lost with its job is
    pending again: its rounds are kept, its failure is not."""
    state = CellState(cell, side=side)
    if row is None:
        return state
    state.device_name, state.wall_s = row["device_name"], row["wall_s"] or 0.0
    state.rounds = [_round(row, i) for i in range(len(row["round_samples_s"] or []))]
    starts, ends = row["round_load_1m_start"] or [], row["round_load_1m_end"] or []
    state.loads = [(_at(starts, i), _at(ends, i)) for i in range(len(starts))]
    if row["status"] not in ("ok", PARTIAL) and not row["job_lost"]:
        state.failure = {k: row[k] for k in schema.names("outcome")}
    return state


# RoundResult field -> its column: every round of a row has the row's value
SHARED = {"tokens": "tokens_per_step", "params": "params", "mem_kind": "mem_kind",
          "tied_share": "tied_share",
          **{name: name for name in ("mem_baseline_bytes", "flops_per_step",
             "flops_per_step_analytic", "peak_flops_per_s", "peak_flops_source",
             "bytes_per_step_min", "peak_bytes_per_s", "peak_bytes_source")}}  # fmt: skip
# totals and maxima over the rounds (measurement_columns): the first round holds the row's,
# the others these values, which add nothing
FIRST_ONLY = {"warmup_s": 0.0, "warmup_steps": 0, "warmup_capped": 0, "peak_mem_bytes": None,
              "peak_mem_reserved_bytes": None, "state_bytes": None}  # fmt: skip


def _round(row: Mapping[str, Any], i: int) -> RoundResult:
    """Round i of a row, as measurement_columns took it in."""
    first = i == 0
    values = {name: row[column] for name, column in SHARED.items()}
    values.update({name: row[name] if first else none for name, none in FIRST_ONLY.items()})
    backends = {key: row[col] for col, key in schema.BACKEND_COLUMNS.items() if row[col]}
    quality = {k: row[k] for k in schema.names("quality")} if row["task"] is not None else None
    return RoundResult(
        samples_s=list(row["round_samples_s"][i]),
        sentinel_s=_at(row["round_sentinel_s"], i),
        session=_at(row["round_sessions"], i),
        backends=backends if first else {},
        quality=quality if first else None,
        world_size=row["world_size"] or 1,
        **values,
    )


def _at(values: list[Any] | None, i: int) -> Any:
    return values[i] if values and i < len(values) else None
