"""The reference selective scan, as mamba-ssm's `selective_scan_ref`: a plain loop over tokens.

Slow, and ground truth for the chunked scan (scan.py) and for mamba-ssm's fused kernel: the
tests compare outputs and every gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.mamba.scan import check_scan_shapes


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The reference scan, as mamba-ssm's `selective_scan_ref`: a plain loop over tokens (slow).

    Ground truth for `selective_scan_chunked` and for the fused kernel.
    """
    check_scan_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    f = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D_inner, N)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D_inner, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, D_inner)
    y = torch.stack(ys, dim=-1)  # (B, D_inner, L)
    if D is not None:
        y = y + u * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(dtype_in)
