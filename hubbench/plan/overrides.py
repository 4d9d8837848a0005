"""The command line's overrides: `--seq 512,1024` style options and `--set key=v1,v2` items as
typed axes (they replace a suite's values for those fields after the device overlay),
`--rounds` / `--warmup` / ... as measure settings, and `--mixer`'s plug-in variants."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.axes import Axis, field_types, plugin_option_types, typed
from hubbench.plan.fields import parse_assignments, parse_text, split_list
from hubbench.plan.runfields import MEASURE_FIELDS
from hubbench.plan.suite import Suite, check_measure
from hubbench.plan.variants import PLUGIN_HOSTS, is_plugin


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
    try:
        given = split_list([mixer_opt] if isinstance(mixer_opt, str) else mixer_opt or [],
                           "--mixer")  # fmt: skip
        assigned = parse_assignments(sets, "--set")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    given += assigned.get("mixer", [])  # --set mixer=SPEC brings its options as --mixer does
    types = field_types(plugin_option_types([*mixers, *given], "--mixer"))
    items: list[tuple[str, str, list[str]]] = []
    for key, value in options.items():
        if value is None:
            continue
        origin = f"--{key.replace('_', '-')}"
        try:
            values = split_list([value] if isinstance(value, str) else value, origin)
        except ConfigError as exc:
            raise SuiteError(str(exc)) from None
        if values:
            items.append((origin, key, values))
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
        out[key] = typed(value, MEASURE_FIELDS[key], option)
    check_measure(out, lambda key: "--" + key.removesuffix("_s").replace("_", "-"))
    return out


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
