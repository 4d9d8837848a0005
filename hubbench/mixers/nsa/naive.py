"""NSA written as plain loops over tokens: slow, obviously right, the ground truth the blocked
forward is tested against (as mamba-ssm keeps `selective_scan_ref` beside its kernels).

It reads the layer's parameters and options and, of the package's code, only `rank_key` (the
rounding of selection scores that every path must share to break near-ties alike, as HubRouter's
reference shares its `rank_key`). Everything else is written again from the paper's definitions:
compression of each complete block by phi, per-query softmaxes over lists of keys, the
selection rule, the gated sum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.mixers.nsa.select import rank_key
from hubbench.mixers.rope import rotary


def nsa_ref(m: nn.Module, x: Tensor) -> Tensor:
    """NSA `m`'s output for x (B, n, d), one sequence and one token at a time."""
    return torch.stack([_sequence(m, seq) for seq in x])


def nsa_ref_selection(m: nn.Module, x: Tensor) -> list[list[list[int]]]:
    """The blocks each query block of each sequence selects (sorted), by the reference."""
    return [_sequence(m, seq, want_selection=True) for seq in x]


def _phi(c: nn.Module, block: Tensor) -> Tensor:
    """The compression MLP on one head's block (l, d_h) -> (d_h), from its parameters."""
    z = (block + c.pos).reshape(-1)
    return c.fc2.weight @ F.silu(c.fc1.weight @ z + c.fc1.bias) + c.fc2.bias


def _softmax_attend(q: Tensor, keys: list[Tensor], values: list[Tensor]) -> Tensor:
    if not keys:
        return torch.zeros_like(q)
    logits = torch.stack([q @ k for k in keys]) / math.sqrt(q.shape[0])
    a = torch.softmax(logits, 0)
    return sum(a[i] * values[i] for i in range(len(values)))


def _sequence(m: nn.Module, x: Tensor, want_selection: bool = False):
    """One sequence x (n, d) -> (n, d) (or its selections)."""
    n, d = x.shape
    h, dh, l, s, b, w = m.n_heads, m.d_head, m.cmp_block, m.cmp_stride, m.block, m.window
    W = m.qkv.weight
    q, k, v = ((x @ W[i * d : (i + 1) * d].t()).view(n, h, dh) for i in range(3))
    gates = torch.sigmoid(x @ m.gate.weight.t() + m.gate.bias).view(n, 3, h)
    qr, kr = q, k
    if m.rope:
        pos = torch.arange(n)
        qr, kr = (rotary(t.transpose(0, 1), pos).transpose(0, 1) for t in (q, k))
    # compressed tokens: block c = tokens [c*s, c*s + l), complete ones only
    starts = list(range(0, n - l + 1, s))
    ck = [[_phi(m.compress_k, k[c : c + l, hh]) for hh in range(h)] for c in starts]
    cv = [[_phi(m.compress_v, v[c : c + l, hh]) for hh in range(h)] for c in starts]
    if m.rope:
        ck = [
            [rotary(t, torch.tensor(c + l - 1)) for t in row]
            for c, row in zip(starts, ck, strict=True)
        ]

    def visible(t: int) -> list[int]:  # complete by t; the leaky control: started by t
        return [i for i, c in enumerate(starts) if (c + l - 1 if m.causal else c) <= t]

    out, selections, chosen = torch.zeros_like(x), [], []
    for t in range(n):
        i = t // b
        vis = visible(t)
        if t % b == 0:
            chosen = _choose(m, qr[t], ck, vis, starts, i)
            selections.append(sorted(chosen))
        heads = []
        for hh in range(h):
            o_cmp = _softmax_attend(qr[t, hh], [ck[c][hh] for c in vis], [cv[c][hh] for c in vis])
            sel = [j for blk in chosen for j in range(blk * b, (blk + 1) * b) if j <= t]
            o_slc = _softmax_attend(qr[t, hh], [kr[j, hh] for j in sel], [v[j, hh] for j in sel])
            win = range(max(0, t - w + 1), t + 1)
            o_win = _softmax_attend(qr[t, hh], [kr[j, hh] for j in win], [v[j, hh] for j in win])
            g = gates[t, :, hh]
            heads.append(g[0] * o_cmp + g[1] * o_slc + g[2] * o_win)
        out[t] = m.out.weight @ torch.cat(heads)
    return selections if want_selection else out


def _choose(m: nn.Module, q: Tensor, ck: list, vis: list[int], starts: list[int], i: int):
    """The blocks query block i reads, chosen by its first query q (h, d_h): own block, first
    block, then the highest scores (ties: lower block), top_blocks in all."""
    h, l, b = m.n_heads, m.cmp_block, m.block
    P = {c: 0.0 for c in vis}  # mean over heads of the compressed softmax
    for hh in range(h):
        if vis:
            logits = torch.stack([q[hh] @ ck[c][hh] for c in vis]) / math.sqrt(q.shape[1])
            a = torch.softmax(logits, 0)
            for c, p in zip(vis, a, strict=True):
                P[c] = P[c] + p / h
    score = []
    for j in range(i + 1):
        total = torch.zeros((), dtype=q.dtype)
        for c in vis:  # overlap of [start, start + l) with [j*b, (j+1)*b), as a fraction of l
            overlap = min(starts[c] + l, (j + 1) * b) - max(starts[c], j * b)
            if overlap > 0:
                total = total + P[c] * (overlap / l)
        score.append(float(rank_key(total.detach())))
    order = sorted(range(i + 1), key=lambda j: (j != i, j != 0, -score[j], j))
    return order[: m.top_blocks]
