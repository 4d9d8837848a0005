"""Time left in a run: per-kind estimates, the fixed part of a round, round 1's FLOP count, and
jobs that run side by side."""

from __future__ import annotations

import pytest

from hubbench.measure.metrics import RoundResult
from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.variants import make_config
from hubbench.run.eta import Eta, Timing, round_s, step_cost
from hubbench.run.rows import CellState

MEASURE = Measure(warmup=1, warmup_min_s=0.0, warmup_max_s=0.0, repeats=3, rounds=3)


def cell(
    index: int, mode: str = "prefill", seq: int = 1024, variant: str = "transformer", **fields
) -> Cell:
    config = make_config(variant, d_model=256, n_heads=4, n_layers=4)
    return Cell(index=index, variant=variant, mode=mode, device="cpu", batch=1, seq=seq,
                compile=False, threads=1, config=config, measure=MEASURE, **fields)  # fmt: skip


def measured(state: CellState, eta: Eta, *, step_s: float, warmup_s: float, wall_s: float) -> None:
    """Record a round of `state` whose timed steps took `step_s` each (decode: per token)."""
    unused = ("sentinel_s", "peak_mem_bytes", "peak_mem_reserved_bytes", "mem_kind",
              "mem_baseline_bytes", "flops_per_step", "flops_per_step_analytic",
              "peak_flops_per_s", "peak_flops_source")  # fmt: skip
    samples = [step_s] * MEASURE.repeats
    state.rounds.append(RoundResult(samples, 1, warmup_s, 2, 0, params=1, **dict.fromkeys(unused)))
    eta.record(state, {"wall_s": wall_s})


def test_no_estimate_until_a_round_of_every_mode_left_is_timed() -> None:
    """Issue 27: a decode round extrapolated to prefill cells by FLOPs said 161 min for 9."""
    kinds = [("decode", 1024), ("decode", 16384), ("prefill", 1024)]
    states = [CellState(cell(i, mode, seq)) for i, (mode, seq) in enumerate(kinds)]
    eta = Eta(states)
    assert eta.progress(0.0).remaining_s is None
    measured(states[0], eta, step_s=0.003, warmup_s=1.0, wall_s=2.0)
    assert eta.progress(2.0).remaining_s is None  # no prefill round timed yet
    measured(states[2], eta, step_s=0.1, warmup_s=0.5, wall_s=1.0)
    assert eta.progress(3.0).remaining_s is not None


def test_round_one_flop_count_is_not_the_cost_of_later_rounds() -> None:
    state = CellState(cell(0))
    eta = Eta([state])
    # the FLOP-counting warm-up step took 5 s; the three timed steps 0.1 s each
    measured(state, eta, step_s=0.1, warmup_s=5.0, wall_s=5.5)
    # two rounds left: fixed 0.2 s (5.5 - 5.0 - 0.3), one warm-up step, three timed steps
    assert eta.progress(5.5).remaining_s == pytest.approx(2 * (0.2 + 0.1 + 0.3))
    # round 2 counted nothing: its own warm-up (0.7 s, steps that took long to settle) stands
    measured(state, eta, step_s=0.1, warmup_s=0.7, wall_s=1.2)
    assert eta.progress(6.7).remaining_s == pytest.approx(0.2 + 0.7 + 0.3)


def test_an_unmeasured_cell_scales_its_kind_step_not_the_fixed_part() -> None:
    small, big = CellState(cell(0, seq=1024)), CellState(cell(1, seq=4096))
    eta = Eta([small, big])
    measured(small, eta, step_s=0.1, warmup_s=0.1, wall_s=1.5)  # fixed 1.5 - 0.1 - 0.3
    step = 0.1 * step_cost(big.cell) / step_cost(small.cell)
    want = 2 * (1.1 + 0.1 + 0.3) + 3 * (1.1 + step + 3 * step)
    assert eta.progress(1.5).remaining_s == pytest.approx(want)


def test_variants_do_not_borrow_from_each_other() -> None:
    """A Mamba scan and a matmul are not one FLOP scale apart either."""
    transformer, jamba = CellState(cell(0)), CellState(cell(1, variant="jamba"))
    eta = Eta([transformer, jamba])
    measured(transformer, eta, step_s=0.1, warmup_s=0.1, wall_s=1.0)
    assert eta.progress(1.0).remaining_s is None


def test_a_decode_step_is_its_tokens_not_its_prompt() -> None:
    short, long = cell(0, "decode", 1024), cell(1, "decode", 16384)
    assert step_cost(long) < 8 * step_cost(short)  # a prefill step of 16k costs ~100x one of 1k
    assert step_cost(cell(2, "decode", 1024, decode_tokens=128)) == 2 * step_cost(short)


def test_decode_samples_are_per_token() -> None:
    state = CellState(cell(0, "decode", decode_tokens=64))
    eta = Eta([state])
    measured(state, eta, step_s=0.001, warmup_s=0.0, wall_s=1.0)  # a step: 64 tokens, 64 ms
    timing = eta.timing[state.cell.cell_id]
    assert timing.step_s == pytest.approx(0.064) and timing.fixed_s == pytest.approx(1 - 0.192)


def test_a_quality_round_is_its_training_updates() -> None:
    quality = cell(0, "quality", train_updates=100)
    assert round_s(quality, Timing(fixed_s=2.0, step_s=0.01)) == pytest.approx(3.0)


def test_failed_cells_leave_nothing_to_estimate() -> None:
    state = CellState(cell(0))
    eta = Eta([state])
    state.failure = {"status": "error"}
    eta.record(state, {"wall_s": 1.0})
    progress = eta.progress(1.0)
    assert (progress.done, progress.total, progress.remaining_s) == (3, 3, 0.0)


def test_a_row_read_from_a_job_may_bring_several_rounds() -> None:
    """A submitter reads a job's row when it polls: two rounds at once share the wall time."""
    import dataclasses

    state = CellState(cell(0))
    eta, other = Eta([state]), Eta([CellState(cell(0))])
    measured(state, eta, step_s=0.1, warmup_s=5.0, wall_s=5.5)
    measured(state, eta, step_s=0.1, warmup_s=0.7, wall_s=1.2)
    after = dataclasses.replace(state, wall_s=6.7)
    other.catch_up(CellState(cell(0)), after)
    assert other.done == 2 and other.left == eta.left
    # the round left takes as long as each of the two did: half their wall time
    assert other.progress(6.7).remaining_s == pytest.approx(6.7 / 2)
    failed = dataclasses.replace(after, failure={"status": "error"})
    other.catch_up(after, failed)  # no further rounds
    assert (other.done, other.progress(7.0).remaining_s) == (3, 0.0)


def test_jobs_side_by_side_take_the_longest_job_or_the_work_shared() -> None:
    states = [CellState(cell(i, seq=1024 * (i + 1))) for i in range(4)]
    eta = Eta(states)
    for state in states:
        measured(state, eta, step_s=0.1, warmup_s=0.1, wall_s=1.0)  # 2 rounds left, 1 s each
    ids = [[s.cell.cell_id] for s in states]
    assert eta.progress(1.0).remaining_s == pytest.approx(4 * 2.0)  # one after another
    assert eta.progress(1.0, jobs=ids, at_once=4).remaining_s == pytest.approx(2.0)
    assert eta.progress(1.0, jobs=ids, at_once=2).remaining_s == pytest.approx(4.0)
    longest = [ids[0][0:1], [i for [i] in ids[1:]]]
    assert eta.progress(1.0, jobs=longest, at_once=4).remaining_s == pytest.approx(3 * 2.0)
