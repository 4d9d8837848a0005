"""Shared test support: `tests/builders.py` (test-only model builders) is importable everywhere.

Tests run torch on one intra-op thread. The models under test are tiny, so threads buy nothing,
and on a shared 2-core machine two OpenMP threads next to another busy process spin on each
other: the decode checks took 7 minutes instead of 8 seconds that way. Workers the runner starts
set their own thread count (the cell's `threads`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
