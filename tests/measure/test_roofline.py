"""The speed of light: the byte floor per mode, the bound that wins, the row's columns."""

from __future__ import annotations

import pytest

from hubbench.measure.metrics import RoundResult, measurement_columns
from hubbench.measure.roofline import bytes_floor, speed_of_light


def test_bytes_floor_per_mode() -> None:
    w = 1000  # bytes of weights
    assert bytes_floor("fwd", w, None, 4) == 1000
    assert bytes_floor("fwd_bwd", w, None, 4) == 3000  # read twice, gradients written
    assert bytes_floor("train", w, None, 4) == 10_000  # + AdamW: 4 reads, 3 writes
    assert bytes_floor("decode", w, 500, 2) == 2000  # + the state of 2 sequences, read
    assert bytes_floor("prefill", w, 500, 2) == 2000  # + the state, written
    assert bytes_floor("fwd", w, 500, 2) == 1000  # no state outside prefill / decode
    with pytest.raises(ValueError, match="unknown mode"):
        bytes_floor("sideways", w, None, 1)


def test_the_larger_bound_sets_the_speed_of_light() -> None:
    compute = speed_of_light(2e12, 1e12, 1e9, 1e11)  # 2 s of FLOPs, 10 ms of bytes
    assert compute is not None and compute.seconds == pytest.approx(2.0)
    assert compute.basis == "compute"
    memory = speed_of_light(1e9, 1e12, 1e10, 1e12)  # 1 ms of FLOPs, 10 ms of bytes
    assert memory is not None and memory.seconds == pytest.approx(0.01)
    assert memory.basis == "memory"
    bare = speed_of_light(2e12, 1e12, 1e9, None)
    assert bare is not None and bare.basis == "compute (no bandwidth)"
    assert speed_of_light(None, None, None, None) is None
    assert speed_of_light(2e12, None, None, 1e11) is None  # no peak, no bytes: nothing


def _round(**kw: object) -> RoundResult:
    base = dict(
        samples_s=[0.5, 0.4, 0.6], tokens=1000, warmup_s=0.1, warmup_steps=1, warmup_capped=0,
        sentinel_s=None, peak_mem_bytes=None, peak_mem_reserved_bytes=None, mem_kind=None,
        mem_baseline_bytes=None, flops_per_step=4e11, flops_per_step_analytic=2e11,
        peak_flops_per_s=1e12, peak_flops_source="t", params=10,
    )  # fmt: skip
    return RoundResult(**{**base, **kw})  # type: ignore[arg-type]


def test_row_columns_of_a_hand_computed_cell() -> None:
    """Analytic FLOPs 2e11 at 1e12 FLOP/s: 0.2 s; 1e9 bytes at 1e10 B/s: 0.1 s -> compute."""
    cols = measurement_columns(
        [_round(bytes_per_step_min=1e9, peak_bytes_per_s=1e10, peak_bytes_source="c")], "t"
    )
    assert cols["speed_of_light_s"] == pytest.approx(0.2)
    assert cols["speed_of_light_basis"] == "compute"
    assert cols["speed_of_light_tokens_per_s"] == pytest.approx(5000.0)
    assert cols["speed_of_light_fraction"] == pytest.approx(0.2 / 0.5)  # median step 0.5 s
    assert cols["mfu"] == pytest.approx(cols["speed_of_light_fraction"])  # compute-bound
    slow_memory = measurement_columns(
        [_round(bytes_per_step_min=1e10, peak_bytes_per_s=1e10, peak_bytes_source="c")], "t"
    )
    assert slow_memory["speed_of_light_s"] == pytest.approx(1.0)
    assert slow_memory["speed_of_light_basis"] == "memory"
    none = measurement_columns([_round(peak_flops_per_s=None)], "t")
    assert none["speed_of_light_s"] is None and none["speed_of_light_tokens_per_s"] is None
