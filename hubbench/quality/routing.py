"""Routing precision and recall of a top-k router (HubRouter's council selection) on MQAR.

HubRouter splits a sequence into chunks of C tokens; the queries of chunk c attend to the
router's members, positions before the chunk start c*C that it selected, plus the causal local
window inside the chunk (not a routing decision). For sequence b and chunk c:

- needed(b, c): the positions the scored queries of chunk c need (the queried key and its value
  in the context, TaskBatch.needed) that lie before c*C; positions inside the chunk are served
  by the local window and do not count. Only (b, c) with a non-empty needed set count.
- selected(b, c): the distinct valid member positions.

    precision = sum |selected & needed| / sum |selected|
    recall    = sum |selected & needed| / sum |needed|

The random baseline draws |selected(b, c)| positions uniformly without replacement from the
c*C eligible positions; its expected overlap is |selected| |needed| / (c*C), and

    random_precision = sum E[overlap] / sum |selected|
    random_recall    = sum E[overlap] / sum |needed|

(exact expectations, not a sample). Sums run over sequences, chunks, batches and, for a model's
figure, its hub layers: `RoutingCounts` adds, and `score()` divides once at the end. A ratio
is None when no (b, c) counted, or when its denominator is 0 (precision of a router that
selected nothing valid in any counted chunk). The non-causal council has one chunk starting at
0, so nothing counts there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MASK_ELEMENTS = 1 << 24  # (sequences, chunks, positions) booleans built at a time


@dataclass(frozen=True)
class RoutingScore:
    precision: float | None  # None when no scored query needed a position before its chunk
    recall: float | None
    random_precision: float | None  # exact expectation for a uniform selection of that size
    random_recall: float | None
    chunks: int  # (sequence, chunk) pairs that counted


@dataclass(frozen=True)
class RoutingCounts:
    """The raw sums behind a RoutingScore, over counted (sequence, chunk) pairs only."""

    overlap: float = 0.0
    selected: float = 0.0
    needed: float = 0.0
    expected_overlap: float = 0.0
    chunks: int = 0

    def __add__(self, other: RoutingCounts) -> RoutingCounts:
        return RoutingCounts(
            self.overlap + other.overlap,
            self.selected + other.selected,
            self.needed + other.needed,
            self.expected_overlap + other.expected_overlap,
            self.chunks + other.chunks,
        )

    def score(self) -> RoutingScore:
        def ratio(a: float, b: float) -> float | None:
            return a / b if self.chunks and b > 0 else None

        return RoutingScore(
            precision=ratio(self.overlap, self.selected),
            recall=ratio(self.overlap, self.needed),
            random_precision=ratio(self.expected_overlap, self.selected),
            random_recall=ratio(self.expected_overlap, self.needed),
            chunks=self.chunks,
        )


def routing_counts(
    positions: Tensor, valid: Tensor, chunk: int, needed: Tensor, scored: Tensor
) -> RoutingCounts:
    """The sums of the module docstring for one forward of one router layer.

    positions, valid: (B, nc, k') members per chunk and whether each is real; needed: (B, n, 2)
    (-1 where not scored); scored: (B, n) bool. n may be shorter than nc * chunk (padding).
    Computed on positions' device.
    """
    B, nc, _ = positions.shape
    n = needed.shape[1]
    if chunk < 1:
        raise ValueError(f"routing_counts: chunk must be >= 1 (got {chunk})")
    if valid.shape != positions.shape or needed.shape[0] != B or scored.shape != needed.shape[:2]:
        raise ValueError(
            f"routing_counts: positions {tuple(positions.shape)}, valid {tuple(valid.shape)}, "
            f"needed {tuple(needed.shape)}, scored {tuple(scored.shape)} do not agree"
        )
    needed, scored = needed.to(positions.device), scored.to(positions.device)
    per = max(1, MASK_ELEMENTS // max(1, nc * n))
    total = RoutingCounts()
    for b0 in range(0, B, per):
        sl = slice(b0, b0 + per)
        total = total + _counts(positions[sl], valid[sl], chunk, needed[sl], scored[sl], n)
    return total


def _counts(
    positions: Tensor, valid: Tensor, chunk: int, needed: Tensor, scored: Tensor, n: int
) -> RoutingCounts:
    B, nc, _ = positions.shape
    dev = positions.device
    start = torch.arange(nc, device=dev) * chunk  # (nc,) first position of each chunk
    # needed(b, c) as a (B, nc, n) mask: each scored query's needed positions, in its own chunk
    need = torch.zeros(B, nc, n, dtype=torch.bool, device=dev)
    b, t = scored.nonzero(as_tuple=True)
    c = t // chunk
    inside = c < nc  # a scored position past the last chunk has no members to judge
    b, t, c = b[inside], t[inside], c[inside]
    for j in range(needed.shape[-1]):
        p = needed[b, t, j]
        keep = (p >= 0) & (p < c * chunk)
        need[b[keep], c[keep], p[keep]] = True
    sel = torch.zeros(B, nc, n, dtype=torch.bool, device=dev)
    bb, cc, kk = valid.nonzero(as_tuple=True)
    p = positions[bb, cc, kk]
    keep = (p >= 0) & (p < n)
    sel[bb[keep], cc[keep], p[keep]] = True
    counted = need.any(-1)  # (B, nc)
    n_need = need.sum(-1).double()
    n_sel = sel.sum(-1).double()
    overlap = (need & sel).sum(-1).double()
    eligible = start.double().clamp(min=1).expand(B, nc)
    expected = n_sel * n_need / eligible
    return RoutingCounts(
        overlap=float(overlap[counted].sum()),
        selected=float(n_sel[counted].sum()),
        needed=float(n_need[counted].sum()),
        expected_overlap=float(expected[counted].sum()),
        chunks=int(counted.sum()),
    )


def routing_score(
    positions: Tensor, valid: Tensor, chunk: int, needed: Tensor, scored: Tensor
) -> RoutingScore:
    """`routing_counts(...).score()`: the score of one forward of one layer. To pool over
    batches or layers, add the RoutingCounts and score the sum instead."""
    return routing_counts(positions, valid, chunk, needed, scored).score()
