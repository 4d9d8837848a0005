"""The slow references of Mamba-2: plain loops over tokens, written from the paper's definition.

`ssd_ref` is the recurrence of SSD (Dao & Gu 2024, eq. for the scalar-identity SSM):

    h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t

`mamba2_ref` is the whole block from its parameters: in-projection, causal depthwise conv as an
explicit sum over the window, SiLU, softplus(dt + dt_bias), the recurrence above, skip D, gated
RMSNorm (norm after the gate, per group, as mamba-ssm's default) and out-projection. Neither
shares code with the chunked path (ssd.py, block.py) beyond the parameters, so a test of one
against the other can fail. Ground truth in float64; slow (a Python loop over tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ssd_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token SSD: x (b, n, H, P), dt (b, n, H) > 0, A (H,), B, C (b, n, G, N).

    Returns y (b, n, H, P) and the final state (b, H, P, N), both in >= fp32.
    """
    b, n, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    f = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(f) for t in (x, dt, A, B, C))
    h = x.new_zeros(b, H, P, N) if initial_state is None else initial_state.to(f)
    heads_per_group = H // G
    ys = []
    for t in range(n):
        head_outputs = []
        new_h = []
        for head in range(H):
            g = head // heads_per_group
            a = torch.exp(dt[:, t, head] * A[head])  # (b,)
            inp = (dt[:, t, head, None] * x[:, t, head])[:, :, None] * B[:, t, g, None, :]
            hh = a[:, None, None] * h[:, head] + inp  # (b, P, N)
            new_h.append(hh)
            head_outputs.append((hh * C[:, t, g, None, :]).sum(-1))  # (b, P)
        h = torch.stack(new_h, 1)
        ys.append(torch.stack(head_outputs, 1))
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, H, P)
    return y, h


def _softplus(v: Tensor) -> Tensor:
    return torch.where(v > 20, v, torch.log1p(torch.exp(v.clamp(max=20))))


def _silu(v: Tensor) -> Tensor:
    return v / (1 + torch.exp(-v))


def mamba2_ref(block: nn.Module, u: Tensor) -> Tensor:
    """The Mamba-2 block (`hubbench.mixers.mamba2.Mamba2`'s parameters) token by token.

    u (b, n, d_model) -> (b, n, d_model), in >= fp32 (float64 for float64 input).
    """
    H, P, N, G = block.nheads, block.headdim, block.d_state, block.ngroups
    d_inner, K = block.d_inner, block.d_conv
    f = torch.promote_types(u.dtype, torch.float32)
    u = u.to(f)
    b, n, _ = u.shape
    W_in = block.in_proj.weight.to(f)  # (2 d_inner + 2 G N + H, d_model), order z, x, B, C, dt
    proj = u @ W_in.T
    z = proj[..., :d_inner]
    xBC = proj[..., d_inner : 2 * d_inner + 2 * G * N]
    dt_raw = proj[..., 2 * d_inner + 2 * G * N :]
    conv_w = block.conv1d.weight.to(f)[:, 0, :]  # (channels, K)
    conv_b = block.conv1d.bias.to(f)
    rows = []
    for t in range(n):  # out_t = sum_k w[:, k] * in_{t - (K - 1) + k}, zeros before the start
        acc = conv_b.expand(b, -1)
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                acc = acc + conv_w[:, k] * xBC[:, s]
        rows.append(_silu(acc))
    xBC = torch.stack(rows, 1) if rows else xBC
    xs = xBC[..., :d_inner].reshape(b, n, H, P)
    Bm = xBC[..., d_inner : d_inner + G * N].reshape(b, n, G, N)
    Cm = xBC[..., d_inner + G * N :].reshape(b, n, G, N)
    dt = _softplus(dt_raw + block.dt_bias.to(f))
    A = -torch.exp(block.A_log.to(f))
    y, _ = ssd_ref(xs, dt, A, Bm, Cm)
    y = y + xs * block.D.to(f)[:, None]
    y = y.reshape(b, n, d_inner) * _silu(z)  # gate, then norm (norm_before_gate=False)
    group = d_inner // G
    yg = y.reshape(b, n, G, group)
    rms = torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + block.norm.eps)
    y = (yg / rms).reshape(b, n, d_inner) * block.norm.weight.to(f)
    return y @ block.out_proj.weight.to(f).T
