"""SiLU(causal depthwise short conv) in (B, n, channels) layout, with its own backward.

GDN's q, k and v each pass through a width-4 depthwise conv. Written as autograd over shifted
slices it made a dozen full-width passes in backward (zero-filled slice gradients, a product
and a reduction per tap) and cost about as much as the projections at n = 8192; here the taps
are in-place multiply-adds on slices, forward keeps only its input, and backward recomputes
the pre-activation.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Tokens are worked in blocks of about this many elements (1 MB in fp32, cache-sized): every tap,
# the SiLU and backward's products then run on data already in cache, and a pass over the full
# sequence reads x once and writes once.
BLOCK_ELEMS = 1 << 18


def _blocks(x: Tensor, W: int) -> list[tuple[int, int]]:
    B, n, D = x.shape
    tokens = max(W, BLOCK_ELEMS // max(1, B * D))
    return [(t0, min(t0 + tokens, n)) for t0 in range(0, n, tokens)]


def _taps(x: Tensor, w: Tensor, t0: int, t1: int) -> Tensor:
    """c_t = sum_j w_j x_{t - W + 1 + j} for t in t0..t1-1, zeros before token 0.
    x (B, n, D), w (W, D) -> (B, t1 - t0, D)."""
    W = w.shape[0]
    lo = max(0, t0 - W + 1)
    xb, L, T = x[:, lo:t1], t0 - lo, t1 - t0  # the block with its left context of L tokens
    c = xb[:, L:] * w[W - 1]
    for s in range(1, W):  # tap W - 1 - s reads the token s steps back
        i0 = max(0, s - L)
        if i0 < T:
            c[:, i0:].addcmul_(xb[:, L + i0 - s : L + T - s], w[W - 1 - s])
    return c


class _ShortConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for t0, t1 in _blocks(x, w.shape[0]):
            out[:, t0:t1] = torch.nn.functional.silu(_taps(x, w, t0, t1), inplace=True)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        W = w.shape[0]
        want_dx, want_dw = ctx.needs_input_grad[:2]
        dx = torch.zeros_like(x) if want_dx else None
        dw = torch.zeros(w.shape, dtype=torch.promote_types(w.dtype, torch.float32),
                         device=w.device)  # fmt: skip
        for t0, t1 in reversed(_blocks(x, W)):  # dx of a block spills into the block before
            c = _taps(x, w, t0, t1)
            sig = torch.sigmoid(c)
            # d silu(c) / dc = sig (1 + c (1 - sig))
            dc = torch.rsub(sig, 1.0).mul_(c).add_(1.0).mul_(sig).mul_(dy[:, t0:t1])
            for s in range(min(W, t1)):  # token t reads x_{t - s} through tap W - 1 - s
                i0 = max(0, s - t0)  # first token of the block whose t - s >= 0
                src = x[:, t0 + i0 - s : t1 - s]
                if want_dx:
                    dx[:, t0 + i0 - s : t1 - s].addcmul_(dc[:, i0:], w[W - 1 - s])
                if want_dw:
                    dw[W - 1 - s] += (dc[:, i0:] * src).sum((0, 1))
        return dx, dw.to(w.dtype) if want_dw else None


def short_conv_silu(x: Tensor, w: Tensor) -> Tensor:
    """SiLU(causal depthwise conv(x)): x (B, n, D), w (W, D) with tap W - 1 on the current token.

    Runs in x's dtype (w is cast to it, as autocast would for a conv) with autocast off.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ShortConvSiLU.apply(x, w.to(x.dtype))
