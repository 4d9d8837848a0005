"""What the causality card checks: every registered variant at a small size, its leaky control,
and the plug-in variants built around each `--mixer`. Torch-free (plan only).

The registry is read when the card is made, so variants registered later (swa, moba, nsa,
mamba2, gdn and their -gpt / -jamba forms) are picked up without edits here. Each variant gets
its small size from the config fields it has, by name:

- SMALL: the shape every variant shares (d_model 32, 2 layers, 2 heads, MLP ratio 2);
- a position size (a field named chunk, block or window, or ending in _chunk, _block or
  _window: cmp_block ...) gets SIZE = 8, a stride (a name holding "stride") STRIDE = 4, so
  that every block boundary (C-1, C, C+1, 2C ...) falls inside the lengths checked;
- a few counts by name (SMALL_COUNTS): hubs, topk, neighbours, top_blocks.

A value the config rejects (a rule between fields the names cannot know) falls back to the
variant's default for the fields the error names, and the card says so in the row's notes.
A variant with a `causal` config field gets its leaky control (causal=false) beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hubbench.errors import ConfigError

SMALL: dict[str, Any] = {"d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0}
SIZE, STRIDE = 8, 4
SIZE_NAMES = ("chunk", "block", "window")
SMALL_COUNTS: dict[str, int] = {"hubs": 4, "topk": 4, "neighbours": 1, "top_blocks": 2}


@dataclass(frozen=True)
class CardTarget:
    """One model the card checks: its label, variant, the fields it is built from (small
    defaults, then --set), the plug-in spec and raw option values (typed in the child)."""

    label: str
    variant: str
    fields: dict[str, Any]
    control: bool = False  # the leaky control (causal=false), expected to fail
    mixer: str | None = None  # plug-in variants: the --mixer spec
    options: dict[str, str] = field(default_factory=dict)  # --set keys it may take as options
    notes: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # every --mixer given: a key may be another one's option
    unknown: tuple[str, ...] = ()  # --set keys no selected variant has: options or mistakes


def is_size(name: str) -> bool:
    """A config field that counts positions of a block, chunk or window (gets SIZE)."""
    return name in SIZE_NAMES or any(name.endswith(f"_{s}") for s in SIZE_NAMES)


def small_fields(variant: str) -> dict[str, Any]:
    """The small values of the fields `variant` has (module docstring)."""
    from hubbench.plan.variants import get_spec

    out: dict[str, Any] = {}
    for f in dataclasses.fields(get_spec(variant).config_cls):
        if f.name in SMALL:
            out[f.name] = SMALL[f.name]
        elif f.name in SMALL_COUNTS:
            out[f.name] = SMALL_COUNTS[f.name]
        elif not isinstance(f.default, int) or isinstance(f.default, bool):
            continue
        elif "stride" in f.name:
            out[f.name] = STRIDE
        elif is_size(f.name):
            out[f.name] = SIZE
    return out


def sizes_of(config: Any) -> list[int]:
    """The position sizes of a built config (its chunk / block / window values), largest first."""
    values = {
        getattr(config, f.name)
        for f in dataclasses.fields(config)
        if (is_size(f.name) or "stride" in f.name) and isinstance(getattr(config, f.name), int)
    }
    return sorted((v for v in values if v > 0), reverse=True)


def small_config(variant: str, sets: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
    """(validated config, notes): the small fields under `sets`; a small value the config
    rejects falls back to the default for the fields the error names (a note says which)."""
    from hubbench.plan.variants import make_config

    chosen = {k: v for k, v in small_fields(variant).items() if k not in sets}
    notes: list[str] = []
    while True:
        try:
            return make_config(variant, **chosen, **sets), tuple(notes)
        except ConfigError as exc:
            ours = [k for k in exc.fields if k in chosen]
            if not ours:
                raise
            for k in ours:
                notes.append(f"{k} left at its default: small {k}={chosen.pop(k)} rejected ({exc})")


def card_targets(
    variants: list[str] | None,
    sets: dict[str, str],
    mixers: list[str],
    controls: bool,
) -> list[CardTarget]:
    """The targets in registry order: each variant, then its control when `controls` and the
    variant has a `causal` field; with `mixers`, each plug-in variant once per mixer.

    `variants` None means every registered built-in variant, or with mixers the plug-in ones
    only; with `controls` (the card, --all) both. A `--set` key must be a field of a selected
    variant, unless mixers are given (then the plug-in's child process checks it against the
    mixers' options).
    """
    from hubbench.plan.variants import REGISTRY, config_fields, display_name, get_spec, is_plugin

    if variants is None:
        plugins = [v for v in REGISTRY if is_plugin(v)] if mixers else []
        builtins = [v for v in REGISTRY if not is_plugin(v)]
        names = builtins + plugins if controls or not plugins else plugins
    else:
        names = list(variants)
        for name in names:
            get_spec(name)  # unknown variant -> ConfigError listing the valid ones
        if mixers and not any(is_plugin(v) for v in names):
            raise ConfigError(
                f"--mixer needs a plug-in variant among {', '.join(names)}: add mixer-gpt or "
                "mixer-jamba, or leave the variants out"
            )
    known = {f for v in names for f in config_fields(v)}
    unknown = [k for k in sets if k not in known]
    if unknown and not mixers:
        raise ConfigError(
            f"--set {unknown[0]}: not a config field of {', '.join(names)}; "
            f"valid: {', '.join(sorted(known))}"
        )
    out: list[CardTarget] = []
    for v in names:
        fields = set(config_fields(v))
        own = {k: val for k, val in sets.items() if k in fields}
        if is_plugin(v):
            if not mixers:
                raise ConfigError(f"{v}: give the plug-in mixer with --mixer FILE.py:Class")
            extra = {k: val for k, val in sets.items() if k not in fields}
            for spec in mixers:
                label = display_name(v, spec)
                out.append(CardTarget(label, v, own, mixer=spec, options=extra, peers=tuple(mixers),
                                      unknown=tuple(unknown)))  # fmt: skip
            continue
        out.append(CardTarget(v, v, own))
        if controls and "causal" in fields and "causal" not in own:
            out.append(CardTarget(f"{v} causal=false", v, {**own, "causal": "false"}, True))
    return out
