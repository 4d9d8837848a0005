"""Expanding a suite (with the command line's overrides) into the cells to run.

For each device, the suite's axes, its overlay for that device kind, then the overrides give the
fields; every combination is one cell, the last axis fastest. Each cell keeps only the fields its
variant has and that can change what it builds (variants.inert_fields): the others are null in
its row, so combinations that differ only there merge into one cell. A combination an
`[[exclude]]` rule matches is left out with the rule's reason. Every cell's config is validated
once, here, before anything runs; the cell carries it. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hubbench import schema
from hubbench.errors import ConfigError, SuiteError
from hubbench.plan.axes import Axis, mixer_info
from hubbench.plan.cell import Cell
from hubbench.plan.fields import INFERENCE_MODES, MODES, device_kind, resolve_device
from hubbench.plan.fields import cuda_available as probe_cuda
from hubbench.plan.plugins import (
    PluginError,
    decode_options,
    encode_options,
    parse_spec,
    source_digest,
)
from hubbench.plan.quality import CORPORA, check_quality
from hubbench.plan.runfields import (
    DEVICE_MEASURE,
    RUN_FIELDS,
    Measure,
    gpu_timing_problem,
    run_defaults,
)
from hubbench.plan.suite import Plan, Suite
from hubbench.plan.variants import (
    REGISTRY,
    BaseConfig,
    check_length,
    config_fields,
    inert_fields,
    is_plugin,
    make_config,
)

Fail = Callable[[str, Iterable[str]], SuiteError]  # (message, the fields to blame) -> error


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
    device_axis = overrides.get("device") or suite.axes.get("device")
    origin = device_axis.origin if device_axis else str(suite.path)
    cuda = probe_cuda() if cuda_available is None else cuda_available
    plan = Plan(suite, cells=[], excluded=[], merged=0, varying=())
    seen: set[str] = set()
    for device in _devices(device_axis.values if device_axis else ("auto",), origin, cuda):
        axes, settings = _device_axes(suite, device, origin, overrides, measure or {})
        names = list(axes)
        for combo in itertools.product(*(axes[n].values for n in names)):
            _add(plan, seen, dict(zip(names, combo, strict=True)), axes, settings)
    if not plan.cells:
        n = len(plan.excluded)
        why = f"; {n} excluded by the suite's [[exclude]] rules" if n else ""
        raise SuiteError(f"{suite.path}: the sweep has no cells to run{why}")
    plan.varying = tuple(schema.varying([c.explicit_identity for c in plan.cells], nulls=False))
    return plan


def _devices(names: Iterable[str], origin: str, cuda: bool) -> list[str]:
    """The devices named, resolved (`auto`: cuda where there is one, else cpu), each once."""
    resolved = []
    for name in names:
        try:
            resolved.append(("cuda" if cuda else "cpu") if name == "auto" else resolve_device(name))
        except ConfigError as exc:
            raise SuiteError(f"{origin}: {exc}") from None
    return list(dict.fromkeys(resolved))


def _device_axes(
    suite: Suite,
    device: str,
    origin: str,
    overrides: Mapping[str, Axis],
    measure: Mapping[str, Any],
) -> tuple[dict[str, Axis], Measure]:
    """The axes and measure settings of the cells on `device`: the suite's, its overlay for the
    device kind, then the command line's."""
    kind = device_kind(device)
    axes = {**suite.axes, **suite.device_axes.get(kind, {}), **overrides}
    axes["device"] = Axis("device", (device,), origin)
    given = {**suite.measure, **suite.device_measure.get(kind, {}), **measure}
    settings = dataclasses.replace(DEVICE_MEASURE[kind], **given)
    if 0 < settings.warmup_max_s < settings.warmup_min_s:
        raise SuiteError(
            f"{suite.path}: warmup_max_s={settings.warmup_max_s:g} is below "
            f"warmup_min_s={settings.warmup_min_s:g}"
        )
    if "variant" not in axes:
        raise SuiteError(f"{suite.path}: no variant given; set defaults.variant or sweep.variant")
    if "seq" not in axes:
        raise SuiteError(f"{suite.path}: no seq given; set defaults.seq or sweep.seq")
    return axes, settings


def _add(
    plan: Plan, seen: set[str], fields: dict[str, Any], axes: Mapping[str, Axis], settings: Measure
) -> None:
    """One combination of the axes: a new cell of `plan`, an excluded one, or a merged one."""
    exclude = plan.suite.exclude
    try:
        cell = _make_cell(len(plan.cells), fields, axes, settings, plan.suite)
    except SuiteError:
        # a combination an [[exclude]] rule names by its fields as written (vocab 64 with task
        # bytes) is excluded, not an error, even though it cannot be built
        raw = {**run_defaults(), **fields}
        rule = next((r for r in exclude if r.matches(raw)), None)
        if rule is None:
            raise
        plan.excluded.append((raw, rule.reason))
        return
    if cell.cell_id in seen:
        plan.merged += 1
        return
    seen.add(cell.cell_id)
    identity = cell.identity
    rule = next((r for r in exclude if r.matches(identity)), None)
    if rule is not None:
        plan.excluded.append((identity, rule.reason))
        return
    plan.cells.append(cell)


def _make_cell(
    index: int, fields: dict[str, Any], axes: Mapping[str, Axis], settings: Measure, suite: Suite
) -> Cell:
    """One cell, its run fields and config checked; a SuiteError naming the fields at fault."""
    run = {**run_defaults(), **{k: v for k, v in fields.items() if k in RUN_FIELDS}}

    def fail(message: str, keys: Iterable[str]) -> SuiteError:
        origins = sorted({axes[k].origin for k in keys if k in axes and axes[k].origin})
        where = "; ".join(origins) or str(suite.path)
        return SuiteError(f"{where}: cell {run['variant']} n={run['seq']}: {message}")

    _check_run(run, fail)
    config = _config(run, fields, fail)
    _check_mode(run, config, fail)
    run["data_digest"] = _data_digest(run)
    if run["mode"] == "quality":
        settings = dataclasses.replace(settings, rounds=1)  # one training run is the cell
    return Cell(index=index, config=config, measure=settings, **{k: run[k] for k in RUN_FIELDS})


def _data_digest(run: Mapping[str, Any]) -> str | None:
    """12 hex digits of sha256 over a bytes cell's data file (checked readable by now), as
    plug-in code is digested: seeds trained on an edited file are another cell, never pooled
    with the old ones by --resume. None for a named corpus and where `data` is inert."""
    if run["mode"] != "quality" or str(run["task"]).startswith("mqar"):
        return None
    if run["data"] in CORPORA:
        return None
    digest = hashlib.sha256()
    with open(run["data"], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _check_run(run: Mapping[str, Any], fail: Fail) -> None:
    """The run fields alone: a known variant and mode, counts of at least one."""
    variant, mode = run["variant"], run["mode"]
    if variant not in REGISTRY:
        raise fail(f"unknown variant {variant!r}; valid: {', '.join(REGISTRY)}", ["variant"])
    if mode not in MODES:
        raise fail(f"unknown mode {mode!r}; valid: {', '.join(MODES)}", ["mode"])
    quality = mode == "quality"
    checked = ("batch", "seq", "threads", "nproc", "nnodes")
    checked += ("decode_tokens",) * (mode == "decode")
    checked += ("train_updates",) * quality + ("kv_pairs",) * (quality and run["task"] == "mqar")
    for key in checked:
        if run[key] < 1:
            raise fail(f"{key} must be >= 1 (got {run[key]})", [key])


def _config(run: Mapping[str, Any], fields: Mapping[str, Any], fail: Fail) -> BaseConfig:
    """The variant's config from the fields it has, validated, its length checked against seq."""
    variant = run["variant"]
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
    return config


def _plugin_options(given: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    """A plug-in cell's options: mixer_options (JSON) updated by the option axes it has."""
    info = mixer_info(str(given["mixer"]))
    values = decode_options(str(given.get("mixer_options", "{}")))
    values.update({k: v for k, v in fields.items() if k in info.options})
    info.check_options(values, "mixer_options")
    return encode_options(info.complete(values))


def _check_mode(run: Mapping[str, Any], config: BaseConfig, fail: Fail) -> None:
    """What the mode asks of the run and the model: inference modes run uncompiled and causal,
    decode steps whole chunks, quality needs a task it can lay out, torchrun times plain steps."""
    mode, quality = run["mode"], run["mode"] == "quality"
    problem = gpu_timing_problem(run)
    if problem is not None:
        raise fail(*problem)
    if mode in INFERENCE_MODES:
        if run["compile"]:
            raise fail(f"mode {mode} does not run compiled (compile=true)", ["compile"])
        if not getattr(config, "causal", True):
            raise fail(f"mode {mode} needs a causal model (causal=false)", ["causal"])
        chunk = None if "chunk" in inert_fields(config) else getattr(config, "chunk", None)
        if mode == "decode" and chunk and run["decode_tokens"] % chunk:
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
    for key in ("nproc", "nnodes"):
        if run[key] > 1 and (quality or run["compile"]):
            what = "mode quality" if quality else "compile=true"
            raise fail(f"{key}={run[key]} runs the timed step under torchrun; {what} does not "
                       f"(use {key}=1)", [key])  # fmt: skip
