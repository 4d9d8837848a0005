"""Where suites are found (hubbench.plan.find)."""

from __future__ import annotations

import pytest
from suite_files import SHIPPED

from hubbench.errors import SuiteError
from hubbench.plan import available_suites, load_suite


def test_available_suites_lists_the_shipped_ones() -> None:
    assert set(SHIPPED) <= set(available_suites())


def test_unknown_suite_lists_available() -> None:
    with pytest.raises(SuiteError, match=r"unknown suite 'nope'; available: .*throughput"):
        load_suite("nope")
