"""Suite files for the planning tests: a small CPU suite with a body of one's own."""

from __future__ import annotations

from pathlib import Path

from hubbench.plan import Plan, expand, load_suite

SHIPPED = ("throughput", "scaling", "hubs", "replace", "ci", "decode")

BASE = """
description = "test suite"
[measure]
warmup = 1
repeats = 2
[defaults]
device = "cpu"
mode = "fwd"
d_model = 32
n_layers = 2
n_heads = 2
"""


def write(tmp_path: Path, body: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE + body)
    return path


def plan_of(tmp_path: Path, body: str, **kw) -> Plan:
    return expand(load_suite(write(tmp_path, body)), cuda_available=False, **kw)
