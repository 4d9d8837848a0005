"""SiLU(causal depthwise conv1d) in the (batch, length, channel) layout the block works in.

The input carries its own left context: the K - 1 inputs before the first output (zeros at the
start of a sequence, the previous segment's last inputs otherwise, the decode state's window),
so a sequence worked in segments convolves exactly as a whole one. The conv over (x, B, C) is
short (d_conv taps): K multiply-adds of shifted views, channel-last, no (B, C, L) transposes, and
the output is contiguous in the layout the SSD reads. As an autograd Function it saves only its
input and the weights and recomputes the pre-activation in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pre_activation(xp: Tensor, weight: Tensor, bias: Tensor, n: int) -> Tensor:
    """bias + sum_k weight[:, k] * xp[t + k]; xp (B, n + K - 1, C) with its K - 1 context rows."""
    K = weight.shape[1]
    pre = torch.addcmul(bias, xp[:, 0:n], weight[:, 0])
    for k in range(1, K):
        pre.addcmul_(xp[:, k : k + n], weight[:, k])
    return pre  # (B, n, C)


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(xp, weight, bias)
        return F.silu(_pre_activation(xp, weight, bias, xp.shape[1] - weight.shape[1] + 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        xp, weight, bias = ctx.saved_tensors
        K = weight.shape[1]
        n = xp.shape[1] - K + 1
        pre = _pre_activation(xp, weight, bias, n)
        sig = torch.sigmoid(pre)
        # d silu(p) / dp = sig * (1 + p * (1 - sig))
        dpre = pre.mul_(1 - sig).add_(1).mul_(sig).mul_(grad)  # (B, n, C)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.zeros_like(xp)
            for k in range(K):
                dx[:, k : k + n].addcmul_(dpre, weight[:, k])
        if ctx.needs_input_grad[1]:
            dw = torch.stack([(dpre * xp[:, k : k + n]).sum((0, 1)) for k in range(K)], -1)
        if ctx.needs_input_grad[2]:
            db = dpre.sum((0, 1))
        return dx, dw, db


def conv_silu_blc(xp: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """SiLU(causal depthwise conv) of xp (B, K - 1 + n, C), whose first K - 1 rows are context,
    with weight (C, K), bias (C,) -> (B, n, C), contiguous, in xp's dtype (weights cast to it,
    as autocast would for a conv)."""
    return _ConvSiLU.apply(xp, weight.to(xp.dtype), bias.to(xp.dtype))
