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


def _taps(x: Tensor, w: Tensor) -> Tensor:
    """c_t = sum_j w_j x_{t - W + 1 + j}, zeros before token 0. x (B, n, D), w (W, D)."""
    W, n = w.shape[0], x.shape[1]
    c = x * w[W - 1]
    for s in range(1, min(W, n)):  # tap W - 1 - s reads the token s steps back
        c[:, s:].addcmul_(x[:, :-s], w[W - 1 - s])
    return c


class _ShortConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return torch.nn.functional.silu(_taps(x, w))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        W, n = w.shape[0], x.shape[1]
        c = _taps(x, w)
        sig = torch.sigmoid(c)
        # d silu(c) / dc = sig (1 + c (1 - sig))
        dc = torch.rsub(sig, 1.0).mul_(c).add_(1.0).mul_(sig).mul_(dy)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = dc * w[W - 1]
            for s in range(1, min(W, n)):
                dx[:, :-s].addcmul_(dc[:, s:], w[W - 1 - s])
        if ctx.needs_input_grad[1]:
            dw = torch.zeros_like(w)
            for s in range(min(W, n)):
                dw[W - 1 - s] = (dc[:, s:] * x[:, : n - s]).sum((0, 1))
        return dx, dw


def short_conv_silu(x: Tensor, w: Tensor) -> Tensor:
    """SiLU(causal depthwise conv(x)): x (B, n, D), w (W, D) with tap W - 1 on the current token.

    Runs in x's dtype (w is cast to it, as autocast would for a conv) with autocast off.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ShortConvSiLU.apply(x, w.to(x.dtype))
