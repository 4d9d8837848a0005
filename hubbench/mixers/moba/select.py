"""Block selection: each query scores key blocks by q . mean(block keys) and keeps the best.

Causal: the candidates of query t are the complete blocks before its own (blocks j < t // block),
so a block is scored only once all its keys are in the past. Leaky (`causal=False`, the
family's control): every block but its own, future and partial ones included.

Ranking is on `rank_key(score)` (the score rounded to RANK_BITS significant bits), ties to the
lower block index. The forward (a GEMM over many queries), the decode step (one query) and the
reference round their dot products differently; rounded, scores that differ only by rounding
rank alike in all three unless they straddle a rounding step, and exact ties (identical block
means) resolve the same way everywhere. Scores are computed in >= fp32 (as MoBA does for its
gate); selection carries no gradient (it only decides which keys are attended).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.ranking import RANK_BITS, rank_key  # noqa: F401 (RANK_BITS: the package's)

SELECT_WORK_ELEMS = 1 << 18  # scores at once (heads x queries x blocks): 2 MiB of int64 keys
_LOW = (1 << 23) - 1  # a 30-bit key leaves 23 mantissa bits zero: room for the tie-break
_NONE = torch.iinfo(torch.int64).min


def ordered_keys(scores: Tensor, candidate: Tensor) -> Tensor:
    """int64 keys whose order is (rounded score descending, then block index ascending).

    scores (..., nb) and candidate (broadcastable bool): non-candidates get the smallest int64.
    The rounded score as float64 has its low 23 mantissa bits zero (cleared for subnormal
    scores, which the split cannot round), so its bits, made monotone
    (the 63 low bits flipped for negatives), step by multiples of 2^23 between distinct scores;
    subtracting the block index j < 2^23 orders ties to the lower index without reordering
    anything else, and `topk` on the key needs no tie rule of its own.
    """
    nb = scores.shape[-1]
    if nb > _LOW:
        raise ValueError(f"moba: at most {_LOW} blocks can be ranked, got {nb}")
    r = rank_key(scores).to(torch.float64).add_(0.0)  # + 0.0: -0.0 ties with +0.0
    bits = r.view(torch.int64) & ~_LOW  # a no-op but for subnormals, which Veltkamp leaves
    key = torch.where(bits < 0, bits ^ 0x7FFF_FFFF_FFFF_FFFF, bits)
    key -= torch.arange(nb, device=scores.device)
    return key.masked_fill_(~candidate, _NONE)


def block_means(k: Tensor, block: int, complete_only: bool) -> Tensor:
    """Mean key per block (B, h, nb, d_h) in >= fp32; a partial last block is averaged over
    the keys it has (only the leaky control reads one)."""
    B, h, n, dh = k.shape
    f = torch.promote_types(k.dtype, torch.float32)
    nb = n // block if complete_only else -(-n // block)
    kp = F.pad(k[:, :, : nb * block], (0, 0, 0, max(0, nb * block - n))).to(f)
    counts = (n - torch.arange(nb, device=k.device) * block).clamp(max=block).to(f)
    return kp.view(B, h, nb, block, dh).sum(-2) / counts[:, None]


@torch.no_grad()
def select_blocks(q: Tensor, k: Tensor, block: int, top: int, causal: bool = True) -> Tensor:
    """Block indices (B, h, n, t) each query attends besides its own, -1 for an empty slot.

    q, k (B, h, n, d_h), rotated. t = min(top, blocks - 1) slots; a query with fewer candidates
    than `top` takes them all. Work is chunked over queries (O(n^2 / block) scores in all,
    never more than SELECT_WORK_ELEMS at once).
    """
    B, h, n, _ = q.shape
    nb = -(-n // block)
    slots = min(top, max(nb - 1, 0))
    sel = torch.full((B, h, n, slots), -1, dtype=torch.long, device=q.device)
    if slots == 0:
        return sel
    means = block_means(k, block, complete_only=causal)  # (B, h, nc, d_h)
    f = means.dtype
    rows = max(block, SELECT_WORK_ELEMS // max(1, B * h * nb) // block * block)
    for t0 in range(0, n, rows):
        t1 = min(n, t0 + rows)
        own = torch.arange(t0, t1, device=q.device) // block  # (Q,)
        ncand = min(means.shape[2], (t1 - 1) // block) if causal else means.shape[2]
        take = min(slots, ncand)
        if take == 0:
            continue
        with torch.autocast(q.device.type, enabled=False):  # the gate stays in >= fp32
            scores = q[:, :, t0:t1].to(f) @ means[:, :, :ncand].transpose(-2, -1)  # (B,h,Q,c)
        j = torch.arange(ncand, device=q.device)
        candidate = j < own[:, None] if causal else j != own[:, None]  # (Q, c)
        vals, idx = ordered_keys(scores, candidate).topk(take, dim=-1)
        sel[:, :, t0:t1, :take] = torch.where(vals > _NONE, idx, -1)
    return sel
