"""The project's only timing code: warm-up, timed repeats, FLOP counting on the first step
(statistics: hubbench.stats).

Timing. Each sample is one call of the step, from launch to completion; steps never overlap.
CPU: `time.perf_counter` around the call. CUDA: a pair of CUDA events around the call and a
synchronisation after it, so a sample is device time between the events (CPU launch gaps
included when the GPU waits for them). No clock is read inside the step; inputs and optimizer
exist before timing (hubbench.measure.step).

Order for a round of a cell: when FLOPs are to be counted (round 1), the first warm-up step runs
under FlopCounterMode (with warmup = 0 that is one extra untimed step). Then warm-up by time and
stability (`warm_up`): at least `warmup` steps and `warmup_min_s` seconds, until the median of
the last SETTLE_WINDOW step times is within SETTLE_TOLERANCE of the median of the window before
it, and never past `warmup_max_s` (such a warm-up is recorded as unsettled). The backends that
ran are read, peak memory is reset, then `repeats` timed steps (more while their total is under
`min_time_s`).

L2 flush (run field l2_flush, CUDA): before each timed call, untimed, a buffer larger than the
GPU's L2 cache (`l2_flush_bytes`) is written, so every call starts with a cold cache: what a
kernel's first call in a model sees, not what a loop over the same inputs sees (triton#404).
The write is queued before the start event, so the events time the call alone.

Noise sentinel. `sentinel_s` times a fixed small matmul workload; the runner calls it before
each round, so a round that ran while the machine was slow can be told apart afterwards.

Memory over the timed steps: hubbench.measure.memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hubbench.errors import ConfigError
from hubbench.measure.memory import PeakMemory
from hubbench.stats import Stats, median, summarize

MAX_REPEATS = 10_000  # a ceiling for min_time_s on very fast steps
SETTLE_WINDOW = 3  # warm-up steps per window of the stability rule
SETTLE_TOLERANCE = 0.05  # consecutive window medians this close: step times have settled
SENTINEL_SIZE, SENTINEL_CALLS = 192, 100  # about 10 ms of fp32 matmuls on one CPU thread
L2_FALLBACK_BYTES = 256 * 2**20  # the flush buffer where the device does not say its L2 size


@dataclass
class Measurement:
    samples: list[float]
    stats: Stats
    tokens: int
    peak_mem_bytes: int | None
    peak_mem_reserved_bytes: int | None
    mem_kind: str | None
    mem_baseline_bytes: int | None
    flops_per_step: float | None
    warmup_s: float  # wall time of the untimed steps (FLOP counting included)
    warmup_steps: int  # untimed steps (the FLOP-counting one included)
    warmup_capped: bool  # warmup_max_s ran out before the step times settled
    backends: dict[str, str] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.stats.median


def alone(value: int) -> int:
    """One process agrees with itself."""
    return value


def gathered(value: Any) -> list[Any]:
    """One process's values, gathered: its own."""
    return [value]


@dataclass(frozen=True)
class Group:
    """The processes that time one step together: torchrun's ranks (hubbench.measure.ranks), or
    one process alone (ALONE). Every decision of the loops below is `agree`d, so all of them take
    the same steps (collectives need it); `gather` collects a value from each, in rank order."""

    rank: int = 0
    world: int = 1
    agree: Callable[[int], int] = alone  # rank 0's value on every rank
    gather: Callable[[Any], list[Any]] = gathered


ALONE = Group()


def time_calls(
    fn: Callable[[], Any],
    *,
    device: Any = None,
    repeats: int = 5,
    min_time_s: float = 0.0,
    agree: Callable[[int], int] = alone,
    before: Callable[[], Any] | None = None,
) -> list[float]:
    """Seconds per call of `fn`: `repeats` calls, more while their sum is under `min_time_s`
    (`agree`d after each call past `repeats`: Group). `before` runs ahead of each call, outside
    the timed region (the L2 flush)."""
    cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
    samples: list[float] = []

    def more() -> bool:
        if len(samples) < repeats:
            return True
        return bool(agree(int(sum(samples) < min_time_s and len(samples) < MAX_REPEATS)))

    if cuda:
        import torch

        torch.cuda.synchronize(device)
        while more():
            if before is not None:
                before()  # queued ahead of the start event: not timed
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return samples
    clock = time.perf_counter
    while more():
        if before is not None:
            before()
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return samples


def l2_flush_bytes(device: Any) -> int:
    """The flush buffer for `device`: twice its L2 cache (torch.cuda.get_device_properties), or
    L2_FALLBACK_BYTES where the size is not reported."""
    import torch

    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
    return 2 * int(l2) if l2 > 0 else L2_FALLBACK_BYTES


def l2_flusher(device: Any, size: int | None = None) -> tuple[Callable[[], None], int]:
    """A call that writes a buffer larger than `device`'s L2 (`size` bytes, else
    l2_flush_bytes), and the buffer's bytes: each call timed after it starts with a cold cache.
    CUDA only: a CPU's caches are not the GPU's L2, and nothing here can flush them honestly."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        raise ConfigError(f"l2_flush=true flushes a GPU's L2 cache; device {device} has none")
    size = size or l2_flush_bytes(device)
    buffer = torch.empty(size, dtype=torch.int8, device=device)

    def flush() -> None:
        buffer.zero_()

    return flush, size


@dataclass
class Warmup:
    steps: int
    seconds: float
    capped: bool  # stopped by max_s before the step times settled


def settled(times: list[float]) -> bool:
    """Whether the last two windows of step times have medians within SETTLE_TOLERANCE."""
    w = SETTLE_WINDOW
    if len(times) < 2 * w:
        return False
    last, before = median(times[-w:]), median(times[-2 * w : -w])
    return abs(last / before - 1) <= SETTLE_TOLERANCE


def warm_up(
    run: Callable[[], Any],
    *,
    steps: int,
    min_s: float,
    max_s: float,
    done: int = 0,
    agree: Callable[[int], int] = alone,
) -> Warmup:
    """Call `run` (one synced step) until the rule of the module docstring says it is warm
    (`agree`d after each step past `steps`: Group).

    `done` steps already ran (the FLOP-counting one); they count towards `steps`, not towards
    the stability windows, since counting slows a step.
    """
    start = time.perf_counter()
    times: list[float] = []
    count = done
    while True:
        elapsed = time.perf_counter() - start
        steady = max_s <= 0 or settled(times)  # max_s = 0: exactly `steps` steps, no rule
        warm = elapsed >= max_s or (elapsed >= min_s and steady)
        if count >= steps and agree(int(warm)):
            return Warmup(count, elapsed, capped=not steady)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        count += 1


def warmup_estimate_s(step_s: float, *, steps: int, min_s: float, max_s: float) -> float:
    """About how long `warm_up` runs for steps of `step_s` seconds that settle at once, for the
    runner's time-left estimates: the rule above, met by the fewest steps it can judge."""
    if max_s <= 0:
        return steps * step_s
    judged = max(min_s, 2 * SETTLE_WINDOW * step_s)
    return max(steps * step_s, min(judged, max_s))


def measure_step(
    step: Any,
    *,
    warmup: int = 2,
    warmup_min_s: float = 0.0,
    warmup_max_s: float = 0.0,
    repeats: int = 5,
    min_time_s: float = 0.0,
    count: bool = True,
    mem_baseline: int | None = None,
    group: Group = ALONE,
    l2_flush: bool = False,
) -> Measurement:
    """Warm up (counting FLOPs on the first step), then time `step.fn`; see the module doc.
    `l2_flush`: a cold L2 before each timed call (l2_flusher; CUDA only).

    With warmup_min_s = warmup_max_s = 0 the warm-up is exactly `warmup` steps. A `group` of
    processes (torchrun's ranks) takes the same steps, as rank 0 decides; each timed step's time
    is the slowest process's, the peak memory the largest; the rest is this process's.
    """
    from hubbench.measure.flops import count_flops

    flops = None
    start = time.perf_counter()
    flush, flush_bytes = l2_flusher(step.device) if l2_flush else (None, 0)
    if count:  # a replayed CUDA graph dispatches nothing FlopCounterMode sees: count the eager call
        eager = getattr(step, "eager", None)
        flops = count_flops(_synced(step) if eager is None else lambda: (eager(), step.sync()))
    warm = warm_up(_synced(step), steps=warmup, min_s=warmup_min_s, max_s=warmup_max_s,
                   done=int(count), agree=group.agree)  # fmt: skip
    warmup_s = time.perf_counter() - start
    model = step.model
    backends = dict(model.backends()) if hasattr(model, "backends") else {}
    backends.update(getattr(step, "ran", None) or {})  # how the step ran (cuda_graphs)

    memory = PeakMemory(step.device, mem_baseline)
    with memory:
        samples = time_calls(step.fn, device=step.device, repeats=repeats, min_time_s=min_time_s,
                             agree=group.agree, before=flush)  # fmt: skip
    # the flush buffer is held over the timed steps but is not the step's memory
    peak, reserved = (
        None if v is None else v - flush_bytes for v in (memory.peak, memory.reserved)
    )
    eager = getattr(step, "eager", None)
    if eager is not None:  # a replayed graph allocates nothing: its temporaries live in the
        # graph's pool, outside the allocated count; the call's memory is the eager call's
        once = PeakMemory(step.device, mem_baseline)
        with once:
            eager()
            step.sync()
        peak, reserved = once.peak, once.reserved
    every = group.gather((samples, peak, reserved))
    samples = [max(times) for times in zip(*(e[0] for e in every), strict=True)]
    return Measurement(
        samples=samples,
        stats=summarize(samples),
        tokens=step.tokens,
        peak_mem_bytes=_largest(e[1] for e in every),
        peak_mem_reserved_bytes=_largest(e[2] for e in every),
        mem_kind=memory.kind,
        mem_baseline_bytes=memory.baseline,
        flops_per_step=flops,
        warmup_s=warmup_s,
        warmup_steps=warm.steps,
        warmup_capped=warm.capped,
        backends=backends,
    )


def sentinel_s() -> float:
    """Seconds for a fixed CPU matmul workload, with the threads the caller has set (best of 3).

    The same work every time: a rise means the machine (other processes, frequency, thermal
    limits) slowed, not the cell.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SENTINEL_SIZE, SENTINEL_SIZE, generator=gen)
    out = torch.empty_like(a)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(SENTINEL_CALLS):
            torch.mm(a, a, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def _largest(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _synced(step: Any) -> Callable[[], None]:
    def run() -> None:
        step.fn()
        step.sync()

    return run
