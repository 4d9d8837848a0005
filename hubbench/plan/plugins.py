"""Plug-in mixers: any `nn.Module` that maps (B, n, d) to (B, n, d), named by a spec.

A spec is `FILE.py:Class` (a path, relative to the directory hubbench runs in) or
`package.module:Class` (importable). The class is the mixer of one layer; hubbench builds the
variants `mixer-gpt` (the transformer with the plug-in in every layer) and `mixer-jamba` (jamba
with the plug-in in its attention layers) around it and measures and checks them like the
built-in ones.

The constructor contract (docs/reference.md, "Plug-in mixers"):

    class MyMixer(nn.Module):
        def __init__(self, d_model: int, n_heads: int, causal: bool, *, window: int = 128): ...
        def forward(self, x: Tensor) -> Tensor: ...           # (B, n, d) -> (B, n, d)
        def analytic_flops(self, seq: int) -> float: ...      # optional: forward FLOPs of one
                                                              # sequence, projections included

`d_model`, `n_heads` and `causal` are passed by keyword (causal is True: every model hubbench
builds is a causal LM). Every other parameter is one of the mixer's own options: it needs a
default or a value, and `--set name=v1,v2` sweeps it like any config field; its type comes from
its annotation (int, float, bool or str) or, without one, from its default. The options a cell
ran with are stored as JSON in the row's `mixer_options`. Without `analytic_flops` a row's
FLOPs are the counted ones (FlopCounterMode) and `flops_per_step_analytic` is null. A mixer that
also has `empty_state(batch, capacity, like)`, `prefill(x, capacity)` and `step(x, state)` (the
contract of hubbench.mixers.attention.Attention) runs in the prefill and decode modes too.

Parsing a spec is torch-free; loading one imports it (and so torch). Every failure is a
one-line PluginError naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubbench.errors import ConfigError
from hubbench.plan.fields import coerce

CONTRACT = ("d_model", "n_heads", "causal")
OPTION_TYPES = (bool, int, float, str)
# names hubbench itself gives a meaning in a cell: an option may not shadow them
RESERVED = frozenset(
    ("variant", "mode", "device", "batch", "seq", "threads", "compile", "decode_tokens")
)


class PluginError(ConfigError):
    """A plug-in mixer that cannot be loaded, constructed or run as the contract says."""


@dataclass(frozen=True)
class MixerSpec:
    text: str  # as given: what rows store
    target: str  # the file path or the module name
    attr: str  # the class name
    is_file: bool

    @property
    def name(self) -> str:
        """What rows and figures call the mixer: its class name."""
        return self.attr


def parse_spec(text: str, where: str = "--mixer") -> MixerSpec:
    """`FILE.py:Class` or `module.path:Class` -> MixerSpec; a malformed spec is a PluginError."""
    target, sep, attr = text.strip().rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise PluginError(
            f"{where} {text!r}: expected FILE.py:Class or package.module:Class", ("mixer",)
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise PluginError(f"{where} {text!r}: {target!r} is neither a .py file nor a module name")
    if is_file:  # ./a/../m.py and m.py are one spec (rows store this text)
        target = os.path.normpath(target)
    return MixerSpec(f"{target}:{attr}", target, attr, is_file)


def display_name(text: str | None) -> str | None:
    """The class name of a spec, for labels (None when the spec does not parse)."""
    if not text:
        return None
    try:
        return parse_spec(text).name
    except PluginError:
        return None


def _import(spec: MixerSpec) -> Any:
    if not spec.is_file:
        if os.getcwd() not in sys.path:  # as `python -m` would: modules beside the run dir
            sys.path.append(os.getcwd())
        try:
            return importlib.import_module(spec.target)
        except (Exception, SystemExit) as exc:  # the user's module: any failure is its error
            raise PluginError(
                f"mixer {spec.text}: cannot import {spec.target}: {_why(exc)}"
            ) from None
    path = Path(spec.target).resolve()
    if not path.is_file():
        raise PluginError(f"mixer {spec.text}: no file {spec.target} (from {Path.cwd()})")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"hubbench_plugin_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise PluginError(f"mixer {spec.text}: {spec.target} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    if str(path.parent) not in sys.path:  # as `python FILE.py` would: its neighbours import
        sys.path.append(str(path.parent))
    try:
        loader.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: any failure is its error
        del sys.modules[name]
        raise PluginError(
            f"mixer {spec.text}: importing {spec.target} failed: {_why(exc)}"
        ) from None
    return module


def source_digest(text: str) -> str:
    """12 hex digits of sha256 over the mixer's source file: rows of edited code are new cells."""
    module = _import(parse_spec(text))
    source = getattr(module, "__file__", None)
    if not source or not Path(source).is_file():
        return ""
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12]


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_class(text: str) -> type:
    """The mixer class a spec names, checked against the contract (imports torch)."""
    from torch import nn

    spec = parse_spec(text)
    module = _import(spec)
    cls = getattr(module, spec.attr, None)
    if cls is None:
        raise PluginError(f"mixer {spec.text}: {spec.target} has no {spec.attr}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PluginError(f"mixer {spec.text}: {spec.attr} is not an nn.Module subclass")
    params = _parameters(cls, spec)
    missing = [p for p in CONTRACT if p not in params]
    if missing:
        raise PluginError(
            f"mixer {spec.text}: the constructor lacks {', '.join(missing)}; a mixer takes "
            f"({', '.join(CONTRACT)}, *, its own options)"
        )
    return cls


def _parameters(cls: type, spec: MixerSpec) -> dict[str, inspect.Parameter]:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"mixer {spec.text}: cannot read the constructor: {exc}") from None
    return {
        n: p
        for n, p in list(signature.parameters.items())[1:]  # past self
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any  # inspect.Parameter.empty when the option has none


@dataclass(frozen=True)
class MixerInfo:
    spec: str
    name: str
    options: dict[str, Option]
    analytic: bool  # has analytic_flops
    decodable: bool  # has empty_state, prefill and step

    def check_options(self, values: dict[str, Any], where: str) -> None:
        unknown = sorted(set(values) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise PluginError(
                f"{where}: mixer {self.name} has no option(s) {', '.join(unknown)}; valid: {valid}"
            )
        for name, option in self.options.items():
            if name not in values and option.default is inspect.Parameter.empty:
                raise PluginError(f"{where}: mixer {self.name} needs option {name} (--set {name}=)")

    def complete(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every option's value: the given ones over the defaults (so that equal builds have
        equal text in a row, whether a default was spelled out or not)."""
        out = {
            n: o.default
            for n, o in self.options.items()
            if o.default is not inspect.Parameter.empty
        }
        out.update(values)
        try:  # typed as declared: a float option's default 1 and --set 1.0 are one value
            return {n: coerce(v, self.options[n].type, f"option {n}") for n, v in out.items()}
        except ConfigError as exc:
            raise PluginError(f"mixer {self.name}: {exc}", ("mixer_options",)) from None


def inspect_mixer(text: str) -> MixerInfo:
    """Load a spec and describe it: its options with their types, what else it offers."""
    cls = load_class(text)
    spec = parse_spec(text)
    options = {}
    for name, p in _parameters(cls, spec).items():
        if name in CONTRACT:
            continue
        kind = _option_type(p)
        if kind is None:
            raise PluginError(
                f"mixer {spec.text}: option {name} needs an int, float, bool or str annotation "
                "or default"
            )
        if name in RESERVED:
            raise PluginError(f"mixer {spec.text}: option {name} shadows a run field; rename it")
        options[name] = Option(name, kind, p.default)
    decodable = all(callable(getattr(cls, m, None)) for m in ("empty_state", "prefill", "step"))
    analytic = callable(getattr(cls, "analytic_flops", None))
    return MixerInfo(spec.text, spec.name, options, analytic, decodable)


def _option_type(p: inspect.Parameter) -> type | None:
    ann = p.annotation
    if isinstance(ann, str):  # from __future__ import annotations
        ann = {t.__name__: t for t in OPTION_TYPES}.get(ann)
    if ann in OPTION_TYPES:
        return ann
    if p.default is not inspect.Parameter.empty and type(p.default) in OPTION_TYPES:
        return type(p.default)
    return None


def encode_options(values: dict[str, Any]) -> str:
    """Options as the canonical JSON a row stores (sorted keys: equal options, equal text)."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def decode_options(text: str, where: str = "mixer_options") -> dict[str, Any]:
    try:
        values = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise PluginError(f"{where}: not JSON ({exc.msg} at {exc.pos}): {text!r}") from None
    if not isinstance(values, dict):
        raise PluginError(f"{where}: must be a JSON object of option values, got {text!r}")
    return values
