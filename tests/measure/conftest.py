"""Shared by the calibration tests (test_calibration.py, test_env.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbench.measure import calibration as cal


@pytest.fixture
def small_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, tiny sides and buffers, and the busy limits out of the way (the test box
    is shared: a test that is not about load must not be refused for it); the file it writes."""
    monkeypatch.setenv(cal.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(cal.MATMUL_SIZES, "cpu", 64)
    monkeypatch.setitem(cal.COPY_BYTES, "cpu", 1 << 20)
    monkeypatch.setattr(cal, "MIN_TIME_S", 0.01)
    monkeypatch.setattr(cal, "SHARE_LIMIT", 0.0)
    monkeypatch.setattr(cal, "SPREAD_LIMIT", float("inf"))
    return tmp_path / "calibration.json"
