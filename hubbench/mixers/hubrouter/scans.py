"""HubRouter's two log-depth scans over chunks, and the ranking both paths share.

- encode: per-chunk softmax statistics (max, sum of exps, weighted value sums per hub and head)
  merged by an exclusive prefix (`prefix_combine_blocked`: masked matmuls inside blocks of 16
  chunks, a Hillis-Steele scan over block totals); chunk c reads sink + chunks 0..c-1;
- select: per-chunk top-k candidates merged by a Hillis-Steele "top-k of the union" scan
  (`prefix_topk`, O(n/C * k * log(n/C))), so chunk c sees the top-k of chunks 0..c-1.

The parallel forward (layer.py), the recurrent state (decode.py) and the per-token reference
(naive.py) all rank members with `rank_key` and `top_ordered`, so that they pick the same ones.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the softmax statistics and the scores: fp64 for fp64 input, else fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --- encode: per-chunk softmax statistics and their prefix combine -----------------------------


def combine(
    m1: Tensor, l1: Tensor, o1: Tensor, m2: Tensor, l2: Tensor, o2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge two partial softmaxes (max, sum of exps, weighted value sum); associative."""
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)  # (B, c, hM)
    return m, a1 * l1 + a2 * l2, a1.unsqueeze(-1) * o1 + a2.unsqueeze(-1) * o2


def prefix_combine(m: Tensor, l: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inclusive scan of `combine` along dim 1 (Hillis-Steele, log2(length) steps).

    m, l: (B, c, hM); o: (B, c, hM, d_h). Position c combines entries 0..c through a tree that
    depends on c only, so a prefix of the input gives bit-identical results.
    """
    length, off = m.shape[1], 1
    while off < length:
        mm, ll, oo = combine(
            m[:, :-off], l[:, :-off], o[:, :-off], m[:, off:], l[:, off:], o[:, off:]
        )
        m = torch.cat((m[:, :off], mm), 1)
        l = torch.cat((l[:, :off], ll), 1)
        o = torch.cat((o[:, :off], oo), 1)
        off *= 2
    return m, l, o


def prefix_combine_blocked(
    m: Tensor, l: Tensor, o: Tensor, block: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """Same result as `prefix_combine`, in fewer, larger ops (the fast twin used in forward).

    Entries are cut into blocks of `block`. Inside a block, entry i combines entries j <= i in
    one masked matmul, each weighted exp(m_j - R_i) with R_i the running max up to i (so every
    weight is <= 1). Block totals are scanned with `prefix_combine` (log2(#blocks) steps) and
    merged into the blocks after them. Work is O(length * block), linear in the length.
    """
    B, length, K = m.shape
    if length <= block:
        return _blocked_inner(m.unsqueeze(1), l.unsqueeze(1), o.unsqueeze(1))
    nb = -(-length // block)
    pad = nb * block - length
    if pad:  # entries after the last real one; they never reach a real prefix
        m = torch.cat((m, m[:, -1:].expand(B, pad, K)), 1)
        l = torch.cat((l, l.new_zeros(B, pad, K)), 1)
        o = torch.cat((o, o.new_zeros(B, pad, K, o.shape[-1])), 1)
    mi, li, oi = _blocked_inner(
        m.view(B, nb, block, K), l.view(B, nb, block, K), o.view(B, nb, block, K, -1)
    )  # each (B, nb * block, ...), inclusive within its block
    mi, li, oi = (t.view(B, nb, block, *t.shape[2:]) for t in (mi, li, oi))
    # inclusive prefix of block totals; block b > 0 adds the prefix through block b-1
    tm, tl, to = prefix_combine(mi[:, :-1, -1], li[:, :-1, -1], oi[:, :-1, -1])
    first = (mi[:, :1], li[:, :1], oi[:, :1])
    rest = combine(
        tm.unsqueeze(2),
        tl.unsqueeze(2),
        to.unsqueeze(2),
        mi[:, 1:],
        li[:, 1:],
        oi[:, 1:],
    )
    out = [torch.cat((a, b), 1).flatten(1, 2)[:, :length] for a, b in zip(first, rest, strict=True)]
    return out[0], out[1], out[2]


def _blocked_inner(m: Tensor, l: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inclusive prefix inside each block: m, l (B, nb, G, K); o (B, nb, G, K, d_h)."""
    G = m.shape[2]
    r = m.cummax(dim=2).values  # (B, nb, G, K) reference of reader i
    tri = torch.ones(G, G, dtype=torch.bool, device=m.device).tril().view(1, 1, G, G, 1)
    diff = m.unsqueeze(2) - r.unsqueeze(3)  # (B, nb, G_i, G_j, K): m_j - R_i
    w = torch.exp(diff.masked_fill(~tri, float("-inf")))  # 0 for j > i, exactly
    l_in = torch.einsum("bnijk,bnjk->bnik", w, l)
    o_in = torch.einsum("bnijk,bnjke->bnike", w, o)
    return r.flatten(1, 2), l_in.flatten(1, 2), o_in.flatten(1, 2)


# --- select: per-chunk candidates and their prefix top-k merge --------------------------------


RANK_BITS = {torch.float64: 30, torch.float32: 16}  # significant bits the ranking keeps


def rank_key(s: Tensor) -> Tensor:
    """Scores rounded to RANK_BITS significant bits, for ranking only (-inf stays -inf)."""
    bits = RANK_BITS.get(s.dtype, 16)
    mant, exp = torch.frexp(s)
    key = torch.ldexp(torch.round(mant * 2.0**bits) / 2.0**bits, exp)
    return torch.where(torch.isfinite(s), key, s)


def top_ordered(vals: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest along the last dim and their indices, ties to the lower index.

    `torch.topk` breaks ties arbitrarily (and differently for differently shaped inputs), which
    would let two paths over the same scores pick different members; a stable sort does not.
    """
    v, i = torch.sort(vals, dim=-1, descending=True, stable=True)
    return v[..., :k], i[..., :k]


def prefix_topk(vals: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Inclusive scan of "top-k of the union" along dim 1 (Hillis-Steele).

    vals, pos: (B, c, k) candidate scores (-inf = empty slot) and positions. Each step merges two
    k-sets with a top-k over 2k, so the cost is O(c k log c). The earlier set goes first, so
    ties resolve to the lower position (`top_ordered`).
    """
    length, off = vals.shape[1], 1
    while off < length:
        v2 = torch.cat((vals[:, :-off], vals[:, off:]), -1)  # (B, c - off, 2k)
        p2 = torch.cat((pos[:, :-off], pos[:, off:]), -1)
        top_v, top_i = top_ordered(v2, k)
        vals = torch.cat((vals[:, :off], top_v), 1)
        pos = torch.cat((pos[:, :off], p2.gather(-1, top_i)), 1)
        off *= 2
    return vals, pos


def expand_members(pos: Tensor, valid: Tensor, r: int, limit: Tensor) -> tuple[Tensor, Tensor]:
    """Add r right neighbours of each valid member, keep those `< limit`, mask duplicates.

    pos, valid: (B, c, k); limit: broadcastable to (B, c, 1). Returns sorted positions and the
    validity mask, both (B, c, k (1 + r)); invalid slots hold position 0.
    """
    if r == 0:
        return torch.where(valid, pos, 0), valid
    offs = torch.arange(r + 1, device=pos.device)
    cand = pos.unsqueeze(-1) + offs  # (B, c, k, r + 1)
    ok = valid.unsqueeze(-1) & (cand < limit.unsqueeze(-1))
    big = torch.iinfo(pos.dtype).max
    cand = torch.where(ok, cand, big).flatten(-2)  # (B, c, k (1 + r))
    cand, _ = cand.sort(dim=-1)
    dup = torch.zeros_like(cand, dtype=torch.bool)
    dup[..., 1:] = cand[..., 1:] == cand[..., :-1]
    keep = (cand != big) & ~dup
    return torch.where(keep, cand, 0), keep
