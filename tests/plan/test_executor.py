"""The executor spec a suite declares (hubbench.plan.executor); running the jobs is
tests/test_executors.py's."""

from __future__ import annotations

import dataclasses

import pytest

from hubbench.errors import ConfigError
from hubbench.plan.executor import SPEC_TYPES, ExecutorSpec, accepted_types, spec_from


def test_spec_types_are_read_from_the_dataclass() -> None:
    assert list(SPEC_TYPES) == [f.name for f in dataclasses.fields(ExecutorSpec)]
    assert accepted_types(int | None) == (int,)
    assert accepted_types(float) == (int, float)  # mem_gb = 8 is a float field's value too
    assert accepted_types(str | None) == (str,)
    assert SPEC_TYPES["mem_gb"] == SPEC_TYPES["poll_s"] == (int, float)
    assert SPEC_TYPES["kind"] == SPEC_TYPES["partition"] == (str,)


def test_a_suite_table_is_checked_by_those_types() -> None:
    table = {"mem_gb": 8, "poll_s": 0.5, "partition": "gpu", "cells_per_job": 2}
    assert spec_from(table, "s.toml: executor") == table
    with pytest.raises(ConfigError, match=r"s\.toml: executor: mem_gb must be int or float"):
        spec_from({"mem_gb": "8G"}, "s.toml: executor")
    with pytest.raises(ConfigError, match=r"cells_per_job must be int \(got True\)"):
        spec_from({"cells_per_job": True}, "s.toml: executor")
