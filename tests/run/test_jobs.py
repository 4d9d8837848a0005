"""Cells into jobs (hubbench.run.jobs): comparison groups stay whole where they fit."""

from __future__ import annotations

from cells import grid

from hubbench.run.jobs import comparison_key, shard
from hubbench.run.rows import CellState


def test_shard_packs_comparison_groups_into_one_job() -> None:
    states = [CellState(c) for c in grid()]
    jobs = shard(states, cells_per_job=2)
    assert [[s.cell.seq for s in job] for job in jobs] == [[32, 32], [64, 64]]
    assert comparison_key(states[0].cell) == comparison_key(states[1].cell)
    assert comparison_key(states[0].cell) != comparison_key(states[2].cell)
    # three per job: a group is split only where it does not fit
    assert [len(j) for j in shard(states, cells_per_job=3)] == [2, 2]
    assert [len(j) for j in shard(states, cells_per_job=1)] == [1, 1, 1, 1]
    assert [len(j) for j in shard(states, cells_per_job=8)] == [4]
