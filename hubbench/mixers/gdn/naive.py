"""Slow per-token references for Gated DeltaNet, written from the paper's definitions.

Ground truth for the chunked core (chunked.py) and the layer (layer.py): the tests compare
outputs and every gradient in float64. They share nothing with the fast path but the
parameters: the recurrence is the paper's matrix form with an explicit identity, in the paper's
layout S (d_v, d_k); the short conv is a window per token; the norms are written out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gated_delta_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t.

    Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, eq. 10), alpha_t = exp(g_t). q, k: (B, n, h,
    d_k); v: (B, n, h, d_v); g, beta: (B, n, h); initial_state (B, h, d_k, d_v) as the chunked
    core keeps it (S^T). Returns o (B, n, h, d_v) in v's dtype and the final state, (B, h, d_k,
    d_v) in >= fp32. One loop step per token.
    """
    out_dtype = v.dtype
    f = torch.promote_types(out_dtype, torch.float32)
    B, n, h, d_k = q.shape
    d_v = v.shape[-1]
    q, k, v, g, beta = (t.to(f) for t in (q, k, v, g, beta))
    eye = torch.eye(d_k, dtype=f, device=q.device)
    if initial_state is None:
        S = q.new_zeros(B, h, d_v, d_k)
    else:
        S = initial_state.to(f).transpose(-1, -2)
    outs = []
    for t in range(n):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]  # (B, h, d)
        alpha = g[:, t].exp()[..., None, None]  # (B, h, 1, 1)
        b = beta[:, t][..., None, None]
        kkT = kt.unsqueeze(-1) * kt.unsqueeze(-2)  # (B, h, d_k, d_k)
        S = alpha * S @ (eye - b * kkT) + b * vt.unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append((S @ qt.unsqueeze(-1)).squeeze(-1))  # (B, h, d_v)
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, h, d_v)
    return o.to(out_dtype), S.transpose(-1, -2)


def _short_conv_ref(x: Tensor, weight: Tensor) -> Tensor:
    """SiLU(causal depthwise conv): y_t = sum_j w_j x_{t - W + 1 + j}, zeros before token 0.

    x (B, n, D), weight (D, 1, W) as nn.Conv1d keeps it.
    """
    W = weight.shape[-1]
    ys = []
    for t in range(x.shape[1]):
        acc = torch.zeros_like(x[:, 0])
        for j in range(W):
            s = t - W + 1 + j
            if s >= 0:
                acc = acc + weight[:, 0, j] * x[:, s]
        ys.append(F.silu(acc))
    return torch.stack(ys, 1)


def gated_deltanet_ref(layer: nn.Module, x: Tensor) -> Tensor:
    """The GatedDeltaNet layer's forward from its parameters, token by token (slow).

    Projections; causal short convs + SiLU on q, k, v; q, k L2-normalised (eps 1e-6 inside the
    root, as fla), q scaled by 1/sqrt(d_k); beta = sigmoid(b_proj x);
    g = -exp(A_log) softplus(a_proj x + dt_bias); the recurrence; per-head RMSNorm of o times
    its weight times SiLU(g_proj x); out-projection.
    """
    h, d_k, d_v = layer.n_heads, layer.head_dim_k, layer.head_dim_v
    B, n, _ = x.shape
    q = _short_conv_ref(x @ layer.q_proj.weight.T, layer.q_conv1d.weight)
    k = _short_conv_ref(x @ layer.k_proj.weight.T, layer.k_conv1d.weight)
    v = _short_conv_ref(x @ layer.v_proj.weight.T, layer.v_conv1d.weight)
    q, k, v = q.view(B, n, h, d_k), k.view(B, n, h, d_k), v.view(B, n, h, d_v)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) / math.sqrt(d_k)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(x @ layer.b_proj.weight.T)  # (B, n, h)
    dt = F.softplus(x @ layer.a_proj.weight.T + layer.dt_bias)
    g = -torch.exp(layer.A_log) * dt  # (B, n, h)
    o, _ = gated_delta_ref(q, k, v, g, beta)
    gate = (x @ layer.g_proj.weight.T).view(B, n, h, d_v)
    rms = torch.sqrt((o * o).mean(-1, keepdim=True) + layer.o_norm.eps)
    o = o / rms * layer.o_norm.weight * gate * torch.sigmoid(gate)
    return o.reshape(B, n, h * d_v) @ layer.o_proj.weight.T
