"""MoBA written as plain loops over tokens, heads and blocks: slow, obviously right, the ground
truth the fast path is tested against. It reads the layer's parameters and options and none of
its code (rope.rotary is the project's shared position encoding); its ranking rule is written
out again here: scores (in >= fp32) rounded to 30 significant bits (float64) or 16 (float32),
then ties to the lower block index.
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor, nn

from hubbench.mixers.rope import rotary


def _rounded(score: Tensor) -> float:
    """A 0-d score rounded to 30 (float64) or 16 (float32) significant bits, by Veltkamp's
    split in the score's own dtype: t = c s, s_hi = t - (t - s), c = 2^(p - bits) + 1."""
    bits = 30 if score.dtype == torch.float64 else 16
    precision = 53 if score.dtype == torch.float64 else 24
    c = 2.0 ** (precision - bits) + 1.0
    t = score * c
    r = float(t - (t - score))
    # the low 23 bits of the float64 pattern cleared: zero already, unless r is subnormal
    bits = struct.unpack("<q", struct.pack("<d", r))[0] & ~((1 << 23) - 1)
    return struct.unpack("<d", struct.pack("<q", bits))[0] + 0.0


def chosen_blocks(m: nn.Module, q: Tensor, k: Tensor, t: int) -> list[int]:
    """The blocks query t (one head: q, k (n, d_h)) reads besides its own, by the definition.

    Causal: candidates are the complete blocks before t's block; leaky: every other block, a
    partial last one averaged over the keys it has.
    """
    n, b = k.shape[0], m.block
    own = t // b
    blocks = range(own) if m.causal else [j for j in range(-(-n // b)) if j != own]
    f = torch.promote_types(q.dtype, torch.float32)
    ranked = []
    for j in blocks:
        members = range(j * b, min(n, (j + 1) * b))
        mean = sum(k[s].to(f) for s in members) / len(members)
        ranked.append((-_rounded((q[t].to(f) @ mean).detach()), j))
    return [j for _, j in sorted(ranked)[: m.top_blocks]]


def moba_ref(m: nn.Module, x: Tensor) -> Tensor:
    """MoBA `m`'s output for x (B, n, d), one sequence, token and head at a time."""
    return torch.stack([_sequence(m, seq) for seq in x])


def _sequence(m: nn.Module, x: Tensor) -> Tensor:
    n, d = x.shape
    h, dh, b = m.n_heads, m.d_head, m.block
    wq, wk, wv = m.qkv.weight[:d], m.qkv.weight[d : 2 * d], m.qkv.weight[2 * d :]
    q, k, v = (x @ wt.t() for wt in (wq, wk, wv))  # (n, d) each
    if m.rope:
        pos = torch.arange(n)
        q, k = (rotary(t.view(n, h, dh).transpose(0, 1), pos).transpose(0, 1).reshape(n, d)
                for t in (q, k))  # fmt: skip
    rows = []
    for t in range(n):
        heads = []
        for hh in range(h):
            sl = slice(hh * dh, (hh + 1) * dh)
            qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]
            keys = list(range((t // b) * b, t + 1))  # own block, causal inside
            for j in chosen_blocks(m, qh, kh, t):
                keys += range(j * b, min(n, (j + 1) * b))
            logits = torch.stack([qh[t] @ kh[s] / math.sqrt(dh) for s in keys])
            a = torch.softmax(logits, 0)
            heads.append(sum(a[i] * vh[s] for i, s in enumerate(keys)))
        rows.append(torch.cat(heads))
    return m.out(torch.stack(rows))
