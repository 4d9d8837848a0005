"""Shared test support: `tests/builders.py` (test-only model builders) is importable everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
