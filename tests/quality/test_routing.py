"""Routing precision and recall against selections worked out by hand."""

from __future__ import annotations

import pytest
import torch

from hubbench.quality.routing import RoutingCounts, routing_counts


def case(members: list[list[int]], valid: list[list[bool]], queries: dict[int, tuple[int, int]],
         n: int = 8):  # fmt: skip
    """One sequence: members per chunk, and {query position: (key pos, value pos)}."""
    pos = torch.tensor([members])
    ok = torch.tensor([valid])
    needed = torch.full((1, n, 2), -1)
    scored = torch.zeros(1, n, dtype=torch.bool)
    for t, (k, v) in queries.items():
        needed[0, t] = torch.tensor([k, v])
        scored[0, t] = True
    return pos, ok, needed, scored


def test_two_chunks_by_hand() -> None:
    # n = 8, C = 4: chunk 1 (positions 4..7) may select from 0..3; its query at 6 needs 0 and 1
    pos, ok, needed, scored = case(
        members=[[0, 0], [1, 2]], valid=[[False, False], [True, True]], queries={6: (0, 1)}
    )
    s = routing_counts(pos, ok, 4, needed, scored).score()
    assert s.chunks == 1
    assert s.precision == pytest.approx(1 / 2)  # 1 of the 2 selected is needed
    assert s.recall == pytest.approx(1 / 2)  # 1 of the 2 needed is selected
    # random: 2 of 4 eligible drawn, 2 needed: E[overlap] = 2 * 2 / 4 = 1
    assert s.random_precision == pytest.approx(1 / 2)
    assert s.random_recall == pytest.approx(1 / 2)


def test_needs_inside_the_chunk_and_invalid_or_repeated_members() -> None:
    # query at 7 needs 4 and 5: inside its own chunk (the local window serves it): not counted
    pos, ok, needed, scored = case(
        members=[[0, 0, 0], [1, 1, 3]],
        valid=[[False] * 3, [True, True, False]],  # 1 twice (counted once), 3 invalid
        queries={7: (4, 5), 6: (1, 2)},
    )
    c = routing_counts(pos, ok, 4, needed, scored)
    assert (c.selected, c.needed, c.overlap) == (1, 2, 1)
    assert c.expected_overlap == pytest.approx(1 * 2 / 4)
    s = c.score()
    assert (s.precision, s.recall) == (1.0, 0.5)


def test_nothing_countable_gives_none() -> None:
    pos, ok, needed, scored = case(
        members=[[0], [0]], valid=[[False], [True]], queries={3: (0, 1)}
    )  # the query sits in chunk 0, whose needs are all local
    s = routing_counts(pos, ok, 4, needed, scored).score()
    assert s.chunks == 0 and s.precision is None and s.random_recall is None


def test_counts_add_across_calls_and_batch_rows() -> None:
    a = case(members=[[0, 0], [1, 2]], valid=[[False, False], [True, True]], queries={6: (0, 1)})
    b = case(members=[[0, 0], [0, 1]], valid=[[False, False], [True, True]], queries={5: (0, 1)})
    one = routing_counts(*a[:2], 4, *a[2:]) + routing_counts(*b[:2], 4, *b[2:])
    both = routing_counts(
        torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), 4,
        torch.cat([a[2], b[2]]), torch.cat([a[3], b[3]]),
    )  # fmt: skip
    assert one == both
    assert both.score().precision == pytest.approx(3 / 4)
    assert RoutingCounts() + both == both
