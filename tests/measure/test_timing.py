"""Timing loop, step-time statistics, memory and MFU, on a tiny stand-in model.

The stand-in (builders.TinyLM) is also the worker's builder in test_runner.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from builders import build_tiny
from torch import nn

from hubbench import schema
from hubbench.measure.memory import rss_bytes
from hubbench.measure.metrics import RoundResult, measurement_columns
from hubbench.measure.step import build_step
from hubbench.measure.timing import (
    Group,
    measure_step,
    time_calls,
    warmup_estimate_s,
)
from hubbench.plan.variants import make_config
from hubbench.stats import summarize


def tiny(attention: str = "sdpa") -> nn.Module:
    config = make_config("transformer", vocab=32, d_model=16, n_heads=2, attention=attention)
    return build_tiny("transformer", config)


# ----------------------------------------------------------------------------- statistics


def test_summarize_matches_numpy_percentiles() -> None:
    np = pytest.importorskip("numpy")
    samples = [0.5, 0.1, 0.3, 0.2, 0.4, 0.9, 0.25]
    s = summarize(samples)
    assert s.median == pytest.approx(np.median(samples))
    assert s.p10 == pytest.approx(np.percentile(samples, 10))
    assert s.p90 == pytest.approx(np.percentile(samples, 90))
    assert s.mean == pytest.approx(np.mean(samples))
    assert s.std == pytest.approx(np.std(samples, ddof=1))
    assert (s.min, s.count) == (0.1, 7)
    one = summarize([2.0])
    assert (one.median, one.p10, one.p90, one.std) == (2.0, 2.0, 2.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])


def test_time_calls_counts_and_min_time() -> None:
    calls = []
    samples = time_calls(lambda: calls.append(1), repeats=4)
    assert len(samples) == len(calls) == 4 and all(s >= 0 for s in samples)

    def sleepy() -> None:
        import time

        time.sleep(0.002)

    longer = time_calls(sleepy, repeats=2, min_time_s=0.02)
    assert sum(longer) >= 0.02  # kept timing until min_time_s was reached ...
    assert len(longer) == 2 or sum(longer[:-1]) < 0.02  # ... and not a call longer


# ----------------------------------------------------------------------------- measure_step


def test_measure_step_records_samples_backend_flops_and_memory() -> None:
    model = tiny()
    step = build_step(model, "fwd_bwd", 2, 64)
    m = measure_step(step, warmup=2, repeats=3)
    assert len(m.samples) == m.stats.count == 3
    assert m.tokens == 128
    assert m.backends == {"attention": "sdpa:test"}
    assert m.flops_per_step and m.flops_per_step > 0
    assert m.warmup_s > 0
    if rss_bytes() is not None:  # Linux
        assert m.mem_kind == "cpu_rss" and m.peak_mem_bytes is not None
        assert m.mem_baseline_bytes and m.mem_baseline_bytes > 0

    def columns(analytic: float | None, peak: float | None) -> dict:
        result = RoundResult(
            samples_s=m.samples, tokens=m.tokens, warmup_s=m.warmup_s,
            warmup_steps=m.warmup_steps, warmup_capped=m.warmup_capped, sentinel_s=None,
            peak_mem_bytes=m.peak_mem_bytes, peak_mem_reserved_bytes=None, mem_kind=m.mem_kind,
            mem_baseline_bytes=m.mem_baseline_bytes, flops_per_step=m.flops_per_step,
            flops_per_step_analytic=analytic, peak_flops_per_s=peak, peak_flops_source="t",
            params=1, backends=m.backends,
        )  # fmt: skip
        return measurement_columns([result], "test")

    d = columns(model.flops_analytic(2, 64, "fwd_bwd"), 1e12)
    assert set(d) == set(schema.names("measurement"))
    assert d["tokens_per_s"] == pytest.approx(128 / m.stats.median)
    assert d["tokens_per_s_p10"] <= d["tokens_per_s"] <= d["tokens_per_s_p90"]
    assert d["mfu_basis"] == "analytic"
    assert d["achieved_flops_per_s"] == pytest.approx(3e6 * 128 / m.stats.median)
    assert d["mfu"] == pytest.approx(d["achieved_flops_per_s"] / 1e12)
    assert d["samples_s"] == m.samples and d["time_count"] == 3
    assert columns(None, None)["mfu"] is None
    assert columns(None, None)["mfu_basis"] == "counted"


def test_warmup_zero_still_counts_outside_the_timed_region() -> None:
    calls = []
    step = build_step(tiny(), "fwd", 1, 16)
    inner = step.fn
    step.fn = lambda: (calls.append(1), inner())[-1]
    m = measure_step(step, warmup=0, repeats=2)
    assert len(calls) == 3  # one counted untimed step, two timed
    assert m.flops_per_step and m.flops_per_step > 0
    calls.clear()
    measure_step(step, warmup=3, repeats=2)
    assert len(calls) == 5  # the counted step is the first of the three warm-up steps


def test_a_group_takes_rank_0s_steps_and_each_steps_slowest_time() -> None:
    """Under torchrun every rank runs measure_step in a Group (hubbench.measure.ranks): its loops
    go by rank 0's decisions, and a timed step lasts as long as its slowest rank's."""
    asked: list[int] = []
    answers = iter([1, 0])  # rank 0: warm after `warmup` steps; no timed steps past `repeats`
    mine: list = []

    def agree(value: int) -> int:
        asked.append(value)
        return next(answers)

    def gather(value: tuple) -> list:
        mine.append(value)
        samples, peak, reserved = value
        return [value, ([2 * t for t in samples], None if peak is None else peak + 1, reserved)]

    step = build_step(tiny(), "fwd", 1, 16)
    m = measure_step(step, warmup=2, warmup_min_s=60.0, warmup_max_s=60.0, repeats=3,
                     min_time_s=60.0, count=False, group=Group(0, 2, agree, gather))  # fmt: skip
    assert asked == [0, 1]  # alone, this process would have warmed up and timed for minutes
    assert (m.warmup_steps, m.stats.count) == (2, 3)
    samples, peak, _ = mine[0]
    assert m.samples == [2 * t for t in samples]  # the other rank was slower at every step
    assert m.peak_mem_bytes == (None if peak is None else peak + 1)


def in_a_fresh_process(code: str) -> list[str]:
    """What `code` prints, run in a process of its own: in this one, glibc may already hold freed
    pages from earlier tests and serve a test's allocations from them, so its resident peak would
    not grow. Linux only (/proc)."""
    if rss_bytes() is None:
        pytest.skip("needs /proc")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.slow  # a fresh process
def test_peak_memory_grows_with_activations() -> None:
    code = (
        "from hubbench.measure.timing import measure_step;"
        "from hubbench.measure.step import build_step;"
        "from hubbench.models import build_model;"
        "tiny = lambda: build_model('transformer', attention='naive', d_model=32, n_heads=2,"
        " n_layers=1);"
        "m = lambda n: measure_step(build_step(tiny(), 'fwd_bwd', 1, n), repeats=2).peak_mem_bytes;"
        "print(m(64), m(2048))"
    )
    small, big = map(int, in_a_fresh_process(code))
    # 2048^2 fp32 scores, softmax and mask saved for backward: many MiB more than at n = 64
    assert big - small > 8 * 2**20


@pytest.mark.slow  # a fresh process
def test_extra_peak_rss_sees_a_transient_allocation() -> None:
    # the 64 MiB are freed before fn returns, so only a peak (not the RSS after) can see them
    code = (
        "import torch\nfrom hubbench.measure.memory import extra_peak_rss\n"
        "def f():\n t = torch.ones(16 * 2**20); t.add_(1); del t\n"
        "print(*extra_peak_rss(f))"
    )
    extra, method = in_a_fresh_process(code)
    assert method in ("clear_refs/VmHWM", "ru_maxrss")
    assert 60 * 2**20 < int(extra) < 200 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_step_on_cuda() -> None:
    step = build_step(tiny(), "fwd_bwd", 2, 128, "cuda")
    m = measure_step(step, warmup=2, repeats=3)
    assert m.mem_kind == "cuda_allocated" and m.peak_mem_bytes > 0
    assert m.peak_mem_reserved_bytes >= m.peak_mem_bytes
    assert len(m.samples) == 3 and all(s > 0 for s in m.samples)


class _Clock:
    """A fake perf_counter the fake steps below advance."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _steps(clock: _Clock, durations):
    it = iter(durations)

    def run() -> None:
        clock.now += next(it)

    return run


def test_warm_up_runs_until_step_times_settle(monkeypatch) -> None:
    from hubbench.measure import timing as measure

    clock = _Clock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    # a slow start, then steady 10 ms steps: settled once two windows of 3 agree
    run = _steps(clock, [0.1, 0.05, 0.03, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01] + [0.01] * 50)
    w = measure.warm_up(run, steps=2, min_s=0.0, max_s=10.0)
    assert (w.steps, w.capped) == (8, False)  # windows (.01 .01 .03) and (.01 .01 .01)
    # a minimum time keeps it going past the settled point
    clock.now = 0.0
    w = measure.warm_up(_steps(clock, [0.01] * 100), steps=2, min_s=0.2, max_s=10.0)
    assert w.steps == 20 and not w.capped
    # never settling: stopped by max_s and recorded as capped
    clock.now = 0.0
    w = measure.warm_up(_steps(clock, [0.1, 0.2] * 50), steps=2, min_s=0.0, max_s=1.0)
    assert w.capped and 1.0 <= w.seconds < 1.3
    # max_s = 0: exactly `steps` steps, no stability rule
    clock.now = 0.0
    w = measure.warm_up(_steps(clock, [0.3] * 5), steps=3, min_s=0.0, max_s=0.0)
    assert (w.steps, w.capped) == (3, False)


@pytest.mark.parametrize(
    ("step", "steps", "min_s", "max_s"),
    [
        (0.1, 2, 0.0, 0.0),  # max_s 0: exactly `steps` steps
        (0.01, 1, 0.0, 1.0),  # settled after two windows
        (0.01, 1, 0.5, 1.0),  # ... held to min_s
        (0.4, 1, 0.0, 1.0),  # capped by max_s before two windows
        (2.0, 2, 0.0, 1.0),  # steps longer than max_s: `steps` of them
    ],
)
def test_the_warmup_estimate_is_what_warm_up_takes_on_steady_steps(
    monkeypatch, step: float, steps: int, min_s: float, max_s: float
) -> None:
    from hubbench.measure import timing as measure

    clock = _Clock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    w = measure.warm_up(_steps(clock, [step] * 200), steps=steps, min_s=min_s, max_s=max_s)
    # warm_up stops at the first step boundary past its limits: within one step of the estimate
    estimate = warmup_estimate_s(step, steps=steps, min_s=min_s, max_s=max_s)
    assert estimate <= w.seconds + 1e-9 < estimate + step


def test_sentinel_times_a_fixed_workload() -> None:
    from hubbench.measure.timing import sentinel_s

    first, second = sentinel_s(), sentinel_s()
    assert 0 < first < 1 and 0 < second < 1
