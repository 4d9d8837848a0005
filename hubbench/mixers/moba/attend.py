"""MoBA's attention given the selection: one softmax over the query's own block (causal) and
the key blocks it selected.

The own block is dense per block: (block x block) scores with a causal mask, as in a blocked
causal attention. Selected blocks are not gathered per query (that would copy
top x block x d_h keys for every query, 16k numbers per query and head at top 3, block 64,
d_h 64); instead the (query, block) pairs are sorted by block and packed into tiles of TILE
queries that share one key block (MoBA's varlen grouping, padded per block to whole tiles), so
each tile is one (TILE x d_h) @ (d_h x block) matmul. Scores go back to the (query, slot)
layout, are concatenated with the own block's and go through one softmax; the probabilities go
back into the tiles for the values. Everything is plain autograd; every tensor is
O(n * (top + 1) * block) at most, and the padding adds at most TILE - 1 queries per
(sequence, head, block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TILE = 32  # queries per tile: one key block each


@dataclass
class Tiles:
    """Where each (query, slot) pair sits in the tile array (no gradient; built from `sel`).

    group: (tiles,) the key block of each tile, as g * nb + block (g = sequence x head);
    source: (tiles * TILE,) the pair in each tile row, `pairs` (one past the last) for padding;
    place: (pairs,) the tile row of each pair (0 for an empty slot, which the mask hides);
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
    source = torch.full((tile_group.numel() * TILE,), pairs, dtype=torch.long, device=dev)
    source[row] = live
    place = torch.zeros(pairs, dtype=torch.long, device=dev)
    place[live] = row
    return Tiles(tile_group, source, place, valid)


def _with_zero_row(x: Tensor) -> Tensor:
    """x (m, ...) with a zero row appended: the source of a tile's padding rows."""
    return torch.cat((x, x.new_zeros(1, *x.shape[1:])))


def block_attention(
    q: Tensor, k: Tensor, v: Tensor, sel: Tensor, block: int, causal: bool = True
) -> Tensor:
    """(B, h, n, d_h) -> (B, h, n, d_h): query t attends keys c*block..t of its own block
    c = t // block and every key of the blocks in sel[..., t, :] (-1 = none).

    Selected blocks are whole; keys past n (a leaky control's partial or future block) are
    masked. Softmax in >= fp32, matmuls in the input dtype.
    """
    B, h, n, dh = q.shape
    G, top = B * h, sel.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    scale = 1.0 / math.sqrt(dh)
    kb = F.pad(k, (0, 0, 0, pad)).reshape(G * nb, block, dh)  # key blocks
    vb = F.pad(v, (0, 0, 0, pad)).reshape(G * nb, block, dh)
    qb = F.pad(q, (0, 0, 0, pad)).reshape(G, nb, block, dh)
    offset = torch.arange(block, device=q.device)
    pos = torch.arange(n, device=q.device)

    own = qb @ kb.view(G, nb, block, dh).transpose(-2, -1)  # (G, nb, block, block)
    parts = [own.reshape(G, nb * block, 1, block)[:, :n]]
    allowed = [(offset <= (pos % block)[:, None]).expand(G, n, block).unsqueeze(2)]
    tiles = _tiles(sel.reshape(G, n, top), nb) if top else None
    if tiles is not None and tiles.count:
        # pair p is query p // top; the padding's index (one past the last pair) maps to the
        # zero row after the last query
        qt = _with_zero_row(q.reshape(G * n, dh))[tiles.source // top].view(-1, TILE, dh)
        st = qt @ kb[tiles.group].transpose(-2, -1)  # (tiles, TILE, block)
        parts.append(st.reshape(-1, block)[tiles.place].view(G, n, top, block))
        key = sel.reshape(G, n, top, 1) * block + offset  # (G, n, top, block)
        allowed.append(tiles.valid.unsqueeze(-1) & (key < n))
    else:
        tiles = None
    scores = torch.cat(parts, 2) * scale  # (G, n, 1 + slots, block)
    scores = scores.masked_fill(~torch.cat(allowed, 2), float("-inf"))
    acc = torch.promote_types(scores.dtype, torch.float32)
    p = torch.softmax(scores.to(acc).flatten(2), dim=-1).to(v.dtype).view(scores.shape)

    p_own = F.pad(p[:, :, 0], (0, 0, 0, pad)).view(G, nb, block, block)
    y = (p_own @ vb.view(G, nb, block, dh)).view(G, nb * block, dh)[:, :n]  # (G, n, d_h)
    if tiles is not None:
        pt = _with_zero_row(p[:, :, 1:].reshape(G * n * top, block))[tiles.source]
        yt = pt.view(-1, TILE, block) @ vb[tiles.group]  # (tiles, TILE, d_h)
        yp = yt.reshape(-1, dh)[tiles.place].view(G, n, top, dh)
        y = y + torch.where(tiles.valid.unsqueeze(-1), yp, 0.0).sum(2)
    return y.reshape(B, h, n, dh)
