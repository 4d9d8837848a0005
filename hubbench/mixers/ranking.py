"""Ranking scores so that paths which round differently pick the same items.

A batched forward (a GEMM over many queries), a one-token decode step and a per-token reference
sum the same products in other orders; their scores then differ in the last bits. Ranked on the
raw scores, an exact tie could break one way in one path and the other way in another. Ranked on
`rank_key(score)`, the score rounded to RANK_BITS *significant* bits, scores that differ only by
rounding rank alike (unless they straddle a rounding step), and exact ties break by index the
same way on every path. Relative, not absolute rounding: an absolute grid (round(s * 2^16))
merged small but distinct scores (NSA's selection probabilities of 0.00400 and 0.00401 tied, and
29 of 128 query blocks of a random layer at n = 8192 picked other blocks than the exact ranking).
MoBA's and NSA's block selections use it.
"""

from __future__ import annotations

import torch
from torch import Tensor

RANK_BITS = {torch.float64: 30, torch.float32: 16}  # significant bits the ranking keeps


def rank_key(s: Tensor) -> Tensor:
    """Scores rounded to RANK_BITS significant bits of their dtype (fp64 30, else 16).

    Veltkamp's split: with c = 2^(p - bits) + 1 (p the dtype's precision), t = c s and
    t - (t - s) is s rounded to nearest with `bits` significant bits: three IEEE operations that
    a reference repeats exactly, and far cheaper than frexp / round / ldexp over the
    O(n^2 / block) scores.
    """
    bits = RANK_BITS.get(s.dtype, 16)
    precision = 53 if s.dtype == torch.float64 else 24  # significand bits, implicit one too
    c = 2.0 ** (precision - bits) + 1.0
    t = s * c
    return t.sub_(t - s)
