"""Attention of query blocks over per-block key sets, memory-bounded in both passes.

All three NSA branches are one computation: queries cut into blocks of `block` rows, each block
attending to a key set that is the same for every row of the block, masked per (query position
t, key j) by two per-key bounds: key j is visible to t when `key_from[j] <= t <= key_until[j]`.
The branches differ only in the key sets and the bounds:

- compressed: keys are the compressed tokens, every block reads a prefix of them (`idx=None`),
  `key_from` = the position at which a compressed block is complete;
- selected: keys are the selected blocks' tokens, `key_from[j] = j`;
- sliding window: keys are the aligned units around the block, `key_until[j] = j + window - 1`.

Key sets are lists of *units* of `unit` consecutive keys (a selection block; an aligned piece
of the window), gathered with one `index_select` of whole units: rows of unit * d_h contiguous
values, so the gather is a memcpy of large rows rather than one small row per key.

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
    """Query blocks [first, last) and the key columns (keys or units) they read."""

    first: int
    last: int
    cols: int


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _plan(need: list[int], block: int, per_col: int, max_rows: int | None) -> list[_Chunk]:
    """Group consecutive query blocks into chunks of at most CHUNK_ELEMS scores; `per_col` is
    the scores one row and one column make (B * h * keys per column)."""
    chunks: list[_Chunk] = []
    first, cols = 0, 0
    for qb, want in enumerate(need):
        wider = max(cols, want)
        rows = (qb - first + 1) * block
        too_big = per_col * rows * wider > CHUNK_ELEMS or (max_rows and rows > max_rows)
        if qb > first and too_big:
            chunks.append(_Chunk(first, qb, cols))
            first, wider = qb, want
        cols = wider
    chunks.append(_Chunk(first, len(need), cols))
    return chunks


class _Plan:
    """What both passes read: shapes, key bounds, unit layout and the chunks."""

    def __init__(self, q, k, key_from, key_until, idx, lengths, block, unit, scale):
        B, h, n, dh = q.shape
        self.B, self.h, self.n, self.m, self.dh = B, h, n, k.shape[2], dh
        self.block, self.unit, self.scale, self.idx = block, unit, scale, idx
        self.nqb = -(-n // block)
        self.mu = -(-self.m // unit)  # units of keys (the last one padded)
        pad = self.mu * unit - self.m
        never = key_from.new_full((pad,), NEVER)
        self.key_from = torch.cat((key_from, never))
        self.key_until = torch.cat((key_until, never))
        if idx is None:  # a prefix of the keys: as many as the block's last row may see
            last = torch.clamp(torch.arange(1, self.nqb + 1) * block - 1, max=n - 1)
            need = torch.searchsorted(key_from.cpu(), last, right=True).tolist()
            self.chunks = _plan(need, block, B * h, PREFIX_ROWS)
        else:
            need = [idx.shape[-1]] * self.nqb if lengths is None else lengths.tolist()
            self.chunks = _plan(need, block, B * h * unit, None)

    def pad_rows(self, t: Tensor) -> Tensor:
        """(B, h, n, ...) -> (B, h, nqb * block, ...), zero rows after n."""
        extra = self.nqb * self.block - self.n
        if not extra:
            return t
        return torch.cat((t, t.new_zeros(*t.shape[:2], extra, *t.shape[3:])), 2)

    def pad_units(self, t: Tensor) -> Tensor:
        """(B, h, m, d_h) -> (B * h * mu, unit * d_h): one row per unit of keys."""
        extra = self.mu * self.unit - self.m
        if extra:
            t = torch.cat((t, t.new_zeros(*t.shape[:2], extra, t.shape[3])), 2)
        return t.contiguous().view(-1, self.unit * self.dh)

    def groups(self, c: _Chunk) -> int:
        return 1 if self.idx is None else c.last - c.first

    def rows_of(self, c: _Chunk, t: Tensor) -> Tensor:
        """Rows of the chunk from a padded (B, h, nqb * block, ...) tensor, as (B, h, G, R, ...)."""
        part = t[:, :, c.first * self.block : c.last * self.block]
        return part.reshape(self.B, self.h, self.groups(c), -1, *t.shape[3:])

    def hidden(self, c: _Chunk) -> tuple[Tensor, Tensor | None]:
        """The chunk's mask (B|1, 1, G, R, L), True = not visible, and the unit rows to gather
        ((B, h, G * U) indices into pad_units' rows; None for a prefix)."""
        t = torch.arange(c.first * self.block, c.last * self.block, device=self.key_from.device)
        t = t.view(1, 1, self.groups(c), -1, 1)
        if self.idx is None:
            kf = self.key_from[: c.cols].view(1, 1, 1, 1, -1)
            ku = self.key_until[: c.cols].view(1, 1, 1, 1, -1)
            return (kf > t) | (t > ku), None
        units = self.idx[:, c.first : c.last, : c.cols]  # (B|1, G, U)
        valid = (units >= 0) & (units < self.mu)
        safe = torch.where(valid, units, 0)
        keys = safe.unsqueeze(-1) * self.unit + torch.arange(self.unit, device=t.device)
        kf = torch.where(valid.unsqueeze(-1), self.key_from[keys], NEVER).flatten(-2)
        ku = self.key_until[keys].flatten(-2)  # (B|1, G, L)
        base = torch.arange(self.B * self.h, device=t.device).view(self.B, self.h, 1) * self.mu
        rows = base + safe.expand(self.B, -1, -1).reshape(self.B, 1, -1)
        return (kf[:, None, :, None] > t) | (t > ku[:, None, :, None]), rows

    def keys_of(self, c: _Chunk, k: Tensor, rows: Tensor | None) -> Tensor:
        """(B, h, G, L, d_h) keys (or values) of the chunk; k is (B, h, m, d_h) for a prefix,
        pad_units' rows otherwise."""
        if rows is None:
            return k[:, :, None, : c.cols]
        got = k.index_select(0, rows.flatten())  # (B * h * G * U, unit * d_h)
        return got.view(self.B, self.h, self.groups(c), -1, self.dh)


def _scores(qc: Tensor, kg: Tensor, hidden: Tensor) -> Tensor:
    s = (qc @ kg.transpose(-1, -2)).to(_acc(qc.dtype))  # (B, h, G, R, L); q carries the scale
    return s.masked_fill_(hidden, float("-inf"))


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_from, key_until, idx, lengths, block, unit, scale):  # type: ignore[override]
        with torch.autocast(q.device.type, enabled=False):
            plan = _Plan(q, k, key_from, key_until, idx, lengths, block, unit, scale)
            qs = plan.pad_rows(q * scale)
            ku, vu = (k, v) if idx is None else (plan.pad_units(k), plan.pad_units(v))
            o = torch.zeros_like(qs)
            lse = qs.new_zeros(qs.shape[:3], dtype=_acc(q.dtype))  # 0 for rows seeing no key
            for c in plan.chunks:
                if c.cols == 0:
                    continue
                hidden, rows = plan.hidden(c)
                s = _scores(plan.rows_of(c, qs), plan.keys_of(c, ku, rows), hidden)
                mx = s.amax(-1, keepdim=True)  # (B, h, G, R, 1), -inf where nothing is visible
                mx = torch.where(torch.isfinite(mx), mx, 0.0)
                p = torch.exp_(s.sub_(mx))  # masked keys: exp(-inf) = 0
                total = p.sum(-1, keepdim=True)
                oc = p.to(v.dtype) @ plan.keys_of(c, vu, rows)
                oc = oc / torch.where(total > 0, total, 1.0).to(v.dtype)
                span = slice(c.first * block, c.last * block)
                o[:, :, span] = oc.flatten(2, 3)
                lse[:, :, span] = (mx + torch.log(torch.where(total > 0, total, 1.0))).flatten(2, 4)
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, o, lse)
        return o[:, :, : q.shape[2]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, o, lse = ctx.saved_tensors
        plan: _Plan = ctx.plan
        acc, prefix = _acc(q.dtype), plan.idx is None
        with torch.autocast(q.device.type, enabled=False):
            qs, go = plan.pad_rows(q * plan.scale), plan.pad_rows(grad.to(q.dtype))
            ku, vu = (k, v) if prefix else (plan.pad_units(k), plan.pad_units(v))
            delta = (go.to(acc) * o.to(acc)).sum(-1, keepdim=True)  # rowsum(dO * O)
            dq = torch.zeros_like(qs, dtype=acc)
            dk = torch.zeros(ku.shape, dtype=acc, device=k.device)
            dv = torch.zeros(vu.shape, dtype=acc, device=v.device)
            for c in plan.chunks:
                if c.cols == 0:
                    continue
                hidden, rows = plan.hidden(c)
                kg, vg = plan.keys_of(c, ku, rows), plan.keys_of(c, vu, rows)
                qc, gc = plan.rows_of(c, qs), plan.rows_of(c, go)
                p = torch.exp_(_scores(qc, kg, hidden).sub_(plan.rows_of(c, lse).unsqueeze(-1)))
                dvg = p.to(q.dtype).transpose(-1, -2) @ gc  # (B, h, G, L, d_h)
                ds = (gc @ vg.transpose(-1, -2)).to(acc)  # dP
                ds = ds.sub_(plan.rows_of(c, delta)).mul_(p).to(q.dtype)  # dS / scale
                span = slice(c.first * plan.block, c.last * plan.block)
                dq[:, :, span] = (ds @ kg).flatten(2, 3)
                dkg = ds.transpose(-1, -2) @ qc  # (B, h, G, L, d_h), scale in qc
                if prefix:
                    dk[:, :, : c.cols] += dkg[:, :, 0]
                    dv[:, :, : c.cols] += dvg[:, :, 0]
                else:
                    unit_rows = dk.shape[-1]
                    dk.index_add_(0, rows.flatten(), dkg.reshape(-1, unit_rows).to(acc))
                    dv.index_add_(0, rows.flatten(), dvg.reshape(-1, unit_rows).to(acc))
        n, m = q.shape[2], k.shape[2]
        if not prefix:
            dk = dk.view(plan.B, plan.h, -1, plan.dh)[:, :, :m]
            dv = dv.view(plan.B, plan.h, -1, plan.dh)[:, :, :m]
        dq = dq[:, :, :n] * plan.scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), *([None] * 7)


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_from: Tensor,
    key_until: Tensor,
    idx: Tensor | None,
    block: int,
    scale: float,
    *,
    unit: int = 1,
    lengths: Tensor | None = None,
) -> Tensor:
    """Softmax attention of q (B, h, n, d_h) over k, v (B, h, m, d_h) -> (B, h, n, d_h).

    Query block b (rows b*block .. b*block + block - 1) reads the key units `idx[:, b]` ((B or
    1, nqb, U) indices; unit u = keys u*unit .. u*unit + unit - 1; -1 = none) or, with
    `idx=None`, the prefix of keys that its last row may see (`key_from` must then be
    non-decreasing). `lengths` (nqb,) optionally says how many leading units each block uses.
    Query t sees key j when key_from[j] <= t <= key_until[j]; a row that sees no key gives 0.
    """
    if k.shape[2] == 0 or q.shape[2] == 0:
        return q.new_zeros(q.shape) + 0 * (k.sum() + v.sum())  # keeps k, v in the graph
    return _BlockedAttention.apply(q, k, v, key_from, key_until, idx, lengths, block, unit, scale)
