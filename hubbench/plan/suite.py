"""Suites: TOML files parsed once into dataclasses, validated, and expanded into cells.

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
or a config field of some variant (hubbench.plan.variants). Each cell keeps only the fields its
variant
has and that can change what it builds (variants.inert_fields); the others are null in its row
and do not multiply cells. CLI overrides (`--seq 1024`, `--set hubs=4,8`) replace a field's
values after the device overlay. Every cell's config is validated once, here, before anything
runs; the cell carries it.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench import schema
from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.cell import Cell
from hubbench.plan.executor import spec_from
from hubbench.plan.fields import (
    INFERENCE_MODES,
    MODES,
    coerce,
    device_kind,
    parse_assignments,
    parse_text,
    resolve_device,
    split_list,
)
from hubbench.plan.fields import cuda_available as probe_cuda
from hubbench.plan.plugins import (
    MixerInfo,
    PluginError,
    encode_options,
    inspect_mixer,
    parse_spec,
    source_digest,
)
from hubbench.plan.quality import check_quality
from hubbench.plan.runfields import (
    DEVICE_MEASURE,
    MEASURE_FIELDS,
    QUALITY_FIELDS,
    RUN_FIELDS,
    Measure,
    run_defaults,
)
from hubbench.plan.variants import (
    CHOICES,
    PLUGIN_HOSTS,
    REGISTRY,
    all_fields,
    check_length,
    config_fields,
    inert_fields,
    is_plugin,
    make_config,
)

DEVICE_KINDS = ("cpu", "cuda")
TOP_KEYS = ("name", "description", "measure", "defaults", "sweep", "exclude", "gate", "executor")
COMPARATORS = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
SUITES_ENV = "HUBBENCH_SUITES"
MAX_SECONDS = 1e6  # about 11 days: beyond it a time limit is a typo (and overflows select)
MAX_COUNT = 1_000_000  # steps or rounds per cell


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Axis:
    """The values one field takes and where they were written (for error messages)."""

    field: str
    values: tuple[Any, ...]
    origin: str  # e.g. "suites/hubs.toml: sweep.topk" or "--set topk"


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


# ----------------------------------------------------------------------------- finding files


def suite_dirs() -> list[Path]:
    """Where suite names are looked up: $HUBBENCH_SUITES, ./suites, the source tree's suites/."""
    dirs = []
    if os.environ.get(SUITES_ENV):
        dirs.append(Path(os.environ[SUITES_ENV]))
    dirs.append(Path.cwd() / "suites")
    dirs.append(Path(__file__).resolve().parents[2] / "suites")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def available_suites() -> dict[str, Path]:
    """Suite name -> file, first directory wins."""
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def find_suite(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text:
        if path.is_dir():
            raise SuiteError(f"suite {text} is a directory; give a .toml file or a suite name")
        if not path.is_file():
            raise SuiteError(f"suite file {text} does not exist")
        return path
    suites = available_suites()
    if text not in suites:
        where = ", ".join(str(d) for d in suite_dirs()) or "no suites/ directory found"
        valid = ", ".join(sorted(suites)) or "none"
        raise SuiteError(f"unknown suite {text!r}; available: {valid} (looked in {where})")
    return suites[text]


# ----------------------------------------------------------------------------- field types


def field_types(extra: Mapping[str, type] | None = None) -> dict[str, type]:
    """Every field a suite may name, with its type: the run fields, every config field, then
    `extra` (the options of the plug-in mixers in play: plugin_option_types)."""
    run = {name: f.type for name, f in RUN_FIELDS.items()}
    return {**run, **{name: f.type for name, f in all_fields().items()}, **(extra or {})}


@functools.lru_cache(maxsize=64)
def mixer_info(spec: str) -> MixerInfo:
    """A plug-in mixer's options and abilities, loaded once per process (imports torch)."""
    return inspect_mixer(spec)


def plugin_option_types(specs: Iterable[str], where: str) -> dict[str, type]:
    """The options of these plug-in mixers by name; one name with two types is an error."""
    out: dict[str, type] = {}
    owner: dict[str, str] = {}
    known = set(field_types())
    for spec in dict.fromkeys(specs):
        try:
            info = mixer_info(spec)
        except PluginError as exc:
            raise SuiteError(f"{where}: {exc}") from None
        for name, option in info.options.items():
            if name in known:
                raise SuiteError(
                    f"{where}: mixer {info.name} option {name} has the name of a config field; "
                    "rename it"
                )
            if out.setdefault(name, option.type) is not option.type:
                raise SuiteError(
                    f"{where}: option {name} is {out[name].__name__} in {owner[name]} but "
                    f"{option.type.__name__} in {info.name}"
                )
            owner.setdefault(name, info.name)
    return out


def _suite_mixers(data: Mapping[str, Any]) -> list[str]:
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


def with_mixers(suite: Suite, overrides: Mapping[str, Axis]) -> dict[str, Axis]:
    """`--mixer`: unless `--variant` is given, each host variant of the sweep (transformer,
    jamba) brings its plug-in twin (mixer-gpt, mixer-jamba); with no host, mixer-gpt."""
    out = dict(overrides)
    if "mixer" not in out:
        return out
    if "variant" in out:
        if not any(is_plugin(v) for v in out["variant"].values):
            raise SuiteError(
                f"{out['mixer'].origin} needs a plug-in variant in {out['variant'].origin}: add "
                "mixer-gpt or mixer-jamba, or leave the variants to the suite"
            )
        return out
    axis = suite.axes.get("variant")
    variants = list(axis.values) if axis else []
    twins = [PLUGIN_HOSTS[v] for v in variants if v in PLUGIN_HOSTS] or ["mixer-gpt"]
    origin = out["mixer"].origin
    out["variant"] = Axis("variant", tuple(dict.fromkeys([*variants, *twins])), origin)
    return out


def field_choices() -> dict[str, tuple[str, ...]]:
    """The fields that take one of a few names, with those names."""
    return {"variant": tuple(REGISTRY), "mode": MODES, **CHOICES}


def _typed(value: Any, kind: type, where: str) -> Any:
    try:
        return coerce(value, kind, where)
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None


def _known(key: str, value: Any, where: str) -> Any:
    """A rule's value for `key`, which must be one the field can take (else it matches nothing)."""
    choices = field_choices().get(key)
    if choices is not None and value not in choices:
        raise SuiteError(f"{where}: {value!r} is not a valid {key}; valid: {', '.join(choices)}")
    return value


# ----------------------------------------------------------------------------- loading


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
    types = field_types(plugin_option_types(_suite_mixers(data), f"{path}: mixer"))
    _unknown(data, TOP_KEYS, f"{path}: top-level key")
    name = _typed(data.get("name", path.stem), str, f"{path}: name")
    if name != path.stem:
        raise SuiteError(f"{path}: name {name!r} must equal the file name {path.stem!r}")
    description = _typed(data.get("description", ""), str, f"{path}: description")

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
        exclude=_exclude_rules(data.get("exclude", []), types, path),
        gate=_gate_rules(data.get("gate", {}), types, path),
        executor=_executor_table(data, path),
    )


def _executor_table(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    table = _table(data, "executor", path)
    try:
        return spec_from(table, f"{path}: executor")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None


def _unknown(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = list(valid)
    for key in table:
        if key not in valid:
            raise SuiteError(f"{where} {key!r} is unknown; valid: {', '.join(valid)}")


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
                values = tuple(_typed(v, types[key], f"{where}[{i}]") for i, v in enumerate(value))
            else:
                if isinstance(value, list):
                    raise SuiteError(f"{where}: defaults take one value; put lists under [sweep]")
                values = (_typed(value, types[key], where),)
            axes[key] = Axis(key, values, where)
    return axes


def _measure_values(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key in DEVICE_KINDS and isinstance(value, dict):
            continue
        if key not in MEASURE_FIELDS:
            raise SuiteError(f"{where}.{key} is unknown; valid: {', '.join(MEASURE_FIELDS)}")
        out[key] = _typed(value, MEASURE_FIELDS[key], f"{where}.{key}")
    _check_measure(out, lambda key: f"{where}.{key}")
    return out


def _check_measure(values: Mapping[str, Any], where: Any) -> None:
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


def _exclude_rules(rules: Any, types: Mapping[str, type], path: Path) -> list[ExcludeRule]:
    if not isinstance(rules, list):
        raise SuiteError(f"{path}: exclude must be an array of tables ([[exclude]])")
    out = []
    for i, rule in enumerate(rules):
        where = f"{path}: exclude[{i}]"
        if not isinstance(rule, dict):
            raise SuiteError(f"{where} must be a table")
        reason = _typed(rule.get("reason", "excluded by the suite"), str, f"{where}.reason")
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
            _typed(bound, float, f"{where}.{op}")
        return dict(cond)
    key = where.rpartition(".")[2]
    if isinstance(cond, list):
        if not cond:
            raise SuiteError(f"{where}: an empty list matches nothing")
        return tuple(
            _known(key, _typed(v, kind, f"{where}[{i}]"), f"{where}[{i}]")
            for i, v in enumerate(cond)
        )
    return _known(key, _typed(cond, kind, where), where)


def _condition_holds(value: Any, cond: Any) -> bool:
    if value is None:
        return False  # a field that does not apply to the cell never matches
    if isinstance(cond, dict):
        return all(COMPARATORS[op](value, bound) for op, bound in cond.items())
    if isinstance(cond, tuple):
        return value in cond
    return value == cond


def _gate_rules(gate: Any, types: Mapping[str, type], path: Path) -> list[GateRule]:
    if not isinstance(gate, dict):
        raise SuiteError(f"{path}: gate must be a table holding [[gate.ratio]] rules")
    _unknown(gate, ("ratio", "value"), f"{path}: gate key")
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
    _unknown(rule, ("name", "metric", *side_keys, "min", "max"), f"{where} key")
    for key in ("name", *side_keys):
        if key not in rule:
            raise SuiteError(f"{where} needs {key!r}")
    name = _typed(rule["name"], str, f"{where}.name")
    metric = _typed(rule.get("metric", "tokens_per_s"), str, f"{where}.metric")
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
            _known(key, _typed(value, types[key], f"{where}.{side}.{key}"),
                   f"{where}.{side}.{key}")  # fmt: skip
        sides[side] = dict(table)
    bounds = {k: _typed(rule[k], float, f"{where}.{k}") for k in ("min", "max") if k in rule}
    if not bounds:
        raise SuiteError(f"{where} sets neither min nor max")
    if kind == "value":
        return GateRule(name, metric, sides["cell"], {}, **bounds, kind="value")
    return GateRule(name, metric, sides["numerator"], sides["denominator"], **bounds)


# ----------------------------------------------------------------------------- overrides


def parse_overrides(
    sets: Iterable[str] = (),
    mixers: Iterable[str] = (),
    **options: str | Iterable[str] | None,
) -> dict[str, Axis]:
    """`--seq 512,1024` style options and `--set key=v1,v2` items -> typed axes.

    A field given twice (`--seq` and `--set seq=`, or `--set k=` twice) is an error. `mixers`:
    the plug-in specs in play besides `--mixer` (the suite's), whose options `--set` may name.
    """
    mixer_opt = options.get("mixer")
    given = split_list([mixer_opt] if isinstance(mixer_opt, str) else mixer_opt or [])
    try:
        assigned = parse_assignments(sets, "--set")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    given += assigned.get("mixer", [])  # --set mixer=SPEC brings its options as --mixer does
    types = field_types(plugin_option_types([*mixers, *given], "--mixer"))
    items: list[tuple[str, str, list[str]]] = []
    for key, value in options.items():
        if value is None:
            continue
        values = split_list([value] if isinstance(value, str) else value)
        if values:
            items.append((f"--{key.replace('_', '-')}", key, values))
    items += [(f"--set {key}", key, values) for key, values in assigned.items()]
    out: dict[str, Axis] = {}
    for origin, key, texts in items:
        if key not in types:
            raise SuiteError(f"{origin}: unknown field {key!r}; valid: {', '.join(sorted(types))}")
        if key in out:
            raise SuiteError(f"{origin}: {key} is also given by {out[key].origin}; give it once")
        try:
            values = tuple(parse_text(t, types[key], origin) for t in texts)
        except ConfigError as exc:
            raise SuiteError(str(exc)) from None
        out[key] = Axis(key, tuple(dict.fromkeys(values)), origin)
    return out


def measure_overrides(**values: float | int | None) -> dict[str, Any]:
    """--rounds / --repeats / --warmup / --min-time / --timeout, checked like [measure]."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        option = "--" + key.removesuffix("_s").replace("_", "-")
        out[key] = _typed(value, MEASURE_FIELDS[key], option)
    _check_measure(out, lambda key: "--" + key.removesuffix("_s").replace("_", "-"))
    return out


# ----------------------------------------------------------------------------- expansion


def expand(
    suite: Suite,
    overrides: Mapping[str, Axis] | None = None,
    measure: Mapping[str, Any] | None = None,
    cuda_available: bool | None = None,
) -> Plan:
    """Suite (+ overrides) -> the validated, de-duplicated, ordered cells to run.

    `cuda_available` decides what `device = "auto"` means (default: probe this machine).
    """
    overrides = dict(overrides or {})
    measure = dict(measure or {})
    device_axis = overrides.get("device") or suite.axes.get("device")
    devices = device_axis.values if device_axis else ("auto",)
    origin = device_axis.origin if device_axis else str(suite.path)
    cuda = probe_cuda() if cuda_available is None else cuda_available
    resolved = []
    for d in devices:
        try:
            resolved.append(("cuda" if cuda else "cpu") if d == "auto" else resolve_device(d))
        except ConfigError as exc:
            raise SuiteError(f"{origin}: {exc}") from None
    cells: list[Cell] = []
    seen: set[str] = set()
    excluded: list[tuple[dict[str, Any], str]] = []
    merged = 0
    for device in dict.fromkeys(resolved):
        kind = device_kind(device)
        axes = dict(suite.axes)
        axes.update(suite.device_axes.get(kind, {}))
        axes.update(overrides)
        axes["device"] = Axis("device", (device,), origin)
        given = {**suite.measure, **suite.device_measure.get(kind, {}), **measure}
        settings = dataclasses.replace(DEVICE_MEASURE[kind], **given)
        if 0 < settings.warmup_max_s < settings.warmup_min_s:
            raise SuiteError(
                f"{suite.path}: warmup_max_s={settings.warmup_max_s:g} is below "
                f"warmup_min_s={settings.warmup_min_s:g}"
            )
        if "variant" not in axes:
            raise SuiteError(
                f"{suite.path}: no variant given; set defaults.variant or sweep.variant"
            )
        if "seq" not in axes:
            raise SuiteError(f"{suite.path}: no seq given; set defaults.seq or sweep.seq")
        names = list(axes)
        for combo in itertools.product(*(axes[n].values for n in names)):
            fields = dict(zip(names, combo, strict=True))
            try:
                cell = _make_cell(len(cells), fields, axes, settings, suite)
            except SuiteError:
                # a combination an [[exclude]] rule names by its fields as written (vocab 64
                # with task bytes) is excluded, not an error, even though it cannot be built
                raw = {**run_defaults(), **fields}
                rule = next((r for r in suite.exclude if r.matches(raw)), None)
                if rule is None:
                    raise
                excluded.append((raw, rule.reason))
                continue
            if cell.cell_id in seen:
                merged += 1
                continue
            seen.add(cell.cell_id)
            identity = cell.identity
            rule = next((r for r in suite.exclude if r.matches(identity)), None)
            if rule is not None:
                excluded.append((identity, rule.reason))
                continue
            cells.append(cell)
    if not cells:
        why = f"; {len(excluded)} excluded by the suite's [[exclude]] rules" if excluded else ""
        raise SuiteError(f"{suite.path}: the sweep has no cells to run{why}")
    varying = schema.varying([c.explicit_identity for c in cells], nulls=False)
    return Plan(suite, cells, excluded, merged, tuple(varying))


def _make_cell(
    index: int, fields: dict[str, Any], axes: Mapping[str, Axis], settings: Measure, suite: Suite
) -> Cell:
    run = {**run_defaults(), **{k: v for k, v in fields.items() if k in RUN_FIELDS}}
    variant = run["variant"]

    def fail(message: str, keys: Iterable[str]) -> SuiteError:
        origins = sorted({axes[k].origin for k in keys if k in axes and axes[k].origin})
        where = "; ".join(origins) or str(suite.path)
        return SuiteError(f"{where}: cell {variant} n={run['seq']}: {message}")

    if variant not in REGISTRY:
        raise fail(f"unknown variant {variant!r}; valid: {', '.join(REGISTRY)}", ["variant"])
    if run["mode"] not in MODES:
        raise fail(f"unknown mode {run['mode']!r}; valid: {', '.join(MODES)}", ["mode"])
    quality = run["mode"] == "quality"
    checked = ("batch", "seq", "threads", "nproc", "nnodes")
    checked += ("decode_tokens",) * (run["mode"] == "decode")
    checked += ("train_updates",) * quality + ("kv_pairs",) * (quality and run["task"] == "mqar")
    for key in checked:
        if run[key] < 1:
            raise fail(f"{key} must be >= 1 (got {run[key]})", [key])
    own = set(config_fields(variant))
    given = {k: v for k, v in fields.items() if k in own}
    if is_plugin(variant) and given.get("mixer"):
        try:
            given["mixer"] = parse_spec(str(given["mixer"]), "mixer").text
            given["mixer_digest"] = source_digest(given["mixer"])  # edited code: a new cell
            given["mixer_options"] = _plugin_options(given, fields)
        except PluginError as exc:
            raise fail(str(exc), ["mixer", *exc.fields]) from None
    try:
        config = make_config(variant, **given)
    except ConfigError as exc:
        raise fail(str(exc), exc.fields or given) from None
    try:
        check_length(config, run["seq"])
    except ConfigError as exc:
        raise fail(str(exc), exc.fields) from None
    if run["mode"] in INFERENCE_MODES:
        if run["compile"]:
            raise fail(f"mode {run['mode']} does not run compiled (compile=true)", ["compile"])
        if not getattr(config, "causal", True):
            raise fail(f"mode {run['mode']} needs a causal model (causal=false)", ["causal"])
        chunk = None if "chunk" in inert_fields(config) else getattr(config, "chunk", None)
        if run["mode"] == "decode" and chunk and run["decode_tokens"] % chunk:
            raise fail(
                f"decode_tokens={run['decode_tokens']} must be a multiple of chunk={chunk}, "
                "so every timed step amortises the same share of chunk boundaries",
                ["decode_tokens", "chunk"],
            )
    if quality:
        try:
            check_quality(run, config)
        except ConfigError as exc:
            raise fail(str(exc), exc.fields) from None
        if run["compile"]:
            raise fail("mode quality does not run compiled (compile=true)", ["compile"])
        settings = dataclasses.replace(settings, rounds=1)  # one training run is the cell
    for key in ("nproc", "nnodes"):
        if run[key] > 1 and (quality or run["compile"]):
            what = "mode quality" if quality else "compile=true"
            raise fail(f"{key}={run[key]} runs the timed step under torchrun; {what} does not "
                       f"(use {key}=1)", [key])  # fmt: skip
    return Cell(
        index=index,
        variant=variant,
        mode=run["mode"],
        device=run["device"],
        batch=run["batch"],
        seq=run["seq"],
        compile=run["compile"],
        threads=run["threads"],
        config=config,
        measure=settings,
        decode_tokens=run["decode_tokens"],
        nproc=run["nproc"],
        nnodes=run["nnodes"],
        **{k: run[k] for k in QUALITY_FIELDS},
    )


def _plugin_options(given: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    """A plug-in cell's options: mixer_options (JSON) updated by the option axes it has."""
    from hubbench.plan.plugins import decode_options

    info = mixer_info(str(given["mixer"]))
    values = decode_options(str(given.get("mixer_options", "{}")))
    values.update({k: v for k, v in fields.items() if k in info.options})
    info.check_options(values, "mixer_options")
    return encode_options(info.complete(values))


def suite_axes(suite: Suite) -> dict[str, tuple[Any, ...]]:
    """The [sweep] axes with their base values (device overlays are in suite.device_axes)."""
    return {k: suite.axes[k].values for k in suite.swept}
