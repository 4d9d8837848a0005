"""Profile the one step: one torch.profiler trace for TensorBoard and Perfetto; where time goes.

Tracing wraps `Step.fn` from `hubbench.measure.step.build_step`, the same step and inputs the
runner times,
under a wait / warm-up / active schedule; there is no second training or timing loop here. Each
active step is a `ProfilerStep#N` range (from `prof.step()`), and that range is the step time.

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
memory timeline is the latest.

Stage attribution, computed from the trace events (not from `key_averages`, which counts a nested
range in every enclosing row):
- Nodes are the record_function ranges named in `STAGES`, torch's own `Optimizer.step#...` range
  and autograd's `autograd::engine::evaluate_function: ...` range (one backward node each).
- A node owns its exclusive time: its duration minus the nodes nested in it. So `hubrouter` shows
  only the glue around its `hub.*` stages, and nothing is counted twice. Inside an opaque stage
  (`moe`) nested labels belong to it: the experts' `mlp` ranges are MoE time.
- A backward node is charged to the stage of the forward op that created it (matched by autograd
  sequence number), and shown in a separate backward column; so `attention` includes its own
  backward.
- `other` is the step time that no node covers (zero_grad, norms and residual adds outside the
  labels, Python glue), measured as the step minus the union of node intervals. Rows add up to
  the step only if no time is counted twice; the tests check exactly that.
On CUDA the shares use device time instead: kernels are charged to the stage whose CPU range
launched them (by correlation id), `other` holds unlabelled kernels and `idle` the device gaps.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import ConfigError, ReportError
from hubbench.plan.fields import MODES
from hubbench.plan.variants import BaseConfig, config_dict, get_spec

if TYPE_CHECKING:
    from hubbench.measure.step import Step

# record_function labels the models and mixers emit, in display order. Unknown labels are
# transparent: their time goes to the nearest enclosing known label.
STAGES: tuple[str, ...] = (
    "embed",
    "attention",
    "mamba",
    "hubrouter",
    "hub.encode",
    "hub.decode",
    "hub.select",
    "hub.council",
    "mixer",  # a plug-in mixer (hubbench.plan.plugins)
    "mlp",
    "moe",
    "lm_head",
    "loss",
)
OPAQUE_STAGES = frozenset({"moe"})  # nested labels inside count as this stage
OPTIMIZER = "optimizer"
OTHER = "other"
IDLE = "idle"  # CUDA only: step time with no kernel running
STEP_PREFIX = "ProfilerStep#"
OPTIMIZER_PREFIX = "Optimizer.step#"
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
TRACE_SUFFIX = ".pt.trace.json"

_CPU_CATS = frozenset({"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver"})
_KERNEL_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
_LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver"})
_NODE_KINDS = frozenset({"stage", "optimizer", "backward"})
_US = 1e-6  # trace timestamps are microseconds


# ----------------------------------------------------------------------------- results


@dataclass
class StageRow:
    """One stage, per step on average. `*_backward_s` is the part spent in its backward."""

    name: str
    cpu_s: float = 0.0
    cpu_backward_s: float = 0.0
    device_s: float = 0.0
    device_backward_s: float = 0.0


@dataclass
class OpRow:
    """One operator name, per step on average; `shape` is its heaviest input-dims group."""

    name: str
    calls: float = 0.0
    self_s: float = 0.0
    total_s: float = 0.0
    self_device_s: float = 0.0
    shape: str = ""


@dataclass
class TraceSummary:
    steps: int  # ProfilerStep ranges found
    step_s: float  # mean ProfilerStep duration
    basis: str  # "cpu" or "cuda": which time the shares and `other` use
    stages: list[StageRow]  # known stages seen, then optimizer, other (and idle on CUDA)
    ops: list[OpRow]  # top operators by self CPU time
    device_ops: list[OpRow]  # top operators by self device time (CUDA only)
    labels: list[str]  # known stage labels present in the trace
    peak_mem_bytes: dict[str, int] = field(default_factory=dict)  # with profile_memory

    def stage_time(self, row: StageRow) -> float:
        return row.device_s if self.basis == "cuda" else row.cpu_s

    def share(self, row: StageRow) -> float:
        return self.stage_time(row) / self.step_s if self.step_s > 0 else 0.0

    def total(self) -> float:
        """Sum of the stage rows on the share basis; equals `step_s` when nothing is doubled."""
        return sum(self.stage_time(row) for row in self.stages)


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
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

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

    written = sorted(set(run_dir.glob(f"*{TRACE_SUFFIX}*")) - before)
    if not written:
        raise ReportError(f"the profiler wrote no trace into {run_dir}")
    trace = written[-1]

    notes: list[str] = []
    memory_path = None
    if memory:
        memory_path = out_dir / f"{name}.memory.html"
        device = "cpu" if step.device.type == "cpu" else f"cuda:{step.device.index or 0}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated in torch, still the only HTML view
                prof.export_memory_timeline(str(memory_path), device=device)
        except Exception as exc:  # the timeline is a bonus; the trace above is the product
            notes.append(f"memory timeline not written ({type(exc).__name__}: {exc})")
            memory_path = None
    return TraceFiles(trace, memory_path, notes)


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


# ----------------------------------------------------------------------------- trace analysis


@dataclass(eq=False)
class _Event:
    name: str
    cat: str
    ts: float  # µs
    end: float
    args: dict[str, Any]
    kind: str  # step | stage | optimizer | backward | op | launch | annotation
    parent: _Event | None = None
    node: _Event | None = None  # innermost enclosing node (itself when a node)
    child_us: float = 0.0  # time covered by direct children (for self time)
    node_child_us: float = 0.0  # time covered by the nearest nested nodes (for exclusive time)
    in_backward: bool = False
    stage: str | None = None  # nodes only


def load_trace(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            data = json.load(f)
    except OSError as exc:
        raise ReportError(f"cannot read trace {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ReportError(f"trace {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ReportError(f"trace {path} has no traceEvents list; is it a Chrome trace?")
    return data


def _kind(name: str, cat: str) -> str:
    if cat in _LAUNCH_CATS:
        return "launch"
    if cat == "user_annotation":
        if name.startswith(STEP_PREFIX):
            return "step"
        if name in STAGES:
            return "stage"
        if name.startswith(OPTIMIZER_PREFIX):
            return "optimizer"
        return "annotation"
    return "backward" if name.startswith(BACKWARD_PREFIX) else "op"


def _nest(events: list[_Event]) -> None:
    """Link one thread's events (sorted by start, longest first) to parents and nodes."""
    stack: list[_Event] = []
    for e in events:
        while stack and e.ts >= stack[-1].end:
            stack.pop()
        parent = stack[-1] if stack else None
        e.parent = parent
        outer = parent.node if parent else None
        if parent is not None:
            parent.child_us += min(e.end, parent.end) - e.ts
            e.in_backward = parent.in_backward
        if e.kind in _NODE_KINDS:
            if outer is not None:
                outer.node_child_us += min(e.end, outer.end) - e.ts
            e.node = e
            e.in_backward = e.in_backward or e.kind == "backward"
            if outer is not None and outer.stage in OPAQUE_STAGES:
                e.stage = outer.stage
            elif e.kind == "stage":
                e.stage = e.name
            elif e.kind == "optimizer":
                e.stage = OPTIMIZER
        else:
            e.node = outer
        stack.append(e)


def _resolve_backward(events: Iterable[_Event]) -> None:
    """Charge each backward node to the stage of the forward op that created it.

    Every op run with grad enabled records the *next* autograd sequence number, and the op that
    creates the node takes it; ops starting after that see the next number. So the creator of
    node s is the last op to start with number s (torch links its fwdbwd flow arrows the same
    way). Numbers are per forward thread; hubbench's forward runs on one thread.
    """
    events = sorted(events, key=lambda e: e.ts)
    seq_stage: dict[Any, str | None] = {}
    for e in events:
        seq = e.args.get("Sequence number")
        if e.kind == "op" and seq is not None and not e.in_backward:
            seq_stage[seq] = e.node.stage if e.node else None
    for e in events:
        if e.kind == "backward" and e.stage is None:
            e.stage = seq_stage.get(e.args.get("Sequence number"))


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def _dims(d: list[Any]) -> str:
    if d and all(isinstance(s, list) for s in d):  # a tensor list, e.g. cat's inputs
        return "(" + ", ".join(_dims(s) for s in d) + ")"
    return "x".join(str(s) for s in d)


def _shape(args: dict[str, Any]) -> str:
    dims = [d for d in args.get("Input Dims", []) if isinstance(d, list) and d]
    return ", ".join(_dims(d) for d in dims)


def _read_events(
    raw: list[dict[str, Any]],
) -> tuple[list[_Event], list[dict[str, Any]], list[dict[str, Any]]]:
    """CPU-side events nested per thread with backward nodes resolved; kernels; memory events."""
    by_thread: dict[tuple[Any, Any], list[_Event]] = defaultdict(list)
    kernels: list[dict[str, Any]] = []
    mem_events: list[dict[str, Any]] = []
    for r in raw:
        cat, ph, name = r.get("cat", ""), r.get("ph"), r.get("name", "")
        if ph == "X" and cat in _CPU_CATS:
            ts, args = float(r["ts"]), r.get("args") or {}
            end = ts + float(r.get("dur", 0.0))
            by_thread[(r.get("pid"), r.get("tid"))].append(
                _Event(name, cat, ts, end, args, _kind(name, cat))
            )
        elif ph == "X" and cat in _KERNEL_CATS:
            kernels.append(r)
        elif name == "[memory]":
            mem_events.append(r)
    events: list[_Event] = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e.ts, -(e.end - e.ts)))
        _nest(thread)
        events += thread
    _resolve_backward(events)
    return events, kernels, mem_events


def analyse_trace(path: str | Path, top: int = 15) -> TraceSummary:
    """Per-stage and per-operator times, per step, from a torch.profiler Chrome trace."""
    all_events, kernels, mem_events = _read_events(load_trace(path)["traceEvents"])
    steps = sorted((e for e in all_events if e.kind == "step"), key=lambda e: e.ts)
    if not steps:
        raise ReportError(
            f"trace {path} has no {STEP_PREFIX}N ranges; it was not written by prof.step()"
        )
    starts = [s.ts for s in steps]

    def step_of(ts: float) -> int | None:
        i = bisect.bisect_right(starts, ts) - 1
        return i if i >= 0 and ts < steps[i].end else None

    n = len(steps)
    step_us = sum(s.end - s.ts for s in steps)
    stages: dict[str, StageRow] = {}
    covered: list[list[tuple[float, float]]] = [[] for _ in steps]
    ops: dict[str, OpRow] = {}
    shape_self: dict[tuple[str, str], float] = defaultdict(float)
    labels: set[str] = set()
    op_of_launch: dict[Any, _Event] = {}

    for e in all_events:
        i = step_of(e.ts)
        if i is None:
            continue
        if e.kind == "stage":
            labels.add(e.name)
        if e.kind in _NODE_KINDS:
            row = stages.setdefault(e.stage or OTHER, StageRow(e.stage or OTHER))
            exclusive = (e.end - e.ts - e.node_child_us) * _US / n
            row.cpu_s += exclusive
            if e.in_backward:
                row.cpu_backward_s += exclusive
            if e.parent is None or e.parent.node is None:
                covered[i].append((max(e.ts, steps[i].ts), min(e.end, steps[i].end)))
        if e.cat == "cpu_op":
            op = ops.setdefault(e.name, OpRow(e.name))
            self_us = e.end - e.ts - e.child_us
            op.calls += 1 / n
            op.self_s += self_us * _US / n
            op.total_s += (e.end - e.ts) * _US / n
            shape_self[(e.name, _shape(e.args))] += self_us
        if e.kind == "launch" and "correlation" in e.args:
            op_of_launch[e.args["correlation"]] = e

    uncovered = (
        sum((s.end - s.ts) - _union_us(c) for s, c in zip(steps, covered, strict=True)) * _US / n
    )
    other = stages.setdefault(OTHER, StageRow(OTHER))
    other.cpu_s += uncovered

    busy_us = _charge_kernels(kernels, op_of_launch, step_of, stages, ops, n)
    basis = "cuda" if kernels else "cpu"
    if basis == "cuda":
        stages[IDLE] = StageRow(IDLE, device_s=max(0.0, step_us - busy_us) * _US / n)

    for (name, shape), _ in sorted(shape_self.items(), key=lambda kv: kv[1]):
        ops[name].shape = shape  # ascending, so the heaviest group is written last
    order = {name: i for i, name in enumerate((*STAGES, OPTIMIZER, OTHER, IDLE))}
    cpu_ops = sorted(ops.values(), key=lambda o: -o.self_s)[:top]
    device_ops = sorted(
        (o for o in ops.values() if o.self_device_s > 0), key=lambda o: -o.self_device_s
    )[:top]
    return TraceSummary(
        steps=n,
        step_s=step_us * _US / n,
        basis=basis,
        stages=sorted(stages.values(), key=lambda r: order.get(r.name, len(order))),
        ops=cpu_ops,
        device_ops=device_ops,
        labels=[s for s in STAGES if s in labels],
        peak_mem_bytes=_peak_memory(mem_events, step_of),
    )


def _charge_kernels(
    kernels: list[dict[str, Any]],
    op_of_launch: dict[Any, _Event],
    step_of: Any,
    stages: dict[str, StageRow],
    ops: dict[str, OpRow],
    n: int,
) -> float:
    """Charge each kernel to the stage and op that launched it; return device busy µs in steps."""
    busy = 0.0
    for k in kernels:
        launch = op_of_launch.get((k.get("args") or {}).get("correlation"))
        if launch is None or step_of(launch.ts) is None:
            continue
        dur = float(k.get("dur", 0.0))
        busy += dur
        stage = launch.node.stage if launch.node and launch.node.stage else OTHER
        row = stages.setdefault(stage, StageRow(stage))
        row.device_s += dur * _US / n
        if launch.in_backward:
            row.device_backward_s += dur * _US / n
        owner = launch.parent
        while owner is not None and owner.cat != "cpu_op":
            owner = owner.parent
        if owner is not None:
            ops.setdefault(owner.name, OpRow(owner.name)).self_device_s += dur * _US / n
    return busy


def _peak_memory(mem_events: list[dict[str, Any]], step_of: Any) -> dict[str, int]:
    """Highest 'Total Allocated' the profiler saw inside the steps, per device type."""
    peak: dict[str, int] = {}
    for r in mem_events:
        args = r.get("args") or {}
        if step_of(float(r.get("ts", 0.0))) is None or "Total Allocated" not in args:
            continue
        device = "cuda" if args.get("Device Type") == 1 else "cpu"
        peak[device] = max(peak.get(device, 0), int(args["Total Allocated"]))
    return peak
