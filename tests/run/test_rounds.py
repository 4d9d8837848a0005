"""The rounds loop (hubbench.run.rounds): passes in seeded orders, signals that stop a run."""

from __future__ import annotations

import os
import signal

import pytest
from cells import cell

from hubbench.run.rounds import STOP_SIGNALS, schedule, stop_on_signals
from hubbench.run.rows import CellState


def test_rounds_are_interleaved_in_seeded_orders() -> None:
    cells = [cell(i, seq=16 * (i + 1), rounds=3) for i in range(5)]
    states = [CellState(c) for c in cells]
    passes = []
    for group in schedule(states):
        passes.append([s.cell.index for s in group])
        for s in group:  # what measuring the round does to the state
            s.rounds.append(None)
    assert passes[0] == [0, 1, 2, 3, 4]  # plan order first
    assert sorted(passes[1]) == sorted(passes[2]) == [0, 1, 2, 3, 4]
    assert passes[1] != passes[0] and passes[2] != passes[1]
    again = [CellState(c) for c in cells]
    replay = []
    for group in schedule(again):
        replay.append([s.cell.index for s in group])
        for s in group:
            s.rounds.append(None)
    assert replay == passes  # the orders are seeded: every run uses the same
    states = [CellState(c) for c in cells]
    states[1].failure = {"status": "oom"}
    assert all(1 not in [s.cell.index for s in g] for g in schedule(states))


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt, match=sig.name), stop_on_signals():
        os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before  # the caller's handler is back
