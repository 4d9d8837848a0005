"""Calibration: fp32 by default, small sides for slow dtypes, and no peak stored from a busy
machine unless forced (then marked busy in the entry and in the peak's source)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hubbench.errors import ConfigError
from hubbench.measure import calibration as cal
from hubbench.measure import timing as measure
from hubbench.measure.calibration import MEMORY_KEY
from hubbench.measure.peaks import peak_bandwidth, peak_flops


def _sentinel(readings: list[float], monkeypatch) -> None:
    """measure.sentinel_s answers these readings in turn, then the last one again."""
    left = list(readings)
    monkeypatch.setattr(measure, "sentinel_s", lambda: left.pop(0) if len(left) > 1 else left[0])


def test_fp32_by_default_saying_what_it_measures_before_it_does(small_calibration: Path) -> None:
    said: list[str] = []
    entries = cal.calibrate("cpu", progress=said.append)
    assert set(entries) == {"fp32", MEMORY_KEY}  # the suites' dtype only: no bf16 unless asked
    assert said[0].startswith("reading the noise sentinel")
    assert any(s.startswith("fp32: timing 64x64 matmuls") for s in said)
    assert said[-1].startswith("memory: timing 1 MiB copies")
    fp32 = entries["fp32"]
    assert fp32["flops_per_s"] >= fp32["flops_per_s_median"] > 0  # the best call, not the median
    assert fp32["what"].startswith("best of ") and fp32["what"].endswith(" 64x64 fp32 matmuls")
    load = fp32["load"]
    assert load["busy"] is None and load["sentinel_s"] > 0 and load["cpu_share"] > 0
    stored = cal.load_calibration("cpu")
    assert stored == json.loads(json.dumps(entries))
    value, source = peak_flops("cpu", "any CPU", "fp32", stored)
    assert value == fp32["flops_per_s"] and "busy" not in source


def test_a_dtype_calibrated_alone_keeps_the_others(small_calibration: Path) -> None:
    cal.calibrate("cpu", ("fp32",))
    first = cal.load_calibration("cpu")["fp32"]
    cal.calibrate("cpu", ("bf16",))
    both = cal.load_calibration("cpu")
    assert both["fp32"] == first and both["bf16"]["what"].endswith("bf16 matmuls")


def test_a_slow_dtype_is_timed_at_a_smaller_side(small_calibration: Path, monkeypatch) -> None:
    """bf16 emulated on an AVX2 CPU ran 0.26 GFLOP/s: 2048^3 matmuls took minutes each."""
    monkeypatch.setitem(cal.MATMUL_SIZES, "cpu", 128)
    monkeypatch.setattr(cal, "MIN_SIZE", 32)
    monkeypatch.setattr(cal, "CALL_LIMIT_S", 0.0)  # every warm-up call counts as too slow
    said: list[str] = []
    entries = cal.calibrate("cpu", ("fp32",), progress=said.append)
    assert entries["fp32"]["what"].endswith(" 32x32 fp32 matmuls")
    assert [s for s in said if "warming up" in s] == [
        f"fp32: warming up a {n}x{n} matmul on cpu" for n in (128, 64, 32)
    ]


def test_a_busy_machine_is_refused_before_anything_is_timed(
    small_calibration: Path, monkeypatch
) -> None:
    """A sentinel that waits instead of computing is what a process without a CPU sees."""
    monkeypatch.setattr(cal, "SHARE_LIMIT", 0.8)
    monkeypatch.setattr(measure, "sentinel_s", lambda: time.sleep(0.02) or 0.02)
    said: list[str] = []
    with pytest.raises(cal.BusyError, match=r"busy before calibrating: .* got \d+% of the CPU"):
        cal.calibrate("cpu", progress=said.append)
    assert len(said) == 1 and not small_calibration.exists()  # nothing timed, nothing stored


def test_a_load_that_comes_while_calibrating_is_refused(
    small_calibration: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cal, "SPREAD_LIMIT", 0.25)
    _sentinel([0.010, 0.010, 0.010, 0.016], monkeypatch)  # 60% slower after the matmuls
    with pytest.raises(
        cal.BusyError, match="busy while calibrating: the noise sentinel varied 60%"
    ):
        cal.calibrate("cpu")
    assert not small_calibration.exists()


def test_force_stores_a_busy_calibration_marked_busy(small_calibration: Path, monkeypatch) -> None:
    monkeypatch.setattr(cal, "SPREAD_LIMIT", 0.25)
    _sentinel([0.010, 0.013, 0.010, 0.016], monkeypatch)
    entries = cal.calibrate("cpu", force=True)
    load = entries["fp32"]["load"]
    assert load["sentinel_spread"] == pytest.approx(0.6)
    assert "the noise sentinel varied 60%" in load["busy"]
    stored = cal.load_calibration("cpu")
    assert stored[MEMORY_KEY]["load"] == load
    # every row measured against it says so in its peak sources
    assert peak_flops("cpu", "any CPU", "fp32", stored)[1].endswith(", busy machine)")
    assert peak_bandwidth("cpu", "any CPU", stored)[1].endswith(", busy machine)")


def test_the_cpu_share_judges_a_load_that_stays() -> None:
    steady = cal.Load(threads=2, sentinel_s=[0.02, 0.02, 0.02], cpu_s=1.0, asked_s=2.0)
    assert steady.spread == 0.0 and steady.share == 0.5
    assert steady.busy() == (
        "its 2 thread(s) got 50% of the CPU time they asked for (limit 80%: other processes "
        "hold CPUs)"
    )
    quiet = cal.Load(threads=1, sentinel_s=[0.02, 0.021], cpu_s=0.99, asked_s=1.0)
    assert quiet.busy() is None and quiet.record()["busy"] is None


def test_dtypes_are_checked() -> None:
    assert cal.parse_dtypes(None) == ("fp32",)
    assert cal.parse_dtypes(["bf16", "fp32", "bf16"]) == ("bf16", "fp32")
    with pytest.raises(ConfigError, match=r"--dtype fp8: unknown \(valid: fp32, bf16, fp16\)"):
        cal.parse_dtypes(["fp8"])


def test_a_warm_up_is_one_call_per_size(small_calibration: Path, monkeypatch) -> None:
    """A 2048^2 bf16 call took 66 s on an AVX2 CPU: five of them before halving were minutes."""
    monkeypatch.setitem(cal.MATMUL_SIZES, "cpu", 128)
    monkeypatch.setattr(cal, "MIN_SIZE", 32)
    monkeypatch.setattr(cal, "CALL_LIMIT_S", 0.0)
    calls: list[int] = []
    real = measure.time_calls

    def counting(fn, **kw):  # type: ignore[no-untyped-def]
        samples = real(fn, **kw)
        calls.append(len(samples))
        return samples

    monkeypatch.setattr(measure, "time_calls", counting)
    cal.calibrate("cpu", ("fp32",), progress=lambda _: None)
    assert calls[:3] == [1, 1, 1]  # 128, 64, 32: one warm-up call each, then the timing


def test_more_threads_than_usable_cpus_is_not_a_busy_machine(monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert cal.usable_threads(8) == 2 and cal.usable_threads(1) == 1
