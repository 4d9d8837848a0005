"""The peaks MFU and the speed of light divide by: the GPU tables, else the calibration."""

from __future__ import annotations

from hubbench.measure.peaks import PEAK_TABLE, peak_bandwidth, peak_flops, table_entry


def test_peak_table_and_calibration() -> None:
    assert table_entry("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert table_entry("NVIDIA H100 PCIe") == "H100 PCIe"
    assert table_entry("NVIDIA H200") == "H200"
    assert table_entry("NVIDIA A100-SXM4-80GB") == "A100"
    assert table_entry("AMD EPYC") is None
    assert peak_flops("cuda", "NVIDIA H100 80GB HBM3", "bf16") == (
        989e12,
        "table: H100 SXM bf16 dense",
    )
    assert peak_flops("cuda", "NVIDIA A100-SXM4-40GB", "fp32")[0] == PEAK_TABLE["A100"]["fp32"]
    assert peak_flops("cpu", "AMD EPYC", "fp32") == (None, None)
    cal = {"fp32": {"flops_per_s": 1e11, "what": "m", "utc_time": "t"}}
    value, source = peak_flops("cpu", "AMD EPYC", "fp32", cal)
    assert value == 1e11 and source.startswith("calibrated")
    assert peak_flops("cpu", "AMD EPYC", "bf16", cal) == (None, None)


def test_bandwidth_from_the_gpu_table_or_the_calibration() -> None:
    assert peak_bandwidth("cuda", "NVIDIA H200", None) == (4.8e12, "table: H200 HBM")
    assert peak_bandwidth("cuda", "NVIDIA H100 80GB HBM3", None)[0] == 3.35e12
    assert peak_bandwidth("cpu", "AMD EPYC", None) == (None, None)
    cal = {"memory": {"bytes_per_s": 2e10, "what": "copies", "utc_time": "t"}}
    value, source = peak_bandwidth("cpu", "AMD EPYC", cal)
    assert value == 2e10 and source == "calibrated: copies (t)"
