"""Recall-free ceilings: each rule on hand-built batches, and the legacy layout's shortcut
measured by an independent implementation: high on the old layout, at the ceiling's level or
below it on Zoology's."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from hubbench.quality.ceilings import recall_free_ceilings
from hubbench.quality.tasks import IGNORE, TaskBatch, mqar_batch, mqar_legacy_batch


def hand_batch() -> TaskBatch:
    """Two sequences, K = 2, context 1 5 2 6 (keys 1, 2; values 5, 6).

    A: queries key 1 at 4 (answer 5), key 2 at 6 (answer 6); filler 0.
    C: value 6 twice as filler, key 2 at 6 (answer 6), then 6 revealed at 7, key 1 at 8 (5).
    """
    a = [1, 5, 2, 6, 1, 0, 2, 0, 0, 0]
    c = [1, 5, 2, 6, 6, 6, 2, 6, 1, 0]
    targets = torch.full((2, 10), IGNORE)
    targets[0, 4], targets[0, 6] = 5, 6
    targets[1, 6], targets[1, 8] = 6, 5
    return TaskBatch(torch.tensor([a, c]), targets, None)


def test_each_rule_on_a_hand_built_batch() -> None:
    c = recall_free_ceilings([hand_batch()], kv_pairs=2)
    assert c.queries == 4
    assert c.uniform == pytest.approx(0.5)
    # rank: A hits both (5 then 6), C neither (5 for 6, 6 for 5)
    assert c.rules["rank"] == pytest.approx(2 / 4)
    # first-unrevealed: 5 always, except after 5 is revealed (never here): A 1 hit, C 1 hit
    assert c.rules["first-unrevealed"] == pytest.approx(2 / 4)
    # frequent-unrevealed: A ties go to 5 (1 hit); C 6 is most frequent (hit), then 6 is
    # revealed and 5 remains (hit)
    assert c.rules["frequent-unrevealed"] == pytest.approx(3 / 4)
    assert c.best_rule == "frequent-unrevealed" and c.ceiling == pytest.approx(0.75)


def test_the_uniform_pick_counts_distinct_context_values() -> None:
    # K = 3 with a repeated value (the legacy layout draws with replacement): 2 distinct
    tokens = torch.tensor([[1, 5, 2, 5, 3, 6, 3, 0, 1, 0]])
    targets = torch.full((1, 10), IGNORE)
    targets[0, 6], targets[0, 8] = 6, 5
    c = recall_free_ceilings([TaskBatch(tokens, targets, None)], kv_pairs=3)
    assert c.uniform == pytest.approx(0.5)
    assert c.rules["rank"] == pytest.approx(0.5)  # j=0 -> 5 (miss), j=1 -> 5 (hit)


def test_no_scored_position_gives_zero_and_no_division() -> None:
    t = TaskBatch(torch.ones(1, 8, dtype=torch.long), torch.full((1, 8), IGNORE), None)
    assert recall_free_ceilings([t], 2).ceiling == 0.0


def shortcut_accuracy(batches: list[TaskBatch], kv: int) -> float:
    """Issue 30's guesser, written apart from hubbench.quality.ceilings: answer each query with
    the context value seen most often so far that no earlier query revealed (the token after
    an earlier query), ties to the earliest context value."""
    hits = total = 0
    for b in batches:
        for row, want in zip(b.inputs.tolist(), b.targets.tolist(), strict=True):
            context_values = row[1 : 2 * kv : 2]
            shown: list[int] = []
            for pos, target in enumerate(want):
                if target == IGNORE:
                    continue
                seen = Counter(row[:pos])
                left = [v for v in context_values if v not in shown] or context_values
                guess = sorted(left, key=lambda v: (-seen[v], context_values.index(v)))[0]
                hits += guess == target
                total += 1
                shown.append(row[pos + 1])
    return hits / total


def batches(make, seq: int, kv: int, vocab: int, count: int = 4) -> list[TaskBatch]:
    g = torch.Generator().manual_seed(11)
    return [make(64, seq, kv, vocab, g) for _ in range(count)]


@pytest.mark.parametrize(("seq", "kv", "low"), [(64, 4, 0.45), (128, 8, 0.3)])
def test_the_legacy_shortcut_scores_far_above_one_over_k_on_the_old_layout(
    seq: int, kv: int, low: float
) -> None:
    """Issue 30 measured 0.544 at (64, 4) and 0.388 at (128, 8) with a 64-token vocabulary."""
    old = batches(mqar_legacy_batch, seq, kv, 64)
    score = shortcut_accuracy(old, kv)
    assert score > low > 1.5 / kv
    assert recall_free_ceilings(old, kv).ceiling == pytest.approx(score)


@pytest.mark.parametrize(("seq", "kv"), [(64, 4), (128, 8), (256, 32)])
def test_on_zoologys_layout_the_shortcut_is_no_better_than_the_recorded_ceiling(
    seq: int, kv: int
) -> None:
    new = batches(mqar_batch, seq, kv, 8192)
    c = recall_free_ceilings(new, kv)
    score = shortcut_accuracy(new, kv)
    assert score <= c.ceiling + 1e-12
    assert score == pytest.approx(1 / kv, abs=0.35 / kv)  # nothing revealed: a blind pick
    assert c.uniform == pytest.approx(1 / kv)
    assert c.ceiling < 1 / kv + 0.05  # the rank rule's edge is small
