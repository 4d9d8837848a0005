"""The fields a suite or the command line may set: their types, the names some take, and an
`Axis` (the values one field takes, with where they were written, for error messages).

A field is a run field (hubbench.plan.runfields), a config field of some variant
(hubbench.plan.variants) or an option of a plug-in mixer in play (its class says which).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.fields import MODES, coerce
from hubbench.plan.plugins import MixerInfo, PluginError, inspect_mixer
from hubbench.plan.runfields import RUN_FIELDS
from hubbench.plan.variants import CHOICES, REGISTRY, all_fields


@dataclass(frozen=True)
class Axis:
    """The values one field takes and where they were written (for error messages)."""

    field: str
    values: tuple[Any, ...]
    origin: str  # e.g. "suites/hubs.toml: sweep.topk" or "--set topk"


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


def field_choices() -> dict[str, tuple[str, ...]]:
    """The fields that take one of a few names, with those names."""
    return {"variant": tuple(REGISTRY), "mode": MODES, **CHOICES}


def typed(value: Any, kind: type, where: str) -> Any:
    """`value` checked against `kind` (fields.coerce), a SuiteError naming `where` if it fails."""
    try:
        return coerce(value, kind, where)
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None


def known(key: str, value: Any, where: str) -> Any:
    """A rule's value for `key`, which must be one the field can take (else it matches nothing)."""
    choices = field_choices().get(key)
    if choices is not None and value not in choices:
        raise SuiteError(f"{where}: {value!r} is not a valid {key}; valid: {', '.join(choices)}")
    return value


def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """A SuiteError for the first key of `table` that is not in `valid`."""
    valid = list(valid)
    for key in table:
        if key not in valid:
            raise SuiteError(f"{where} {key!r} is unknown; valid: {', '.join(valid)}")
