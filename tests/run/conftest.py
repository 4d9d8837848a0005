"""The test builder (tests/builders.py), loaded once per module for measuring in process."""

from __future__ import annotations

import pytest
from cells import BUILDER

from hubbench.measure.process import load_builder


@pytest.fixture(scope="module")
def build():
    return load_builder(BUILDER)
