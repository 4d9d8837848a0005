"""Routing precision and recall against selections worked out by hand."""

from __future__ import annotations

import pytest
import torch

from hubbench.quality import routing
from hubbench.quality.routing import RoutingCounts, routing_counts, routing_score
from hubbench.quality.tasks import mqar_batch


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


def test_three_chunks_pool_sums_not_ratios() -> None:
    # n = 12, C = 4. Chunk 1 (eligible 0..3): query at 5 needs 0, 1; members {0, 2}:
    #   overlap 1, selected 2, needed 2, E = 2 * 2 / 4 = 1.
    # Chunk 2 (eligible 0..7): queries at 9 (needs 2, 3) and 10 (needs 0, 1); members {0, 5, 6}:
    #   overlap 1, selected 3, needed 4, E = 3 * 4 / 8 = 1.5.
    pos, ok, needed, scored = case(
        members=[[0, 0, 0], [0, 2, 0], [0, 5, 6]],
        valid=[[False] * 3, [True, True, False], [True, True, True]],
        queries={5: (0, 1), 9: (2, 3), 10: (0, 1)},
        n=12,
    )
    c = routing_counts(pos, ok, 4, needed, scored)
    assert (c.overlap, c.selected, c.needed, c.chunks) == (2, 5, 6, 2)
    s = c.score()
    assert s.precision == pytest.approx(2 / 5) and s.recall == pytest.approx(2 / 6)
    assert s.random_precision == pytest.approx(2.5 / 5)
    assert s.random_recall == pytest.approx(2.5 / 6)
    assert routing_score(pos, ok, 4, needed, scored) == s


def test_a_chunk_with_nothing_selected_counts_for_recall_only() -> None:
    pos, ok, needed, scored = case(members=[[0], [0]], valid=[[False], [False]],
                                   queries={6: (0, 1)})  # fmt: skip
    s = routing_score(pos, ok, 4, needed, scored)
    assert s.chunks == 1 and s.recall == 0.0 and s.random_recall == 0.0
    assert s.precision is None and s.random_precision is None  # 0 / 0


def reference(positions, valid, chunk, needed, scored) -> RoutingCounts:
    """The module docstring's definition, one (b, c) at a time."""
    B, nc, _ = positions.shape
    total = RoutingCounts()
    for b in range(B):
        for c in range(nc):
            need = set()
            for t in range(c * chunk, min((c + 1) * chunk, needed.shape[1])):
                if scored[b, t]:
                    need |= {int(p) for p in needed[b, t] if 0 <= int(p) < c * chunk}
            if not need:
                continue
            sel = {int(p) for p, v in zip(positions[b, c], valid[b, c], strict=True) if v}
            total = total + RoutingCounts(
                len(sel & need), len(sel), len(need), len(sel) * len(need) / (c * chunk), 1
            )
    return total


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_counts_match_the_definition(seed: int, monkeypatch) -> None:
    g = torch.Generator().manual_seed(seed)
    B, n, C, k = 6, 37, 8, 7  # n not a multiple of C: the last chunk is padded
    nc = -(-n // C)
    t = mqar_batch(B, n, 4, 64, g)  # context 0..7, queries after it
    limit = (torch.arange(nc) * C).clamp(min=1).view(1, nc, 1)
    pos = (torch.rand(B, nc, k, generator=g) * limit).long()  # members before the chunk start
    valid = torch.rand(B, nc, k, generator=g) > 0.3
    valid[:, 0] = False
    scored = t.targets != -100
    want = reference(pos, valid, C, t.needed, scored)
    got = routing_counts(pos, valid, C, t.needed, scored)
    assert got.chunks == want.chunks > 0
    for f in ("overlap", "selected", "needed", "expected_overlap"):
        assert getattr(got, f) == pytest.approx(getattr(want, f)), f
    monkeypatch.setattr(routing, "MASK_ELEMENTS", 1)  # one sequence at a time: same sums
    sliced = routing_counts(pos, valid, C, t.needed, scored)
    assert (sliced.overlap, sliced.selected, sliced.needed, sliced.chunks) == (
        got.overlap,
        got.selected,
        got.needed,
        got.chunks,
    )
    assert sliced.expected_overlap == pytest.approx(got.expected_overlap)


def test_a_router_that_selects_the_whole_prefix_scores_its_random_baseline() -> None:
    from hubbench.mixers.hubrouter import HubRouter

    torch.manual_seed(0)
    n, C = 32, 8
    layer = HubRouter(d_model=16, n_heads=2, hubs=2, topk=64, neighbours=0, chunk=C)
    layer.record_routing = True
    t = mqar_batch(3, n, 6, 64, torch.Generator().manual_seed(0))  # context 0..11
    with torch.no_grad():
        layer(torch.randn(3, n, 16))
    pos, valid, chunk = layer.last_routing
    assert chunk == C and pos.shape[:2] == (3, n // C)
    s = routing_score(pos, valid, chunk, t.needed, t.targets != -100)
    assert s.chunks > 0
    assert s.recall == pytest.approx(1.0)  # every prefix position is a member
    assert s.precision == pytest.approx(s.random_precision)
    assert s.random_recall == pytest.approx(1.0)


def test_mismatched_shapes_are_refused() -> None:
    pos, ok, needed, scored = case(members=[[0], [1]], valid=[[False], [True]],
                                   queries={6: (0, 1)})  # fmt: skip
    with pytest.raises(ValueError, match="do not agree"):
        routing_counts(pos, ok[:, :1], 4, needed, scored)
    with pytest.raises(ValueError, match="chunk"):
        routing_counts(pos, ok, 0, needed, scored)
