"""Read a torch.profiler trace: where the step's time goes, by stage and by operator.

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
Reading a trace needs neither torch nor the model that wrote it.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubbench.errors import ReportError

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
    "mamba2",  # the field's mixers: the Block labels their kind (hubbench.models.builders)
    "gdn",
    "swa",
    "moba",
    "nsa",
    "oryx",
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


# ----------------------------------------------------------------------------- events


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


@dataclass
class _Steps:
    """The ProfilerStep ranges in time order, and which one a timestamp falls in."""

    ranges: list[_Event]

    def __post_init__(self) -> None:
        self.starts = [s.ts for s in self.ranges]
        self.n = len(self.ranges)
        self.total_us = sum(s.end - s.ts for s in self.ranges)

    def of(self, ts: float) -> int | None:
        i = bisect.bisect_right(self.starts, ts) - 1
        return i if i >= 0 and ts < self.ranges[i].end else None


def analyse_trace(path: str | Path, top: int = 15) -> TraceSummary:
    """Per-stage and per-operator times, per step, from a torch.profiler Chrome trace."""
    events, kernels, mem_events = _read_events(load_trace(path)["traceEvents"])
    steps = _Steps(sorted((e for e in events if e.kind == "step"), key=lambda e: e.ts))
    if not steps.n:
        raise ReportError(
            f"trace {path} has no {STEP_PREFIX}N ranges; it was not written by prof.step()"
        )
    inside = [e for e in events if steps.of(e.ts) is not None]
    stages = _stage_rows(inside, steps)
    ops = _op_rows(inside, steps.n)
    launches = {
        e.args["correlation"]: e for e in inside if e.kind == "launch" and "correlation" in e.args
    }
    busy_us = _charge_kernels(kernels, launches, steps, stages, ops)
    basis = "cuda" if kernels else "cpu"
    if basis == "cuda":
        idle_us = max(0.0, steps.total_us - busy_us)
        stages[IDLE] = StageRow(IDLE, device_s=idle_us * _US / steps.n)
    order = {name: i for i, name in enumerate((*STAGES, OPTIMIZER, OTHER, IDLE))}
    device_ops = [o for o in ops.values() if o.self_device_s > 0]
    labels = {e.name for e in inside if e.kind == "stage"}
    return TraceSummary(
        steps=steps.n,
        step_s=steps.total_us * _US / steps.n,
        basis=basis,
        stages=sorted(stages.values(), key=lambda r: order.get(r.name, len(order))),
        ops=sorted(ops.values(), key=lambda o: -o.self_s)[:top],
        device_ops=sorted(device_ops, key=lambda o: -o.self_device_s)[:top],
        labels=[s for s in STAGES if s in labels],
        peak_mem_bytes=_peak_memory(mem_events, steps),
    )


def _stage_rows(inside: list[_Event], steps: _Steps) -> dict[str, StageRow]:
    """Each node's exclusive CPU time, per step, by stage; `other` is the step time no node
    covers (the step minus the union of the outermost nodes' intervals)."""
    stages: dict[str, StageRow] = {}
    covered: list[list[tuple[float, float]]] = [[] for _ in range(steps.n)]
    for e in inside:
        if e.kind not in _NODE_KINDS:
            continue
        row = stages.setdefault(e.stage or OTHER, StageRow(e.stage or OTHER))
        exclusive = (e.end - e.ts - e.node_child_us) * _US / steps.n
        row.cpu_s += exclusive
        if e.in_backward:
            row.cpu_backward_s += exclusive
        if e.parent is None or e.parent.node is None:
            i = steps.of(e.ts)
            assert i is not None
            step = steps.ranges[i]
            covered[i].append((max(e.ts, step.ts), min(e.end, step.end)))
    uncovered_us = sum(
        (s.end - s.ts) - _union_us(c) for s, c in zip(steps.ranges, covered, strict=True)
    )
    other = stages.setdefault(OTHER, StageRow(OTHER))
    other.cpu_s += uncovered_us * _US / steps.n
    return stages


def _op_rows(inside: list[_Event], n: int) -> dict[str, OpRow]:
    """Calls, self and total CPU time per operator name, per step; `shape` is the input-dims
    group with the most self time."""
    ops: dict[str, OpRow] = {}
    shape_self: dict[tuple[str, str], float] = defaultdict(float)
    for e in inside:
        if e.cat != "cpu_op":
            continue
        op = ops.setdefault(e.name, OpRow(e.name))
        self_us = e.end - e.ts - e.child_us
        op.calls += 1 / n
        op.self_s += self_us * _US / n
        op.total_s += (e.end - e.ts) * _US / n
        shape_self[(e.name, _shape(e.args))] += self_us
    for (name, shape), _ in sorted(shape_self.items(), key=lambda kv: kv[1]):
        ops[name].shape = shape  # ascending, so the heaviest group is written last
    return ops


def _charge_kernels(
    kernels: list[dict[str, Any]],
    launches: dict[Any, _Event],
    steps: _Steps,
    stages: dict[str, StageRow],
    ops: dict[str, OpRow],
) -> float:
    """Charge each kernel to the stage and op that launched it; return device busy µs in steps."""
    busy, n = 0.0, steps.n
    for k in kernels:
        launch = launches.get((k.get("args") or {}).get("correlation"))
        if launch is None:
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


def _peak_memory(mem_events: list[dict[str, Any]], steps: _Steps) -> dict[str, int]:
    """Highest 'Total Allocated' the profiler saw inside the steps, per device type."""
    peak: dict[str, int] = {}
    for r in mem_events:
        args = r.get("args") or {}
        if steps.of(float(r.get("ts", 0.0))) is None or "Total Allocated" not in args:
            continue
        device = "cuda" if args.get("Device Type") == 1 else "cpu"
        peak[device] = max(peak.get(device, 0), int(args["Total Allocated"]))
    return peak
