"""A suite's rules: `[[exclude]]` (cells never run) and `[[gate.ratio]]` / `[[gate.value]]`
(the bounds `hubbench gate` checks), parsed and checked when the suite is loaded.

An exclude rule matches a cell when every condition holds: a value, a list of values, or
comparisons (`seq = { gt = 4096 }`). A field that does not apply to a cell (null) never matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbench import schema
from hubbench.errors import SuiteError
from hubbench.plan.axes import check_keys, known, typed

COMPARATORS = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class ExcludeRule:
    conditions: tuple[tuple[str, Any], ...]  # field -> value | list | {gt/ge/lt/le: number}
    reason: str
    origin: str

    def matches(self, fields: Mapping[str, Any]) -> bool:
        return all(_condition_holds(fields.get(k), cond) for k, cond in self.conditions)


@dataclass(frozen=True)
class GateRule:
    name: str
    metric: str
    numerator: dict[str, Any]
    denominator: dict[str, Any]
    min: float | None = None
    max: float | None = None
    kind: str = "ratio"  # ratio: numerator / denominator; value: the metric of the cell itself


def exclude_rules(rules: Any, types: Mapping[str, type], path: Path) -> list[ExcludeRule]:
    if not isinstance(rules, list):
        raise SuiteError(f"{path}: exclude must be an array of tables ([[exclude]])")
    out = []
    for i, rule in enumerate(rules):
        where = f"{path}: exclude[{i}]"
        if not isinstance(rule, dict):
            raise SuiteError(f"{where} must be a table")
        reason = typed(rule.get("reason", "excluded by the suite"), str, f"{where}.reason")
        conditions = []
        for key, cond in rule.items():
            if key == "reason":
                continue
            if key not in types:
                raise SuiteError(
                    f"{where}.{key} is not a known field; valid: {', '.join(sorted(types))}"
                )
            conditions.append((key, _condition(cond, types[key], f"{where}.{key}")))
        if not conditions:
            raise SuiteError(f"{where} has no conditions; it would exclude every cell")
        out.append(ExcludeRule(tuple(conditions), reason, where))
    return out


def _condition(cond: Any, kind: type, where: str) -> Any:
    if isinstance(cond, dict):
        if kind not in (int, float):
            raise SuiteError(f"{where}: comparisons (gt, ge, lt, le) need a numeric field")
        if not cond:
            raise SuiteError(f"{where}: an empty comparison table")
        for op, bound in cond.items():
            if op not in COMPARATORS:
                raise SuiteError(f"{where}.{op} is unknown; valid: {', '.join(COMPARATORS)}")
            typed(bound, float, f"{where}.{op}")
        return dict(cond)
    key = where.rpartition(".")[2]
    if isinstance(cond, list):
        if not cond:
            raise SuiteError(f"{where}: an empty list matches nothing")
        return tuple(
            known(key, typed(v, kind, f"{where}[{i}]"), f"{where}[{i}]") for i, v in enumerate(cond)
        )
    return known(key, typed(cond, kind, where), where)


def _condition_holds(value: Any, cond: Any) -> bool:
    if value is None:
        return False  # a field that does not apply to the cell never matches
    if isinstance(cond, dict):
        return all(COMPARATORS[op](value, bound) for op, bound in cond.items())
    if isinstance(cond, tuple):
        return value in cond
    return value == cond


def gate_rules(gate: Any, types: Mapping[str, type], path: Path) -> list[GateRule]:
    if not isinstance(gate, dict):
        raise SuiteError(f"{path}: gate must be a table holding [[gate.ratio]] rules")
    check_keys(gate, ("ratio", "value"), f"{path}: gate key")
    out = []
    for kind, sides in (("ratio", ("numerator", "denominator")), ("value", ("cell",))):
        rules = gate.get(kind, [])
        if not isinstance(rules, list):
            raise SuiteError(f"{path}: gate.{kind} must be an array of tables ([[gate.{kind}]])")
        out += [_gate_rule(kind, sides, rule, types, f"{path}: gate.{kind}[{i}]")
                for i, rule in enumerate(rules)]  # fmt: skip
    return out


def _gate_rule(
    kind: str, side_keys: tuple[str, ...], rule: Any, types: Mapping[str, type], where: str
) -> GateRule:
    """One [[gate.ratio]] (numerator over denominator) or [[gate.value]] (a cell's own metric:
    accuracy >= 0.9) rule, its fields and bounds checked."""
    if not isinstance(rule, dict):
        raise SuiteError(f"{where} must be a table")
    check_keys(rule, ("name", "metric", *side_keys, "min", "max"), f"{where} key")
    for key in ("name", *side_keys):
        if key not in rule:
            raise SuiteError(f"{where} needs {key!r}")
    name = typed(rule["name"], str, f"{where}.name")
    metric = typed(rule.get("metric", "tokens_per_s"), str, f"{where}.metric")
    if metric not in schema.METRICS:
        raise SuiteError(
            f"{where}.metric {metric!r} is unknown; valid: {', '.join(schema.METRICS)}"
        )
    sides = {}
    for side in side_keys:
        table = rule[side]
        if not isinstance(table, dict) or not table:
            raise SuiteError(f"{where}.{side} must be a non-empty table of cell fields")
        for key, value in table.items():
            if key not in types:
                raise SuiteError(
                    f"{where}.{side}.{key} is not a known field; valid: {', '.join(sorted(types))}"
                )
            known(key, typed(value, types[key], f"{where}.{side}.{key}"),
                   f"{where}.{side}.{key}")  # fmt: skip
        sides[side] = dict(table)
    bounds = {k: typed(rule[k], float, f"{where}.{k}") for k in ("min", "max") if k in rule}
    if not bounds:
        raise SuiteError(f"{where} sets neither min nor max")
    if kind == "value":
        return GateRule(name, metric, sides["cell"], {}, **bounds, kind="value")
    return GateRule(name, metric, sides["numerator"], sides["denominator"], **bounds)
