"""Shared test support: `tests/builders.py` (test-only model builders) is importable everywhere.

Tests run torch on one intra-op thread. The models under test are tiny, so threads buy nothing,
and on a shared 2-core machine two OpenMP threads next to another busy process spin on each
other: the decode checks took 7 minutes instead of 8 seconds that way. Workers the runner starts
set their own thread count (the cell's `threads`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiers import starts_a_measuring_process

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

# Ctrl-C tests (a worker's SIGINT to its runner) need SIGINT delivered: a shell that starts
# pytest in the background (`cmd &` without job control) leaves it ignored, and an ignored
# signal stays ignored in every process started from here. Restore Python's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _terminal_of_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's terminal size is not the test's: COLUMNS and LINES are unset, so output goes
    to a pipe's width (hubbench.cli.common.console), and a test of narrow tables sets its own."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_worker(request: pytest.FixtureRequest, monkeypatch) -> None:
    """A test not marked `slow` that starts a worker, torchrun or a submitit job fails here,
    so the fast tier cannot quietly grow slow."""
    if request.node.get_closest_marker("slow") is not None:
        return
    popen_init = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        if starts_a_measuring_process(args):
            raise RuntimeError(f"{request.node.nodeid} starts {args!r}: mark it @pytest.mark.slow")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
