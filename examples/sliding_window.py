"""A plug-in mixer for hubbench: causal sliding-window attention, each token attending to the
last `span` tokens (itself included). The sequence is cut into blocks of `span` tokens and
each block's queries attend to their own block and the one before it, so the cost is O(n w).
It shows the plug-in contract in 30 lines; the built-in `swa-gpt` / `swa-jamba` variants are the
full mixer (decode, FLOPs, state). Its option is `span`, not `window`: a plug-in's options may
not reuse a config field's name (a suite's `window = [...]` would be ambiguous).

    hubbench run throughput --mixer examples/sliding_window.py:SlidingWindowAttention --seq 512,1024
    hubbench verify causal --mixer examples/sliding_window.py:SlidingWindowAttention
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SlidingWindowAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool, *, span: int = 128) -> None:
        super().__init__()
        if span < 1 or not causal:
            raise ValueError(f"a causal span >= 1 is needed (got {span}, causal={causal})")
        self.h, self.w = n_heads, span
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d) -> (B, n, d)
        B, n, d = x.shape
        w, nb = self.w, -(-n // self.w)
        qkv = F.pad(self.qkv(x), (0, 0, 0, nb * w - n)).view(B, nb, w, 3, self.h, d // self.h)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)  # each (B, h, nb, w, d_h)
        k, v = (torch.cat((F.pad(z, (0, 0, 0, 0, 1, 0))[:, :, :-1], z), 3) for z in (k, v))
        i, j = torch.arange(w, device=x.device).view(w, 1), torch.arange(2 * w, device=x.device)
        mask = ((j > i) & (j <= i + w)).expand(nb, w, 2 * w).clone()  # key j of (prev, own)
        mask[0, :, :w] = False  # the first block has no block before it
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, nb, w, d_h)
        return self.out(y.permute(0, 2, 3, 1, 4).reshape(B, nb * w, d)[:, :n])

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence as this runs it: the projections, then QK^T and AV of
        each padded block's queries against 2 * span keys."""
        d, n_pad = self.qkv.in_features, -(-seq // self.w) * self.w
        return float(2 * seq * d * 4 * d + 2 * 2 * n_pad * 2 * self.w * d)
