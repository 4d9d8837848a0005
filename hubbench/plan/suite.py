"""Suites: a TOML file read once into a `Suite` (validated: keys, types, rules); `Plan` is what
expanding one gives (hubbench.plan.expand).

A suite file (see suites/*.toml and docs/reference.md, "Suite files"):

    name = "throughput"                # optional; must equal the file stem when given
    description = "..."
    [measure]                          # how carefully each cell is measured
    rounds = 5; repeats = 5; warmup = 2; warmup_min_s = 0.2; timeout_s = 300
    [defaults]                         # one value per field
    device = "auto"; mode = "fwd_bwd"; d_model = 256
    [sweep]                            # a list per field; cells iterate these in file order,
    seq = [512, 1024]                  # the last axis fastest
    variant = ["transformer", "hub-gpt"]
    [defaults.cuda] / [sweep.cuda] / [measure.cuda]
                                       # overlays for cells whose device is cuda (or cpu)
    [[exclude]]                        # cells never run: every condition must match
    attention = "naive"; seq = { gt = 4096 }; reason = "..."
    [[gate.ratio]]                     # ratio rules read by `hubbench gate`
    [[gate.value]]                     # value rules: name, metric, cell = {...}, min / max
    [executor]                         # how `--executor submitit-local | slurm` shards and
    cells_per_job = 4; partition = "gpu"; time_min = 120; gpus_per_job = 1; parallelism = 8

A field is a run field (variant, mode, device, batch, seq, compile, threads, nproc, nnodes, ...)
or a config field of some variant (hubbench.plan.axes says which, with their types). Where
suites are found: hubbench.plan.find; the rules: hubbench.plan.rules; the executor table:
hubbench.plan.executor. Nothing here imports torch.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.axes import Axis, check_keys, field_types, plugin_option_types, typed
from hubbench.plan.cell import Cell
from hubbench.plan.executor import spec_from
from hubbench.plan.find import find_suite, suite_name_problem
from hubbench.plan.rules import ExcludeRule, GateRule, exclude_rules, gate_rules
from hubbench.plan.runfields import MEASURE_FIELDS

DEVICE_KINDS = ("cpu", "cuda")
TOP_KEYS = ("name", "description", "measure", "defaults", "sweep", "exclude", "gate", "executor")
MAX_SECONDS = 1e6  # about 11 days: beyond it a time limit is a typo (and overflows select)
MAX_COUNT = 1_000_000  # steps or rounds per cell


@dataclass
class Suite:
    name: str
    description: str
    path: Path
    axes: dict[str, Axis]  # [defaults] (one value) and [sweep] (a list), in file order
    swept: tuple[str, ...]  # fields written under [sweep]
    device_axes: dict[str, dict[str, Axis]]  # "cuda" -> overlay
    measure: dict[str, Any]  # [measure] as written; the device's defaults fill the rest
    device_measure: dict[str, dict[str, Any]]
    exclude: list[ExcludeRule] = field(default_factory=list)
    gate: list[GateRule] = field(default_factory=list)
    executor: dict[str, Any] = field(default_factory=dict)  # [executor] (hubbench.plan.executor)


@dataclass
class Plan:
    """The cells to run, in order, and what the suite's rules kept out."""

    suite: Suite
    cells: list[Cell]
    excluded: list[tuple[dict[str, Any], str]]  # (fields, reason)
    merged: int  # combinations that collapsed into an earlier cell (inert fields)
    varying: tuple[str, ...]  # fields that differ between cells (for labels and tables)


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and validate one suite file (keys, types, rules); raise SuiteError naming the key."""
    path = find_suite(name_or_path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: invalid TOML: {exc}") from exc
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_suite(data, path)


def parse_suite(data: Mapping[str, Any], path: Path) -> Suite:
    types = field_types(plugin_option_types(suite_mixers(data), f"{path}: mixer"))
    check_keys(data, TOP_KEYS, f"{path}: top-level key")
    name = typed(data.get("name", path.stem), str, f"{path}: name")
    if name != path.stem:
        raise SuiteError(f"{path}: name {name!r} must equal the file name {path.stem!r}")
    problem = suite_name_problem(name)
    if problem:
        raise SuiteError(f"{path}: suite name {name!r} {problem}; rename the file")
    description = typed(data.get("description", ""), str, f"{path}: description")

    defaults = _table(data, "defaults", path)
    sweep = _table(data, "sweep", path)
    measure_table = _table(data, "measure", path)
    axes = _axes(defaults, sweep, types, path, "")
    device_axes: dict[str, dict[str, Axis]] = {}
    device_measure: dict[str, dict[str, Any]] = {}
    for kind in DEVICE_KINDS:
        d = _table(defaults, kind, path, prefix="defaults.")
        s = _table(sweep, kind, path, prefix="sweep.")
        if d or s:
            device_axes[kind] = _axes(d, s, types, path, f".{kind}")
        m = _table(measure_table, kind, path, prefix="measure.")
        if m:
            device_measure[kind] = _measure_values(m, f"{path}: measure.{kind}")
    measure = _measure_values(measure_table, f"{path}: measure")

    return Suite(
        name=name,
        description=description,
        path=path,
        axes=axes,
        swept=tuple(k for k in sweep if k not in DEVICE_KINDS),
        device_axes=device_axes,
        measure=measure,
        device_measure=device_measure,
        exclude=exclude_rules(data.get("exclude", []), types, path),
        gate=gate_rules(data.get("gate", {}), types, path),
        executor=_executor_table(data, path),
    )


def _executor_table(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    table = _table(data, "executor", path)
    try:
        return spec_from(table, f"{path}: executor")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None


def _table(data: Mapping[str, Any], key: str, path: Path, prefix: str = "") -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"{path}: {prefix}{key} must be a table, got {type(value).__name__}")
    return value


def _axes(
    defaults: Mapping[str, Any],
    sweep: Mapping[str, Any],
    types: Mapping[str, type],
    path: Path,
    suffix: str,
) -> dict[str, Axis]:
    axes: dict[str, Axis] = {}
    for section, table in (("defaults", defaults), ("sweep", sweep)):
        for key, value in table.items():
            if key in DEVICE_KINDS and isinstance(value, dict):
                continue
            where = f"{path}: {section}{suffix}.{key}"
            if key not in types:
                raise SuiteError(f"{where} is not a known field; valid: {', '.join(sorted(types))}")
            if key in axes:
                raise SuiteError(f"{where} is also set in {axes[key].origin}; set it once")
            if section == "sweep":
                if not isinstance(value, list) or not value:
                    raise SuiteError(f"{where}: a sweep axis must be a non-empty list")
                values = tuple(typed(v, types[key], f"{where}[{i}]") for i, v in enumerate(value))
            else:
                if isinstance(value, list):
                    raise SuiteError(f"{where}: defaults take one value; put lists under [sweep]")
                values = (typed(value, types[key], where),)
            axes[key] = Axis(key, values, where)
    return axes


def _measure_values(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key in DEVICE_KINDS and isinstance(value, dict):
            continue
        if key not in MEASURE_FIELDS:
            raise SuiteError(f"{where}.{key} is unknown; valid: {', '.join(MEASURE_FIELDS)}")
        out[key] = typed(value, MEASURE_FIELDS[key], f"{where}.{key}")
    check_measure(out, lambda key: f"{where}.{key}")
    return out


def check_measure(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Bounds of the measure settings given (`where(key)` names one in an error)."""
    lows = {
        "warmup": 0,
        "repeats": 1,
        "rounds": 1,
        "min_time_s": 0.0,
        "warmup_min_s": 0.0,
        "warmup_max_s": 0.0,
    }
    for key, low in lows.items():
        if key in values and values[key] < low:
            raise SuiteError(f"{where(key)} must be >= {low} (got {values[key]})")
    if "timeout_s" in values and values["timeout_s"] <= 0:
        raise SuiteError(f"{where('timeout_s')} must be > 0 (got {values['timeout_s']})")
    for key in ("timeout_s", "min_time_s", "warmup_min_s", "warmup_max_s"):
        if key in values and values[key] > MAX_SECONDS:
            raise SuiteError(f"{where(key)} must be at most {MAX_SECONDS:g} s (got {values[key]})")
    for key in ("warmup", "repeats", "rounds"):
        if key in values and values[key] > MAX_COUNT:
            raise SuiteError(f"{where(key)} must be at most {MAX_COUNT} (got {values[key]})")


def suite_mixers(data: Mapping[str, Any]) -> list[str]:
    """The plug-in specs a suite file names under [defaults] / [sweep] (and device overlays)."""
    found: list[str] = []
    for section in ("defaults", "sweep"):
        table = data.get(section, {})
        tables = [table] + [table.get(k, {}) for k in DEVICE_KINDS if isinstance(table, dict)]
        for t in tables:
            value = t.get("mixer") if isinstance(t, dict) else None
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and v:
                    found.append(v)
    return found


def suite_axes(suite: Suite) -> dict[str, tuple[Any, ...]]:
    """The [sweep] axes with their base values (device overlays are in suite.device_axes)."""
    return {k: suite.axes[k].values for k in suite.swept}
