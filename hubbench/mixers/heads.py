"""The multi-head frame that sliding-window attention and MoBA share: one fused q/k/v projection
split into heads, rotary positions on q and k, and the heads merged back through an output
projection. Only which keys a query reads differs between them, so that part stays in each
mixer; this frame was written twice before (swa/layer.py, moba/layer.py) and is one class now.

The parameters keep their names (`qkv`, `out`) and their creation order, so a layer built with a
given seed has the same weights and outputs as before the frame moved here, and the naive
references that read `m.qkv.weight` directly still hold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hubbench.errors import ConfigError
from hubbench.mixers.rope import rotary


def positive_int(who: str, name: str, value: object) -> int:
    """`value` if it is an int >= 1 (not a bool); a ConfigError that names `who` and `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{who}: {name} must be a positive integer, got {value!r}")
    return value


class RotaryHeads(nn.Module):
    """Base of a multi-head mixer x (B, n, d) -> (B, n, d): `_init_heads` checks the shape and
    makes the projections; `_heads` gives q, k, v per head, `_merge` maps the heads back. The
    subclass calls `super().__init__()`, then `_init_heads`, then checks its own options."""

    d_model: int
    n_heads: int
    d_head: int
    rope: bool

    def _init_heads(self, who: str, d_model: int, n_heads: int, rope: bool) -> None:
        """Check d_model and n_heads (`who` names the mixer in the error) and make qkv and out."""
        positive_int(who, "d_model", d_model)
        positive_int(who, "n_heads", n_heads)
        if d_model % n_heads:
            raise ConfigError(f"{who}: d_model={d_model} must be divisible by n_heads={n_heads}")
        if rope and (d_model // n_heads) % 2:  # rotary turns pairs of channels
            raise ConfigError(f"{who}: rope needs an even head width, got {d_model // n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.rope = rope
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, h, n, d_h) of x (B, n, d) at positions start.., q and k rotated (decode
        passes the position of its first token, so a step rotates like the forward did)."""
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.n_heads, self.d_head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, n, d_h)
        if self.rope:
            pos = torch.arange(start, start + n, device=x.device)
            q, k = rotary(q, pos), rotary(k, pos)
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        """The heads y (B, h, n, d_h) back to (B, n, d) through the output projection."""
        B, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, n, self.d_model))
