"""Sliding-window decoding: a ring buffer of the last `window` keys and values, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that SlidingWindow takes from
`WindowDecoding`.

A token at position p lives in slot p % window; a step overwrites the oldest slot and attends
over every filled slot. Softmax does not care about the order of its keys, so the ring is never
rotated. The state's bytes stop growing once the context reaches the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class WindowState:
    """Keys (rotated at their positions) and values of the last `window` tokens.

    k, v: (B, h, window, d_h) rings, slot p % window holding position p; `length`: tokens seen.
    """

    k: Tensor
    v: Tensor
    length: int

    @property
    def filled(self) -> int:
        return min(self.length, self.k.shape[2])

    def nbytes(self) -> int:
        """Bytes of the keys and values held: grows with the context up to the window, then
        stays constant."""
        per = self.k.shape[0] * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return 2 * self.filled * per

    def snapshot(self) -> tuple[int, Tensor, Tensor]:
        # a step overwrites a slot, so the rings themselves are saved (window rows: small)
        return self.length, self.k.clone(), self.v.clone()

    def restore(self, snap: tuple[int, Tensor, Tensor]) -> None:
        self.length = snap[0]
        self.k.copy_(snap[1])
        self.v.copy_(snap[2])


class WindowDecoding:
    """The recurrent half of SlidingWindow (a mixin: `self` is the layer)."""

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> WindowState:
        del capacity  # the ring never holds more than the window
        shape = (batch, self.n_heads, self.window, self.d_head)
        dtype = compute_dtype(like)
        k, v = like.new_zeros(shape, dtype=dtype), like.new_zeros(shape, dtype=dtype)
        return WindowState(k, v, 0)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, WindowState]:
        """The forward of a prompt x (B, n, d), and the ring holding its last window tokens."""
        if not self.causal:
            raise ConfigError("swa: incremental decoding needs causal=true")
        B, n, _ = x.shape
        state = self.empty_state(B, capacity, x)
        if n == 0:
            return self.out(x.new_zeros(B, 0, self.d_model)), state
        q, k, v = self._heads(x, 0)
        y = self._window(q, k, v)
        keep = min(n, self.window)
        slots = torch.arange(n - keep, n, device=x.device) % self.window
        state.k[:, :, slots] = k[:, :, n - keep :].to(state.k.dtype)
        state.v[:, :, slots] = v[:, :, n - keep :].to(state.v.dtype)
        state.length = n
        return self._merge(y), state

    def step(self, x: Tensor, state: WindowState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.length`."""
        check_step_input(x, self.d_model, "swa")
        q, k, v = self._heads(x, state.length)  # (B, h, 1, d_h)
        slot = state.length % self.window
        state.k[:, :, slot] = k[:, :, 0]
        state.v[:, :, slot] = v[:, :, 0]
        state.length += 1
        keys, values = state.k[:, :, : state.filled], state.v[:, :, : state.filled]
        scores = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))  # (B, h, 1, w)
        acc = torch.promote_types(scores.dtype, torch.float32)
        y = torch.softmax(scores.to(acc), dim=-1).to(values.dtype) @ values  # (B, h, 1, d_h)
        self.last_backend = "ring"
        return self._merge(y)

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token after `context` tokens: projections, then QK^T
        and AV over the min(context + 1, window) keys in the ring."""
        keys = min(context + 1, self.window)
        return float(2 * self.d_model * 4 * self.d_model + 2 * 2 * keys * self.d_model)
