"""Oryx's incremental decoding: both states carried at every token, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that Oryx takes from `OryxDecoding`.

Every token, whatever its mode, appends its key and value to the KV cache (a later
attention-mode token may attend to it) and advances the recurrent state (a later
recurrence-mode token reads it). A token's output comes from its mode's read: the softmax over
the cache, or the recurrence's readout. The mode is the schedule's at the token's absolute
position, `state.length`, so a prefill of any prompt and the steps after it pick the modes the
forward picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class OryxState:
    """One Oryx layer's decode state: a KV cache beside the base's recurrent state.

    keys: (B, Hk, capacity, Dk) unit-length attention keys (the recurrence's own keys);
    values: (B, H, capacity, Dv); `length` of them used, grown by doubling past the capacity;
    base: the recurrence's state (GDNState / Mamba2State: conv window and recurrent state, in
    >= fp32). Bytes: 2-ish x tokens for the cache plus a constant for the base.
    """

    keys: Tensor
    values: Tensor
    length: int
    base: Any

    def append(self, k: Tensor, v: Tensor) -> None:
        """Write keys (B, Hk, t, Dk) and values (B, H, t, Dv) after the last ones."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            grow = max(end, 2 * self.keys.shape[2]) - self.keys.shape[2]
            self.keys = F.pad(self.keys, (0, 0, 0, grow))
            self.values = F.pad(self.values, (0, 0, 0, grow))
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end

    def kv_nbytes(self) -> int:
        """Bytes of the keys and values held (the used length, not the spare capacity)."""
        per_token = sum(
            t.shape[0] * t.shape[1] * t.shape[3] * t.element_size()
            for t in (self.keys, self.values)
        )
        return self.length * per_token

    def nbytes(self) -> int:
        return self.kv_nbytes() + self.base.nbytes()

    def snapshot(self) -> tuple[int, Any]:
        return self.length, self.base.snapshot()

    def restore(self, snap: tuple[int, Any]) -> None:
        """Back to the snapshot: later cache writes overwrite what came after (no copy)."""
        self.length = snap[0]
        self.base.restore(snap[1])


class OryxDecoding:
    """The incremental half of Oryx (a mixin: `self` is the Oryx layer, whose `block`, `query`,
    `schedule`, `_attend` and FLOP helpers these methods use)."""

    def _check_decodable(self) -> None:
        if not self.causal:
            raise ConfigError("oryx: incremental decoding needs causal=true")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> OryxState:
        blk = self.block
        base = blk.empty_state(batch, 0, like)
        cap, dtype = max(capacity, 1), compute_dtype(like)
        keys = like.new_zeros(batch, blk.key_heads, cap, blk.key_width, dtype=dtype)
        values = like.new_zeros(batch, blk.heads, cap, blk.value_width, dtype=dtype)
        return OryxState(keys, values, 0, base)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, OryxState]:
        """The forward of a prompt x (B, n, d), and both states after its last token."""
        self._check_decodable()
        B, n = x.shape[:2]
        state = self.empty_state(B, max(capacity, n), x)
        if n == 0:  # an empty prompt leaves the empty state (the convs refuse a zero length)
            return self.block.empty_output(x), state
        y, segments, state.base = self._run(x, want_state=True)
        for seg in segments:
            state.append(seg.streams.keys.transpose(1, 2), seg.streams.values.transpose(1, 2))
        return y, state

    def step(self, x: Tensor, state: OryxState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.length`; both states advance."""
        check_step_input(x, self.d_model, "oryx")
        self._check_decodable()
        t = state.length
        s = self.block.token(x, state.base)  # the conv window moves here
        o = self.block.recurrence_step(s, state.base)  # (B, 1, H, Dv); the state moves here
        state.append(s.keys.transpose(1, 2), s.values.transpose(1, 2))
        if self.schedule.is_attention(t):
            q = self.query(s.query, x).transpose(1, 2)  # (B, H, 1, Dk)
            keys, values = state.keys[:, :, : t + 1], state.values[:, :, : t + 1]
            o = _attend_one(q.to(values.dtype), keys, values).transpose(1, 2)  # (B, 1, H, Dv)
            self.last_backend = "oryx:attention-step"
        else:
            self.last_backend = f"oryx:{self.block.last_backend}"
        return self.block.finish(o, s)

    def decode_flops(self, context: int) -> float:
        """One decoded token after `context` tokens: the base's step, the key normalisation,
        and at an attention-mode position the query and the softmax read of context + 1 keys."""
        flops = self.block.decode_flops(context) + self._key_flops()
        if self.schedule.is_attention(context):
            flops += self._query_flops() + self._read_flops(context + 1)
        return float(flops)


def _attend_one(q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """One query per head over the cache: q (B, H, 1, Dk), keys (B, Hk, T, Dk), values (B, H,
    T, Dv) -> (B, H, 1, Dv). Head h reads key head h // (H / Hk); no copy of the keys."""
    B, H = q.shape[:2]
    Hk, T = keys.shape[1], keys.shape[2]
    scores = q.view(B, Hk, H // Hk, q.shape[-1]) @ keys.transpose(-1, -2)  # (B, Hk, r, T)
    acc = torch.promote_types(scores.dtype, torch.float32)  # softmax in >= fp32
    probs = torch.softmax(scores.to(acc), dim=-1).to(values.dtype).view(B, H, 1, T)
    return probs @ values
