"""Which selection blocks a query block reads: the one rule the forward, the decode step and the
per-token reference share (as HubRouter's paths share `rank_key`), so they pick the same blocks.

Scores come from the compressed branch's attention probabilities P (mean over heads) of the
query block's first query. Compressed block c covers tokens [c*stride, c*stride + cmp_block);
its probability is spread over the selection blocks it overlaps, in proportion to the overlap
(the paper's Eq. 9 is this rule for its sizes). Ranking: the query's own block first, then the
first block, then by score rounded to 16 (fp32) or 30 (fp64) significant bits
(hubbench.mixers.ranking.rank_key), lower block index first among equal keys. Blocks after
the query's own are never chosen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hubbench.mixers.ranking import rank_key


def overlap_weights(n_cmp: int, cmp_block: int, stride: int, block: int, device=None):
    """For each offset r: (selection block j (n_cmp,), weight (n_cmp,)) of compressed block c's
    overlap with selection block j = c*stride // block + r, as a fraction of cmp_block."""
    start = torch.arange(n_cmp, device=device) * stride
    out = []
    for r in range(-(-cmp_block // block) + 1):
        j = start // block + r
        lo = torch.maximum(start, j * block)
        hi = torch.minimum(start + cmp_block, (j + 1) * block)
        out.append((j, (hi - lo).clamp(min=0)))
    return out


def block_scores(P: Tensor, n_blocks: int, cmp_block: int, stride: int, block: int) -> Tensor:
    """P (B, R, n_cmp) -> scores (B, R, n_blocks) of the selection blocks."""
    scores = P.new_zeros(*P.shape[:-1], n_blocks)
    for j, w in overlap_weights(P.shape[-1], cmp_block, stride, block, P.device):
        ok = (j < n_blocks) & (w > 0)
        weight = (w[ok].to(P.dtype) / cmp_block).to(P.dtype)
        scores.index_add_(-1, j[ok], P[..., ok] * weight)
    return scores


def select_blocks(
    P: Tensor, own: Tensor, n_blocks: int, top: int, cmp_block: int, stride: int, block: int
) -> Tensor:
    """Selected block indices (B, R, min(top, n_blocks)), -1 where fewer blocks are available.

    P: (B, R, n_cmp) mean compressed probabilities of each row's query (0 where invisible);
    own: (R,) the query block of each row; blocks 0..own are available.
    """
    key = rank_key(block_scores(P, n_blocks, cmp_block, stride, block))  # (B, R, n_blocks)
    j = torch.arange(n_blocks, device=P.device)
    i = own.view(-1, 1)
    key = torch.where(j == 0, torch.finfo(key.dtype).max, key)
    key = torch.where(j == i, float("inf"), key)
    key = torch.where(j > i, float("-inf"), key)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    chosen = order[..., : min(top, n_blocks)]
    return torch.where(chosen <= i, chosen, -1)
