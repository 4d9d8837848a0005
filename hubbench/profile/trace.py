"""Trace the one step: one torch.profiler trace for TensorBoard and Perfetto, then its summary.

Tracing wraps `Step.fn` from `hubbench.measure.step.build_step`, the same step and inputs the
runner times, under a wait / warm-up / active schedule; there is no second training or timing
loop here. Each active step is a `ProfilerStep#N` range (from `prof.step()`), and that range is
the step time.

Output layout under `out_dir` (the directory to pass to `tensorboard --logdir`):
    <out_dir>/<run>/<worker>.<span>.pt.trace.json.gz   written by tensorboard_trace_handler; the
                                                       torch-tb-profiler plugin lists one run per
                                                       dir. The same file opens as is in
                                                       ui.perfetto.dev and chrome://tracing
                                                       (gzipped Chrome trace JSON)
    <out_dir>/<run>.memory.html                        with memory=True: the memory timeline
The trace is stored once, gzipped (hub-gpt at n = 512: 1.1 MB for 19 MB of JSON); no viewer
needs a second copy.
Re-profiling the same run adds a span next to the old one (the plugin offers a span selector); the
memory timeline is the latest. The trace is read back by hubbench.profile.analyse.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import ConfigError, ReportError
from hubbench.plan.fields import MODES
from hubbench.plan.variants import BaseConfig, config_dict, get_spec
from hubbench.profile.analyse import TraceSummary, analyse_trace

if TYPE_CHECKING:
    import torch

    from hubbench.measure.step import Step

TRACE_SUFFIX = ".pt.trace.json"


# ----------------------------------------------------------------------------- results


@dataclass
class TraceFiles:
    trace: Path  # <out_dir>/<run>/<worker>.<span>.pt.trace.json.gz: TensorBoard, Perfetto
    memory: Path | None  # <out_dir>/<run>.memory.html when asked for and exportable
    notes: list[str] = field(default_factory=list)


@dataclass
class ProfileResult:
    variant: str
    mode: str
    batch: int
    seq: int
    device: str
    run_name: str
    out_dir: Path  # the TensorBoard logdir
    trace_path: Path  # <out_dir>/<run>/<worker>.<span>.pt.trace.json.gz, for every viewer
    memory_path: Path | None
    summary: TraceSummary
    notes: list[str] = field(default_factory=list)  # non-fatal problems worth printing


# ----------------------------------------------------------------------------- tracing


def run_name(
    variant: str, fields: Mapping[str, Any], mode: str, batch: int, seq: int, device: str
) -> str:
    """A readable, filesystem-safe run directory name that differs between distinct cells."""
    parts = [variant, mode, f"b{batch}", f"n{seq}", str(device).replace(":", "")]
    parts += [f"{key}={fields[key]}" for key in sorted(fields)]
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))


def trace_step(
    step: Step,
    out_dir: str | Path,
    name: str,
    *,
    active: int = 3,
    wait: int = 1,
    warmup: int = 1,
    memory: bool = False,
) -> TraceFiles:
    """Run `step.fn` wait + warmup + active times under torch.profiler; write the traces."""
    if active < 1 or wait < 0 or warmup < 0:
        raise ConfigError(
            f"profile schedule needs steps >= 1, wait/warmup >= 0 "
            f"(got steps={active}, wait={wait}, warmup={warmup})"
        )
    # Kineto prints USDT start/stop lines on every trace unless its level is above them; the
    # user's own setting wins (KINETO_LOG_LEVEL=0 shows everything).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    out_dir = Path(out_dir)
    run_dir = out_dir / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create trace directory {run_dir}: {exc.strerror}") from exc
    before = set(run_dir.glob(f"*{TRACE_SUFFIX}*"))
    prof = _profile(step, run_dir, (wait, warmup, active), memory)
    written = sorted(set(run_dir.glob(f"*{TRACE_SUFFIX}*")) - before)
    if not written:
        raise ReportError(f"the profiler wrote no trace into {run_dir}")
    if not memory:
        return TraceFiles(written[-1], None)
    memory_path = out_dir / f"{name}.memory.html"
    note = _memory_timeline(prof, memory_path, step.device)
    return TraceFiles(written[-1], None if note else memory_path, [note] if note else [])


def _profile(step: Step, run_dir: Path, plan: tuple[int, int, int], memory: bool) -> Any:
    """The profiler after `step` ran under its (wait, warmup, active) schedule; the trace of the
    active steps is in `run_dir`."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    wait, warmup, active = plan
    activities = [ProfilerActivity.CPU]
    if step.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(
        activities=activities,
        schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(run_dir), use_gzip=True),
        record_shapes=True,
        profile_memory=memory,
        with_stack=memory,  # the memory timeline needs stacks; they bloat the trace otherwise
    ) as prof:
        for _ in range(wait + warmup + active):
            step.fn()
            step.sync()
            prof.step()
    return prof


def _memory_timeline(prof: Any, path: Path, device: torch.device) -> str | None:
    """Write the memory timeline's HTML to `path`; a note on why not, or None."""
    where = "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated in torch, still the only HTML view
            prof.export_memory_timeline(str(path), device=where)
    except Exception as exc:  # the timeline is a bonus; the trace is the product
        return f"memory timeline not written ({type(exc).__name__}: {exc})"
    return None


def profile_cell(
    variant: str,
    config: BaseConfig,
    *,
    mode: str = "train",
    batch: int = 1,
    seq: int = 1024,
    device: str = "cpu",
    out_dir: str | Path = "traces",
    steps: int = 3,
    warmup: int = 1,
    memory: bool = False,
    compile: bool = False,
    seed: int = 0,
    decode_tokens: int = 64,
    top: int = 15,
    name: str | None = None,
) -> ProfileResult:
    """Build the cell's model and step exactly as the runner does, trace it, and summarise.

    `config` is the variant's validated config. The profiler skips one step, warms up for
    `warmup`, then records `steps` steps (decode: a step generates `decode_tokens` tokens,
    where a results row's step is one). Raises ConfigError for a bad mode, UnavailableError
    for a missing device.
    """
    from hubbench.measure.step import build_step
    from hubbench.models import build

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    model = build(variant, config)
    step = build_step(model, mode, batch, seq, device, seed=seed, compile=compile,
                      decode_tokens=decode_tokens)  # fmt: skip
    changed = _changed_fields(variant, config)
    name = name or run_name(variant, changed, mode, batch, seq, device)
    files = trace_step(step, out_dir, name, active=steps, warmup=warmup, memory=memory)
    summary = analyse_trace(files.trace, top=top)
    if not summary.labels:
        files.notes.append(
            "no stage labels in the trace: the model emits no record_function ranges"
        )
    return ProfileResult(
        variant=variant,
        mode=mode,
        batch=batch,
        seq=seq,
        device=str(step.device),
        run_name=name,
        out_dir=Path(out_dir),
        trace_path=files.trace,
        memory_path=files.memory,
        summary=summary,
        notes=files.notes,
    )


def _changed_fields(variant: str, config: BaseConfig) -> dict[str, Any]:
    """The config fields that differ from the variant's defaults (they name the trace run)."""
    defaults = config_dict(get_spec(variant).config_cls())
    return {k: v for k, v in config_dict(config).items() if defaults.get(k) != v}
