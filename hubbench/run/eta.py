"""Time left in a run, for its progress lines: every round still to come, predicted in parts.

A round's wall time is a fixed part (the noise sentinel, building the model, a decode cell's
prompt, round 1's FLOP count of a compiled cell), the warm-up and the timed steps. A measured
round gives the fixed part (wall time less warm-up and timed steps), the step time and, after
round 1, the warm-up; round 1's warm-up holds the FLOP-counting step, so the rounds after it
are given the warm-up rule's time instead (hubbench.measure.timing). A cell predicts its rounds from
its own latest round; a cell not yet measured borrows from the cells of its kind (mode, device
and variant) measured so far: their mean fixed part, a step time scaled from theirs by
`step_cost`, and the warm-up rule's time for that step.

Kinds never borrow from each other: a decode step (decode_tokens tokens against a cache, each
a few small kernels) and a prefill or training step are not one FLOP scale apart on any device,
nor are a Mamba scan and a matmul; extrapolating one from the other put the decode suite's
first estimate at 161 min for a 9 min run (issue 27). So there is no estimate until every kind
with rounds left has a measured round.

A local run records each round as its worker answers it. Cluster jobs are read by their
submitter (hubbench.run.executors), a row at a time, which may hold several new rounds
(`catch_up`); their jobs run side by side, so the time left is the longest job's, or the work
shared among the jobs that run at once where that is longer (`progress(jobs=...)`). The time a
job waits in the cluster's queue is not predicted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubbench.measure.step import tokens_per_call
from hubbench.measure.timing import warmup_estimate_s

if TYPE_CHECKING:
    from hubbench.measure.metrics import RoundResult
    from hubbench.plan.cell import Cell
    from hubbench.run.rows import CellState


@dataclass
class Progress:
    """Where a run stands, for progress lines; seconds are estimates from measured rounds."""

    done: int  # cell-rounds finished
    total: int
    elapsed_s: float
    remaining_s: float | None  # None until a round of every kind left has been timed


@dataclass
class Timing:
    """What a measured round says about the rounds of its cell to come."""

    fixed_s: float  # wall time outside the warm-up and the timed steps
    step_s: float  # median step (decode: a call generating decode_tokens tokens)
    warmup_s: float | None = None  # measured, when no FLOP-counting step was part of it


def kind(cell: Cell) -> tuple[str, str, str]:
    """The cells whose step times `step_cost` may scale into one another."""
    return cell.mode, cell.device, cell.variant


def step_cost(cell: Cell) -> float:
    """A step's cost in arbitrary units, comparable within a kind only: linear maps ~ n d^2,
    attention ~ n^2 d; a decode step is decode_tokens tokens, each against an n-token context."""
    config = cell.config
    d = config.d_model
    tokens = cell.decode_tokens if cell.mode == "decode" else cell.seq
    return cell.batch * config.n_layers * tokens * d * (d + cell.seq / 8)


def per_call(cell: Cell) -> int:
    """A step's samples_s are per generated token in decode mode (hubbench.measure.step)."""
    return tokens_per_call(cell.mode, cell.decode_tokens)


def measured_timing(cell: Cell, result: RoundResult, wall_s: float, counted: bool) -> Timing:
    """`counted`: the round's warm-up began with the FLOP-counting step (round 1)."""
    ordered = sorted(result.samples_s)
    step = ordered[len(ordered) // 2] * per_call(cell)
    timed = sum(result.samples_s) * per_call(cell)
    fixed = max(wall_s - result.warmup_s - timed, 0.0)
    return Timing(fixed, step, None if counted else result.warmup_s)


def round_s(cell: Cell, timing: Timing) -> float:
    """A round's predicted seconds: a quality round trains for its updates, without warm-up."""
    step, m = timing.step_s, cell.measure
    if cell.mode == "quality":
        return timing.fixed_s + cell.train_updates * step
    warm = timing.warmup_s
    if warm is None:
        warm = warmup_estimate_s(step, steps=m.warmup, min_s=m.warmup_min_s, max_s=m.warmup_max_s)
    return timing.fixed_s + warm + max(m.repeats * step, m.min_time_s)


class Eta:
    """Rounds left per cell and what measured rounds predict for them (module docstring)."""

    def __init__(self, states: list[CellState]) -> None:
        self.cells = {s.key: s.cell for s in states}
        self.left = {s.key: s.cell.measure.rounds - len(s.rounds) for s in states}
        self.timing: dict[str, Timing] = {}
        self.total = sum(self.left.values())
        self.done = 0

    def record(self, state: CellState, outcome: Mapping[str, Any]) -> None:
        key = state.key  # a cell and its side (same-run A/B)
        self.done += 1
        if state.failure is not None:  # no further rounds
            self.done += max(self.left[key] - 1, 0)
            self.left[key] = 0
            return
        self.left[key] -= 1
        if outcome["wall_s"] and state.rounds:
            counted = len(state.rounds) == 1  # the runner counts FLOPs in a cell's first round
            last, wall = state.rounds[-1], outcome["wall_s"]
            self.timing[key] = measured_timing(state.cell, last, wall, counted)

    def catch_up(self, before: CellState, after: CellState) -> None:
        """Record what a cell's row read from its job adds to its state `before`: the rounds
        measured since (sharing the wall time between them), then its failure, or its loss
        with the job (`after.job_lost`: no further rounds in this run)."""
        new = len(after.rounds) - len(before.rounds)
        ended = after.failure is not None
        wall = (after.wall_s - before.wall_s) / max(new + ended, 1)
        for k in range(len(before.rounds) + 1, len(after.rounds) + 1):
            so_far = dataclasses.replace(after, rounds=after.rounds[:k], failure=None)
            self.record(so_far, {"wall_s": wall})
        if ended:
            self.record(after, {"wall_s": wall})

    def progress(
        self, elapsed: float, jobs: list[list[str]] | None = None, at_once: int = 1
    ) -> Progress:
        """`jobs`: the cells (ids) of each job, run `at_once` jobs at a time, each job's cells one
        after another; None: every cell one after another."""
        left = self.remaining_s() if jobs is None else self._spread(jobs, at_once)
        return Progress(self.done, self.total, elapsed, left)

    def _spread(self, jobs: list[list[str]], at_once: int) -> float | None:
        """Time left in jobs that run side by side: at least the longest job's, and at least
        the work left shared among the jobs that run at once."""
        each = [self.remaining_s(job) for job in jobs]
        if None in each:
            return None
        busy = [t for t in each if t]
        return max(max(busy), sum(busy) / min(at_once, len(busy))) if busy else 0.0

    def remaining_s(self, keys: Iterable[str] | None = None) -> float | None:
        """Seconds the rounds left take, of the cells `keys` (default: all), one by one."""
        peers: dict[tuple[str, str], list[str]] = {}
        for key in self.timing:
            peers.setdefault(kind(self.cells[key]), []).append(key)
        total = 0.0
        for key in self.left if keys is None else keys:
            rounds = self.left.get(key, 0)
            if not rounds:
                continue
            cell = self.cells[key]
            timing = self.timing.get(key) or self._borrowed(cell, peers.get(kind(cell), []))
            if timing is None:
                return None
            total += rounds * round_s(cell, timing)
        return total

    def _borrowed(self, cell: Cell, keys: list[str]) -> Timing | None:
        """A timing for an unmeasured cell from the measured cells of its kind (`keys`)."""
        if not keys:
            return None
        fixed = sum(self.timing[k].fixed_s for k in keys) / len(keys)
        per_unit = sum(self.timing[k].step_s for k in keys) / sum(
            step_cost(self.cells[k]) for k in keys
        )
        return Timing(fixed, step_cost(cell) * per_unit)
