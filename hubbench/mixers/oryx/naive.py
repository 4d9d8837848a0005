"""The slow per-token reference of an Oryx block, written from the definitions.

Ground truth for the chunked forward, the prefill and the steps (tests/mixers/test_oryx.py
compares outputs and every gradient in float64). It shares nothing with the fast path but the
parameters: projections token by token, each short conv as an explicit sum over its window, the
recurrence in the paper's matrix form (GDN: S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) +
beta_t v_t k_t^T; Mamba-2: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T), and the attention as an
explicit softmax over a Python list of the keys seen so far. Both states advance at every token;
`modes[t]` says which one's read is token t's output (the test passes the schedule's modes, which
a separate test checks against hand-written ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _silu(v: Tensor) -> Tensor:
    return v / (1 + torch.exp(-v))


def _softplus(v: Tensor) -> Tensor:
    return torch.where(v > 20, v, torch.log1p(torch.exp(v.clamp(max=20))))


def _unit(v: Tensor, eps: float = 1e-6) -> Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + eps)


def _window(history: list[Tensor], weight: Tensor, bias: Tensor | None) -> Tensor:
    """y_t = sum_j w_j u_{t - W + 1 + j} (+ bias), zeros before token 0; weight (D, 1, W)."""
    W, t = weight.shape[-1], len(history) - 1
    acc = torch.zeros_like(history[-1]) if bias is None else bias.expand_as(history[-1])
    for j in range(W):
        s = t - W + 1 + j
        if s >= 0:
            acc = acc + weight[:, 0, j] * history[s]
    return acc


def _attention_read(
    query: nn.Module, base_q: Tensor, xt: Tensor, keys: list[Tensor], values: list[Tensor]
) -> Tensor:
    """softmax_j(tau_h cos-like(q_h, k_j)) v_j over every key so far.

    base_q (B, H, Dk) per head, the recurrence's query before normalisation; keys[j] (B, Hk,
    Dk) unit length; values[j] (B, H, Dv).
    q_h = tau_h unit(base_h (1 + s_h) + (U W x)_h).
    """
    B, H, Dk = base_q.shape
    delta = (xt @ query.down.weight.T @ query.up.T).view(B, H, Dk)
    q = _unit(base_q * (1 + query.scale) + delta) * torch.exp(query.log_temperature)[:, None]
    r = H // keys[0].shape[1]
    logits = torch.stack(
        [(q * k.repeat_interleave(r, dim=1)).sum(-1) for k in keys], -1
    )  # (B, H, t + 1)
    weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
    weights = weights / weights.sum(-1, keepdim=True)
    return sum(weights[..., j, None] * v for j, v in enumerate(values))


def _gdn(layer: nn.Module, x: Tensor, modes: Sequence[bool]) -> Tensor:
    blk, query = layer.block, layer.query
    B, n, _ = x.shape
    h, dk, dv = blk.n_heads, blk.head_dim_k, blk.head_dim_v
    hist: dict[str, list[Tensor]] = {"q": [], "k": [], "v": []}
    S = x.new_zeros(B, h, dv, dk)
    eye = torch.eye(dk, dtype=x.dtype)
    keys, values, ys = [], [], []
    for t in range(n):
        xt = x[:, t]
        for name in ("q", "k", "v"):
            hist[name].append(xt @ getattr(blk, f"{name}_proj").weight.T)
        q, k, v = (
            _silu(_window(hist[name], getattr(blk, f"{name}_conv1d").weight, None))
            for name in ("q", "k", "v")
        )
        q_raw, k, v = q.view(B, h, dk), _unit(k.view(B, h, dk)), v.view(B, h, dv)
        q = _unit(q_raw)
        alpha = torch.exp(-torch.exp(blk.A_log) * _softplus(xt @ blk.a_proj.weight.T + blk.dt_bias))
        beta = torch.sigmoid(xt @ blk.b_proj.weight.T)  # (B, h)
        a, b = alpha[..., None, None], beta[..., None, None]
        S = (
            a * S @ (eye - b * k[..., :, None] * k[..., None, :])
            + b * v[..., :, None] * k[..., None, :]
        )
        keys.append(k)
        values.append(v)
        if modes[t]:
            o = _attention_read(query, q_raw, xt, keys, values)
        else:
            o = (S @ q[..., None]).squeeze(-1) / dk**0.5  # (B, h, d_v)
        gate = (xt @ blk.g_proj.weight.T).view(B, h, dv)
        o = o / torch.sqrt((o * o).mean(-1, keepdim=True) + blk.o_norm.eps)
        o = o * blk.o_norm.weight * _silu(gate)
        ys.append(o.reshape(B, h * dv) @ blk.o_proj.weight.T)
    return torch.stack(ys, 1)


def _mamba2(layer: nn.Module, x: Tensor, modes: Sequence[bool]) -> Tensor:
    blk, query = layer.block, layer.query
    B, n, _ = x.shape
    H, P, N, G = blk.nheads, blk.headdim, blk.d_state, blk.ngroups
    r, di = H // G, blk.d_inner
    rows = blk.in_proj_slices
    W = blk.in_proj.weight
    Wxbc = torch.cat([W[rows["x"]], W[rows["B"]], W[rows["C"]]])
    hist: list[Tensor] = []
    h = x.new_zeros(B, H, P, N)
    A = -torch.exp(blk.A_log)
    keys, values, ys = [], [], []
    for t in range(n):
        xt = x[:, t]
        z, dt = xt @ W[rows["z"]].T, _softplus(xt @ W[rows["dt"]].T + blk.dt_bias)  # (B, H)
        hist.append(xt @ Wxbc.T)
        xbc = _silu(_window(hist, blk.conv1d.weight, blk.conv1d.bias))
        u = xbc[:, :di].view(B, H, P)
        Bg = xbc[:, di : di + G * N].view(B, G, N)
        Cg = xbc[:, di + G * N :].view(B, G, N)
        Bh, Ch = Bg.repeat_interleave(r, dim=1), Cg.repeat_interleave(r, dim=1)  # (B, H, N)
        decay = torch.exp(dt * A)[..., None, None]
        h = decay * h + (dt[..., None] * u)[..., :, None] * Bh[..., None, :]
        keys.append(_unit(Bg))
        values.append(u)
        if modes[t]:
            y = _attention_read(query, Ch, xt, keys, values)
        else:
            y = (h * Ch[..., None, :]).sum(-1) + blk.D[:, None] * u  # (B, H, P)
        y = y.reshape(B, di) * _silu(z)
        yg = y.view(B, G, di // G)
        yg = yg / torch.sqrt((yg * yg).mean(-1, keepdim=True) + blk.norm.eps)
        ys.append((yg.reshape(B, di) * blk.norm.weight) @ blk.out_proj.weight.T)
    return torch.stack(ys, 1)


def oryx_ref(layer: nn.Module, x: Tensor, modes: Sequence[bool]) -> Tensor:
    """An Oryx layer's forward, token by token (slow): x (B, n, d) -> (B, n, d).

    `modes[t]` is True where token t runs in attention mode. Runs in x's dtype (use float64).
    """
    if len(modes) != x.shape[1]:
        raise ValueError(f"oryx_ref: {len(modes)} modes for {x.shape[1]} tokens")
    return (_gdn if layer.base == "gdn" else _mamba2)(layer, x, modes)
