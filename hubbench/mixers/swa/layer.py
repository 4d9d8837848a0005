"""Sliding-window attention: query t attends keys max(0, t - window + 1) .. t.

`window` counts the query itself, so window 1 is each token attending only to itself and a
window >= n is causal full attention. The forward is blocked: queries in blocks of `window`
tokens, each block against its own key block and the one before it (2 * window keys, one
(window, 2 * window) mask shared by every block), so time and memory are O(n * window) and no
path holds an n x n tensor.

`causal=False` is the family's leaky control, the classic band bug: the mask written as
|t - s| < window, which lets each query see window - 1 keys of its future.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.heads import RotaryHeads, positive_int
from hubbench.mixers.swa.decode import WindowDecoding


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool = True) -> Tensor:
    """Blocked sliding-window attention over (B, h, n, d_h) -> (B, h, n, d_h).

    q, k, v are already rotated. Causal: keys t - window < s <= t. Leaky (`causal=False`):
    |t - s| < window, so each query block also reads the next key block. The attention is
    PyTorch's SDPA over the blocked layout with the block mask (its fused CPU kernel on CPU,
    float64 included).
    """
    B, h, n, dh = q.shape
    w = window
    nb = -(-n // w)  # query blocks
    ahead = 0 if causal else 1  # key blocks after the query's own
    span = (2 + ahead) * w  # keys each query block reads
    qb = F.pad(q, (0, 0, 0, nb * w - n)).view(B, h, nb, w, dh)
    pad = (0, 0, w, (nb + ahead) * w - n)  # one empty block before, up to `ahead` after
    kb = F.pad(k, pad).view(B, h, nb + 1 + ahead, w, dh)
    vb = F.pad(v, pad).view(B, h, nb + 1 + ahead, w, dh)
    k_cat = torch.cat([kb[:, :, j : j + nb] for j in range(2 + ahead)], dim=3)  # (B,h,nb,span,dh)
    v_cat = torch.cat([vb[:, :, j : j + nb] for j in range(2 + ahead)], dim=3)
    t = torch.arange(nb * w, device=q.device).view(nb, w, 1)  # query positions
    s = (torch.arange(nb, device=q.device) * w - w).view(nb, 1, 1) + torch.arange(
        span, device=q.device
    )  # (nb, 1, span) key positions
    if causal:
        # keys past n only ever meet padded queries, whose own (zero) key keeps the row finite
        allowed = (s > t - w) & (s <= t) & (s >= 0)  # (nb, w, span)
    else:
        allowed = ((s - t).abs() < w) & (s >= 0) & (s < n)
    # one (w, span) mask per block, as a 4-D mask: SDPA's fused CPU kernel takes it (a 3-D
    # one sends it to the math fallback), tiles it and keeps no (w x span) probabilities
    y = F.scaled_dot_product_attention(
        qb.reshape(B * h, nb, w, dh),
        k_cat.reshape(B * h, nb, span, dh),
        v_cat.reshape(B * h, nb, span, dh),
        attn_mask=allowed.unsqueeze(0),
    )  # (B h, nb, w, d_h)
    return y.view(B, h, nb * w, dh)[:, :, :n]


class SlidingWindow(WindowDecoding, RotaryHeads):
    """Multi-head sliding-window attention: x (B, n, d) -> (B, n, d)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        window: int = 256,
        rope: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self._init_heads("swa", d_model, n_heads, rope)
        self.window = positive_int("swa", "window", window)
        self.causal = causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None

    def _window(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.shape[2] <= self.window:
            # the window covers every key already: plain (causal) attention, the same result
            # without padding n queries to a whole window of 2 * window keys each (4.7x the
            # useful FLOPs at n = 64, window 256, and 5x the time: found in review)
            self.last_backend = "sdpa"
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        self.last_backend = "blocked-sdpa"
        return window_attention(q, k, v, self.window, self.causal)

    def forward(self, x: Tensor) -> Tensor:
        return self._merge(self._window(*self._heads(x, 0)))

    def visible_keys(self, seq: int) -> int:
        """Keys summed over the queries of one sequence (the useful ones, not the padding)."""
        w = self.window
        causal = seq * (seq + 1) // 2 if seq <= w else w * (w + 1) // 2 + (seq - w) * w
        return causal if self.causal else 2 * causal - seq  # the band mirrors the window

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence: projections, then QK^T and AV over the visible keys
        only (attention.py's convention; the blocked path computes 2 * window scores per query,
        about twice the useful ones once seq >> window)."""
        proj = 2 * seq * self.d_model * 4 * self.d_model
        return float(proj + 2 * 2 * self.visible_keys(seq) * self.d_model)
