"""Sliding-window attention written as plain loops over tokens and heads: slow, obviously right,
the ground truth the blocked forward is tested against. It reads the layer's parameters and
options and none of its code (rope.rotary is the project's shared position encoding)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hubbench.mixers.rope import rotary


def swa_ref(m: nn.Module, x: Tensor) -> Tensor:
    """SlidingWindow `m`'s output for x (B, n, d), one sequence, token and head at a time.

    Causal: token t attends s in [max(0, t - window + 1), t]. Leaky (`m.causal` False): every s
    with |t - s| < window.
    """
    return torch.stack([_sequence(m, seq) for seq in x])


def _sequence(m: nn.Module, x: Tensor) -> Tensor:
    n, d = x.shape
    h, dh, w = m.n_heads, m.d_head, m.window
    wq, wk, wv = m.qkv.weight[:d], m.qkv.weight[d : 2 * d], m.qkv.weight[2 * d :]
    q, k, v = (x @ wt.t() for wt in (wq, wk, wv))  # (n, d) each
    if m.rope:
        pos = torch.arange(n)
        q, k = (rotary(t.view(n, h, dh).transpose(0, 1), pos).transpose(0, 1).reshape(n, d)
                for t in (q, k))  # fmt: skip
    rows = []
    for t in range(n):
        lo, hi = max(0, t - w + 1), (t + 1 if m.causal else min(n, t + w))
        heads = []
        for hh in range(h):
            sl = slice(hh * dh, (hh + 1) * dh)
            logits = torch.stack([q[t, sl] @ k[s, sl] / math.sqrt(dh) for s in range(lo, hi)])
            a = torch.softmax(logits, 0)
            heads.append(sum(a[i] * v[s, sl] for i, s in enumerate(range(lo, hi))))
        rows.append(torch.cat(heads))
    return m.out(torch.stack(rows))
