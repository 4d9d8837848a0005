"""Attention of query blocks over per-block key sets, memory-bounded in both passes.

All three NSA branches are one computation: queries cut into blocks of `block` rows, each block
attending to a key set (a list of key indices, the same for every row of the block), masked per
(query position t, key j) by two per-key bounds: key j is visible to t when
`key_from[j] <= t <= key_until[j]`. The branches differ only in the key sets and the bounds:

- compressed: keys are the compressed tokens, every block reads a prefix of them (`idx=None`),
  `key_from` = the position at which a compressed block is complete;
- selected: keys are the tokens of the selected blocks (gathered), `key_from[j] = j`;
- sliding window: keys are the window around the block, `key_until[j] = j + window - 1`.

`blocked_attention` is a `torch.autograd.Function` that works like flash attention, chunk by
chunk: forward keeps only the output and the log-sum-exp per row, backward recomputes each
chunk's probabilities and scatters key and value gradients with `index_add_`. A chunk holds at
most CHUNK_ELEMS scores, so peak memory is linear in n whatever the key sets' sizes, and no
n x n (nor n x m) tensor exists at any n. Plain autograd would keep every chunk's probabilities:
for the compressed branch that is n x n / stride, quadratic.

Softmax statistics are kept in fp32 (fp64 for fp64 input); matmuls run in the query's dtype with
autocast off, so a bf16 forward multiplies in bf16 and normalises in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CHUNK_ELEMS = 1 << 21  # scores per chunk (B * h * rows * keys): 8 MiB in fp32
PREFIX_ROWS = 512  # rows per chunk when every block reads a key prefix: bounds the masked waste
NEVER = torch.iinfo(torch.long).max // 2  # a key bound that no position reaches


@dataclass(frozen=True)
class _Chunk:
    """Query blocks [first, last) and the key columns they read."""

    first: int
    last: int
    keys: int


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _plan(
    block_keys: list[int], block: int, batch_heads: int, max_rows: int | None
) -> list[_Chunk]:
    """Group consecutive query blocks into chunks of at most CHUNK_ELEMS scores."""
    chunks: list[_Chunk] = []
    first, keys = 0, 0
    for qb, need in enumerate(block_keys):
        wider = max(keys, need)
        rows = (qb - first + 1) * block
        too_big = batch_heads * rows * wider > CHUNK_ELEMS or (max_rows and rows > max_rows)
        if qb > first and too_big:
            chunks.append(_Chunk(first, qb, keys))
            first, wider = qb, need
        keys = wider
    chunks.append(_Chunk(first, len(block_keys), keys))
    return chunks


class _Ctx:
    """The tensors and plan both passes read (kept on the autograd ctx)."""

    def __init__(self, q, k, key_from, key_until, idx, block, scale, lengths):
        B, h, n, _ = q.shape
        self.B, self.h, self.n, self.m = B, h, n, k.shape[2]
        self.block, self.scale, self.idx = block, scale, idx
        self.key_from, self.key_until = key_from, key_until
        self.nqb = -(-n // block)
        if idx is None:  # a prefix of the keys: as many as the block's last row may see
            last = torch.clamp(torch.arange(1, self.nqb + 1) * block - 1, max=n - 1)
            need = torch.searchsorted(key_from.cpu(), last, right=True).tolist()
            max_rows = PREFIX_ROWS
        else:
            need = [idx.shape[-1]] * self.nqb if lengths is None else lengths.tolist()
            max_rows = None
        self.chunks = _plan(need, block, B * h, max_rows)

    def pad_rows(self, t: Tensor) -> Tensor:
        """(B, h, n, ...) -> (B, h, nqb * block, ...), zero rows after n."""
        extra = self.nqb * self.block - self.n
        if not extra:
            return t
        return torch.cat((t, t.new_zeros(*t.shape[:2], extra, *t.shape[3:])), 2)

    def keys_of(self, c: _Chunk, k: Tensor, v: Tensor):
        """The chunk's keys and values (B, h, G, L, d_h), their bounds (B|1, 1, G, 1, L), and
        the flat scatter index for backward (None for a prefix). G = 1 for a prefix (all rows
        of the chunk read the same keys), else the chunk's query blocks."""
        L = c.keys
        if self.idx is None:
            kf = self.key_from[:L].view(1, 1, 1, 1, L)
            ku = self.key_until[:L].view(1, 1, 1, 1, L)
            return k[:, :, None, :L], v[:, :, None, :L], kf, ku, None
        idx = self.idx[:, c.first : c.last, :L]  # (B|1, G, L)
        valid = (idx >= 0) & (idx < self.m)
        safe = torch.where(valid, idx, 0).expand(self.B, -1, -1)  # (B, G, L)
        kf = torch.where(valid, self.key_from[safe[: idx.shape[0]]], NEVER)
        ku = self.key_until[safe[: idx.shape[0]]]
        base = (torch.arange(self.B * self.h, device=k.device) * self.m).view(self.B, self.h, 1)
        flat = base + safe.reshape(self.B, 1, -1)  # (B, h, G * L) rows of k.view(-1, d_h)
        kg = k.reshape(-1, k.shape[-1])[flat].view(self.B, self.h, *idx.shape[1:], -1)
        vg = v.reshape(-1, v.shape[-1])[flat].view(self.B, self.h, *idx.shape[1:], -1)
        return kg, vg, kf[:, None, :, None, :], ku[:, None, :, None, :], flat

    def rows_of(self, c: _Chunk, t: Tensor) -> Tensor:
        """Rows of the chunk from a padded (B, h, nqb * block, ...) tensor, as (B, h, G, R, ...)."""
        part = t[:, :, c.first * self.block : c.last * self.block]
        groups = 1 if self.idx is None else c.last - c.first
        return part.reshape(self.B, self.h, groups, -1, *t.shape[3:])

    def positions(self, c: _Chunk, device: torch.device) -> Tensor:
        groups = 1 if self.idx is None else c.last - c.first
        t = torch.arange(c.first * self.block, c.last * self.block, device=device)
        return t.view(1, 1, groups, -1, 1)

    def probs(self, c: _Chunk, qc: Tensor, kg: Tensor, kf: Tensor, ku: Tensor, lse: Tensor | None):
        """Scores (fp32+) of the chunk, masked; with `lse` given, the probabilities."""
        s = (qc @ kg.transpose(-1, -2)).to(_acc(qc.dtype)) * self.scale  # (B, h, G, R, L)
        t = self.positions(c, qc.device)
        s = s.masked_fill((kf > t) | (t > ku), float("-inf"))
        if lse is None:
            return s
        return torch.exp(s - lse.unsqueeze(-1))


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_from, key_until, idx, lengths, block, scale):  # type: ignore[override]
        k, v = k.contiguous(), v.contiguous()  # rows are gathered from flat views
        with torch.autocast(q.device.type, enabled=False):
            plan = _Ctx(q, k, key_from, key_until, idx, block, scale, lengths)
            qp = plan.pad_rows(q)
            o = torch.zeros_like(qp)
            lse = qp.new_zeros(qp.shape[:3], dtype=_acc(q.dtype))  # 0 for rows that see no key
            for c in plan.chunks:
                if c.keys == 0:
                    continue
                kg, vg, kf, ku, _ = plan.keys_of(c, k, v)
                s = plan.probs(c, plan.rows_of(c, qp), kg, kf, ku, None)
                m = torch.logsumexp(s, -1)  # (B, h, G, R), -inf where no key is visible
                m = torch.where(torch.isfinite(m), m, 0.0)
                p = torch.exp(s - m.unsqueeze(-1))  # masked keys: exp(-inf) = 0
                rows = slice(c.first * block, c.last * block)
                o[:, :, rows] = (p.to(v.dtype) @ vg).flatten(2, 3)
                lse[:, :, rows] = m.flatten(2, 3)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, o, lse)
        return o[:, :, : q.shape[2]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        plan: _Ctx = ctx.plan
        acc = _acc(q.dtype)
        with torch.autocast(q.device.type, enabled=False):
            qp, go = plan.pad_rows(q), plan.pad_rows(grad.to(q.dtype))
            delta = (go.to(acc) * o.to(acc)).sum(-1)  # (B, h, rows): rowsum(dO * O)
            dq = torch.zeros_like(qp, dtype=acc)
            dk = torch.zeros_like(k, dtype=acc)
            dv = torch.zeros_like(v, dtype=acc)
            for c in plan.chunks:
                if c.keys == 0:
                    continue
                kg, vg, kf, ku, flat = plan.keys_of(c, k, v)
                qc, gc = plan.rows_of(c, qp), plan.rows_of(c, go)
                p = plan.probs(c, qc, kg, kf, ku, plan.rows_of(c, lse))  # (B, h, G, R, L)
                pd = p.to(q.dtype)
                dvg = pd.transpose(-1, -2) @ gc  # (B, h, G, L, d_h)
                dp = (gc @ vg.transpose(-1, -2)).to(acc)
                ds = p * (dp - plan.rows_of(c, delta).unsqueeze(-1)) * plan.scale
                ds = ds.to(q.dtype)
                rows = slice(c.first * plan.block, c.last * plan.block)
                dq[:, :, rows] = (ds @ kg).flatten(2, 3).to(acc)
                dkg = ds.transpose(-1, -2) @ qc  # (B, h, G, L, d_h)
                if flat is None:
                    dk[:, :, : c.keys] += dkg[:, :, 0].to(acc)
                    dv[:, :, : c.keys] += dvg[:, :, 0].to(acc)
                else:
                    dk.view(-1, dk.shape[-1]).index_add_(0, flat.flatten(), _rows(dkg, acc))
                    dv.view(-1, dv.shape[-1]).index_add_(0, flat.flatten(), _rows(dvg, acc))
        n = q.shape[2]
        return dq[:, :, :n].to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *([None] * 6)


def _rows(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.reshape(-1, t.shape[-1]).to(dtype)


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_from: Tensor,
    key_until: Tensor,
    idx: Tensor | None,
    block: int,
    scale: float,
    lengths: Tensor | None = None,
) -> Tensor:
    """Softmax attention of q (B, h, n, d_h) over k, v (B, h, m, d_h) -> (B, h, n, d_h).

    Query block b (rows b*block .. b*block + block - 1) reads keys `idx[:, b]` ((B or 1, nqb,
    L) indices into m; -1 or >= m = no key) or, with `idx=None`, the prefix of keys that its
    last row may see (`key_from` must then be non-decreasing). `lengths` (nqb,) optionally says
    how many leading columns of `idx` each block uses. Query t sees key j when
    key_from[j] <= t <= key_until[j]; a row that sees no key outputs zeros.
    """
    if k.shape[2] == 0 or q.shape[2] == 0:
        return q.new_zeros(q.shape) + 0 * (k.sum() + v.sum())  # keeps k, v in the graph
    return _BlockedAttention.apply(q, k, v, key_from, key_until, idx, lengths, block, scale)
