"""MoBA's attention given the selection: one softmax over the query's own block (causal) and
the key blocks it selected, computed as softmaxes over parts merged by their log-sum-exp.

The own block is dense per block: (block x block) scores with a causal mask, as in a blocked
causal attention. Selected blocks are not gathered per query (that would copy
top x block x d_h keys for every query, 12k numbers per query and head at top 3, block 64,
d_h 64); instead the (query, block) pairs are sorted by key block and packed into tiles of TILE
queries that share one key block (MoBA's varlen grouping, padded per block to whole tiles), so
each tile is one (TILE x d_h) @ (d_h x block) matmul.

Each part (a query's own block, each of its selected blocks) gets its own softmax output o_m
and log-sum-exp l_m; y = sum_m softmax_m(l) o_m is exactly the softmax over the union of their
keys (the parts are disjoint), which is how MoBA's efficient version and flash attention combine
blocks too. Parts are worked in chunks of about ATTEND_WORK_ELEMS scores (query blocks for the
own part, runs of tiles for the selected ones), so a chunk's scores, mask, softmax and products
stay in cache: written as one (n x (top + 1) x block) softmax, each of those passes streamed the
whole score tensor through memory and the step time grew as n^1.3 from 4k to 16k. Queries,
tiles and keys are split once (`split`, whose backward is one concatenation), never sliced per
chunk, so no chunk's backward writes a gradient the size of the sequence. Everything is plain
autograd; every tensor is O(n * (top + 1) * block) at most, and the tile padding adds at most
TILE - 1 rows per (sequence x head, block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TILE = 64  # queries per tile: one key block each (64 ran 5-20% faster than 32 at n 4k-16k)
ATTEND_WORK_ELEMS = 1 << 18  # scores per chunk (own: heads x queries x block; tiles x TILE x block)


@dataclass
class Tiles:
    """Where each (query, slot) pair sits in the tile array (no gradient; built from `sel`).

    group: (tiles,) the key block of each tile, as g * nb + block (g = sequence x head);
    source: (tiles * TILE,) the pair in each tile row; padding rows hold pair 0 (their results
        are never read back, so they get no gradient either);
    place: (pairs,) the tile row of each pair (0 for an empty slot, whose weight is zero);
    valid: (G, n, top) whether the slot holds a block.
    """

    group: Tensor
    source: Tensor
    place: Tensor
    valid: Tensor

    @property
    def count(self) -> int:
        return self.group.numel()


def _tiles(sel: Tensor, nb: int) -> Tiles:
    """Sort the valid pairs of sel (G, n, top) by key block, pad each block's run to TILE."""
    G = sel.shape[0]
    dev = sel.device
    valid = sel >= 0
    group = (torch.arange(G, device=dev).view(G, 1, 1) * nb + sel).reshape(-1)  # (P,)
    pairs = group.numel()
    live = valid.reshape(-1).nonzero().squeeze(1)  # pair indices, (g, t, slot) order
    by_block, order = torch.sort(group[live], stable=True)  # queries in order within a block
    live = live[order]
    counts = torch.bincount(by_block, minlength=G * nb)
    tiles_per = (counts + TILE - 1) // TILE
    tile_start = torch.cumsum(tiles_per, 0) - tiles_per
    rank = torch.arange(live.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[by_block]
    row = (tile_start[by_block] + rank // TILE) * TILE + rank % TILE
    tile_group = torch.repeat_interleave(torch.arange(G * nb, device=dev), tiles_per)
    source = torch.zeros(tile_group.numel() * TILE, dtype=torch.long, device=dev)
    source[row] = live
    place = torch.zeros(pairs, dtype=torch.long, device=dev)
    place[live] = row
    return Tiles(tile_group, source, place, valid)


def _part(scores: Tensor, allowed: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of masked scores (..., m, keys) applied to values (..., keys, d_h), and the
    log-sum-exp (..., m) of the scores, in >= fp32."""
    acc = torch.promote_types(scores.dtype, torch.float32)
    s = scores.masked_fill(~allowed, float("-inf")).to(acc)
    return torch.softmax(s, dim=-1).to(values.dtype) @ values, torch.logsumexp(s, dim=-1)


def block_attention(
    q: Tensor, k: Tensor, v: Tensor, sel: Tensor, block: int, causal: bool = True
) -> Tensor:
    """(B, h, n, d_h) -> (B, h, n, d_h): query t attends keys c*block..t of its own block
    c = t // block and every key of the blocks in sel[..., t, :] (-1 = none), one softmax.

    Selected blocks are whole; keys past n (a leaky control's partial or future block) are
    masked. Softmax statistics in >= fp32, matmuls in the input dtype. `causal` is not read:
    the selection decides what is visible.
    """
    del causal
    B, h, n, dh = q.shape
    G, top = B * h, sel.shape[-1]
    nb = -(-n // block)
    npad = nb * block
    q = q * (1.0 / math.sqrt(dh))  # the softmax scale, on the small side of QK^T
    qp, kp, vp = (F.pad(x, (0, 0, 0, npad - n)).reshape(G, npad, dh) for x in (q, k, v))
    offset = torch.arange(block, device=q.device)
    causal_mask = offset <= offset[:, None]  # (query a, key b): b <= a

    rows = min(npad, max(block, ATTEND_WORK_ELEMS // (G * block) // block * block))
    own_o, own_l = [], []
    for qc, kc, vc in zip(*(x.split(rows, dim=1) for x in (qp, kp, vp)), strict=True):
        bc = qc.shape[1] // block
        qb, kb, vb = (x.view(G, bc, block, dh) for x in (qc, kc, vc))
        o, lse = _part(qb @ kb.transpose(-2, -1), causal_mask, vb)  # (G, bc, block, .)
        own_o.append(o.view(G, -1, dh))
        own_l.append(lse.view(G, -1))
    o_own = torch.cat(own_o, 1)[:, :n]  # (G, n, d_h)
    tiles = _tiles(sel.reshape(G, n, top), nb) if top else None
    if tiles is None or tiles.count == 0:
        return o_own.reshape(B, h, n, dh)

    kb, vb = kp.reshape(G * nb, block, dh), vp.reshape(G * nb, block, dh)
    qt = q.reshape(G * n, dh)[tiles.source // top].view(-1, TILE, dh)  # pair p: query p // top
    kt, vt = kb[tiles.group], vb[tiles.group]  # (tiles, block, d_h)
    key_ok = ((tiles.group % nb) * block).view(-1, 1, 1) + offset < n  # partial / future blocks
    per = max(1, ATTEND_WORK_ELEMS // (TILE * block))
    pair_o, pair_l = [], []
    for qc, kc, vc, okc in zip(*(x.split(per) for x in (qt, kt, vt, key_ok)), strict=True):
        o, lse = _part(qc @ kc.transpose(-2, -1), okc, vc)  # (tiles, TILE, .)
        pair_o.append(o.reshape(-1, dh))
        pair_l.append(lse.reshape(-1))
    o_pair = torch.cat(pair_o)[tiles.place].view(G, n, top, dh)
    l_pair = torch.cat(pair_l)[tiles.place].view(G, n, top)
    l_pair = torch.where(tiles.valid, l_pair, float("-inf"))  # an empty slot weighs nothing
    lse = torch.cat((torch.cat(own_l, 1)[:, :n].unsqueeze(-1), l_pair), -1)  # (G, n, 1 + top)
    w = torch.softmax(lse, dim=-1).to(v.dtype)  # each part's share of the union's softmax
    y = w[..., 0:1] * o_own + (w[..., 1:].unsqueeze(-1) * o_pair).sum(2)
    return y.reshape(B, h, n, dh)
