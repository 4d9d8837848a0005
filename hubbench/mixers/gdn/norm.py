"""GDN's output norm: RMSNorm over each head's values times SiLU(gate), fla's FusedRMSNormGated
(norm before gate), as an autograd Function worked in cache-sized token blocks.

Plain autograd kept five full-size intermediates and made about ten full-length passes in
backward; here forward keeps only o and the gate, and each block's backward recomputes its
norm while the block is in cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.mixers.gdn.chunked import state_dtype

NORM_EPS = 1e-5  # fla's norm_eps
BLOCK_ELEMS = 1 << 18  # elements of o per block (1 MB in fp32)


def _blocks(o: Tensor) -> list[tuple[int, int]]:
    B, n = o.shape[:2]
    tokens = max(1, BLOCK_ELEMS // max(1, math.prod(o.shape[2:]) * B))
    return [(t0, min(t0 + tokens, n)) for t0 in range(0, n, tokens)]


class _GatedRMSNormFn(torch.autograd.Function):
    """y = o / rms(o) * weight * SiLU(gate) over the last axis of (B, n, ..., dim) tensors."""

    @staticmethod
    def forward(ctx, o: Tensor, gate: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(o, gate, weight)
        ctx.eps = eps
        y = torch.empty(o.shape, dtype=o.dtype, device=o.device)
        for t0, t1 in _blocks(o):
            ob = o[:, t0:t1]
            r = torch.rsqrt(ob.square().mean(-1, keepdim=True).add_(eps))
            y[:, t0:t1] = (ob * r).mul_(weight).mul_(F.silu(gate[:, t0:t1]))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        o, gate, weight = ctx.saved_tensors
        do, dgate = torch.empty_like(o), torch.empty_like(gate)
        dweight = torch.zeros_like(weight)
        for t0, t1 in _blocks(o):
            ob, gb, dyb = o[:, t0:t1], gate[:, t0:t1], dy[:, t0:t1]
            r = torch.rsqrt(ob.square().mean(-1, keepdim=True).add_(ctx.eps))
            unit = ob * r
            sig = torch.sigmoid(gb)
            silu = gb * sig
            dweight += (dyb * unit * silu).flatten(0, -2).sum(0)
            dunit = dyb * weight * silu
            # through unit = o r, r = (mean(o^2) + eps)^-1/2: do = r (dunit - unit mean(dunit unit))
            do[:, t0:t1] = (dunit - unit * (dunit * unit).mean(-1, keepdim=True)).mul_(r)
            # d silu / d gate = sig (1 + gate (1 - sig))
            dgate[:, t0:t1] = (dyb * unit).mul_(weight).mul_(sig * (1 + gb * (1 - sig)))
        return do, dgate, dweight, None


class GatedRMSNorm(nn.Module):
    """RMSNorm over a head's values, times SiLU(gate): fla's FusedRMSNormGated (norm first)."""

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: Tensor, gate: Tensor) -> Tensor:
        """o, gate (B, n, ..., dim) -> (B, n, ..., dim) in >= fp32 (autocast off: the norm
        wants fp32)."""
        f = state_dtype(o.dtype)
        with torch.autocast(o.device.type, enabled=False):
            return _GatedRMSNormFn.apply(o.to(f), gate.to(f), self.weight.to(f), self.eps)
