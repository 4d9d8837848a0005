"""Rotary position embeddings, shared by attention and HubRouter's council.

Positions are explicit integers, so a mixer that gathers tokens (HubRouter's council members) can
rotate each gathered key by its true position rather than its slot.
"""

from __future__ import annotations

import torch


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of `x` (..., n, d_h) by angles `positions * base^(-2i/d_h)`.

    `positions` holds integers broadcastable to x.shape[:-1] (e.g. (n,) or (B, 1, n)). Uses the
    half-split layout (GPT-NeoX / Llama): channel i pairs with channel i + d_h / 2.
    """
    d_h = x.shape[-1]
    if d_h % 2:
        raise ValueError(f"rotary needs an even head width, got {d_h}")
    half = d_h // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., n, d_h/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
