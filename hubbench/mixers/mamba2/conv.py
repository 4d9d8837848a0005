"""SiLU(causal depthwise conv1d) in the (batch, length, channel) layout the block works in.

The conv over (x, B, C) is short (d_conv taps), so it is K multiply-adds of shifted views of the
left-padded input, channel-last: no (B, C, L) transposes, and the output is contiguous in the
layout the SSD reads. As an autograd Function it saves only its input (a view of the
in-projection's output, which the gate keeps alive anyway) and the weights, and recomputes the
pre-activation in backward; plain autograd would keep the padded copy and the pre-activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pre_activation(xp: Tensor, weight: Tensor, bias: Tensor, n: int) -> Tensor:
    """bias + sum_k weight[:, k] * x[t - (K - 1) + k]; xp (B, n + K - 1, C) left-padded."""
    K = weight.shape[1]
    pre = torch.addcmul(bias, xp[:, 0:n], weight[:, 0])
    for k in range(1, K):
        pre.addcmul_(xp[:, k : k + n], weight[:, k])
    return pre  # (B, n, C)


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight, bias)
        xp = F.pad(x, (0, 0, weight.shape[1] - 1, 0))
        return F.silu(_pre_activation(xp, weight, bias, x.shape[1]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        n, K = x.shape[1], weight.shape[1]
        xp = F.pad(x, (0, 0, K - 1, 0))  # (B, n + K - 1, C)
        pre = _pre_activation(xp, weight, bias, n)
        sig = torch.sigmoid(pre)
        # d silu(p) / dp = sig * (1 + p * (1 - sig))
        dpre = pre.mul_(1 - sig).add_(1).mul_(sig).mul_(grad)  # (B, n, C)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dxp = torch.zeros_like(xp)
            for k in range(K):
                dxp[:, k : k + n].addcmul_(dpre, weight[:, k])
            dx = dxp[:, K - 1 :]
        if ctx.needs_input_grad[1]:
            dw = torch.stack([(dpre * xp[:, k : k + n]).sum((0, 1)) for k in range(K)], -1)
        if ctx.needs_input_grad[2]:
            db = dpre.sum((0, 1))
        return dx, dw, db


def conv_silu_blc(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """SiLU(causal depthwise conv) of x (B, n, C) with weight (C, K), bias (C,) -> (B, n, C),
    contiguous, in x's dtype (weights cast to it, as autocast would for a conv)."""
    return _ConvSiLU.apply(x, weight.to(x.dtype), bias.to(x.dtype))
