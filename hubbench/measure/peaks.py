"""The peaks that MFU and the speed of light divide by: FLOP/s and memory bandwidth.

A known GPU's come from NVIDIA's data sheets (PEAK_TABLE, BANDWIDTH_TABLE); any other device's
from what `hubbench env --calibrate` measured on this host (hubbench.measure.calibration). Each
peak comes with its source, which the rows record (peak_flops_source, peak_bytes_source).
"""

from __future__ import annotations

from typing import Any

from hubbench.measure.calibration import MEMORY_KEY, source

# Dense peak FLOP/s per (GPU, dtype), from NVIDIA's data sheets (no 2:4 sparsity). fp32 is the
# non-tensor-core rate: PyTorch does not use TF32 for matmuls unless asked to.
PEAK_TABLE: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
}

# HBM bandwidth per GPU, bytes/s, from NVIDIA's data sheets (the largest memory variant).
BANDWIDTH_TABLE: dict[str, float] = {
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H200": 4.8e12,
    "A100": 2.039e12,
    "L4": 300e9,
    "A10": 600e9,
}


def table_entry(device_name: str) -> str | None:
    """The tables' key for a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100 SXM')."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100 PCIe" if "PCIE" in name else "H100 SXM"
    if "A100" in name:
        return "A100"
    if "L4" in name.split() or name.endswith(" L4"):
        return "L4"
    if "A10" in name.split() or "A10G" in name:
        return "A10"
    return None


def peak_flops(
    device_kind: str, device_name: str, dtype: str, calibration: dict[str, Any] | None = None
) -> tuple[float | None, str | None]:
    """(peak FLOP/s, where it came from): the GPU table first, then a calibrated matmul rate."""
    if device_kind == "cuda":
        key = table_entry(device_name)
        if key is not None and dtype in PEAK_TABLE[key]:
            return PEAK_TABLE[key][dtype], f"table: {key} {dtype} dense"
    entry = (calibration or {}).get(dtype)
    if entry:
        return float(entry["flops_per_s"]), source(entry)
    return None, None


def peak_bandwidth(
    device_kind: str, device_name: str, calibration: dict[str, Any] | None = None
) -> tuple[float | None, str | None]:
    """(peak bytes/s, where it came from): the GPU table first, then a calibrated copy rate."""
    if device_kind == "cuda":
        key = table_entry(device_name)
        if key is not None and key in BANDWIDTH_TABLE:
            return BANDWIDTH_TABLE[key], f"table: {key} HBM"
    entry = (calibration or {}).get(MEMORY_KEY)
    if entry:
        return float(entry["bytes_per_s"]), source(entry)
    return None, None
