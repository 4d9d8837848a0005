"""NSA's incremental decoding: the state one layer carries from token to token, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that NSA takes from `NSADecoding`.

A step at position t does what the forward does for query t: it appends its rotated key and
value to the cache, compresses the block that completes at t (if one does) and appends the
compressed token, chooses the query block's selection when t starts a block (from its own
compressed-branch probabilities, as the forward does for the block's first query) and keeps it
for the rest of the block, then attends over the compressed tokens, the selected blocks' keys
up to t and the last `window` keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.attention import KVCache
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class NSAState:
    """What a causal NSA layer carries: grows with the context, as any KV cache does.

    cache: rotated keys and values of every token (B, h, t, d_h); the window and the selected
    blocks read it. cmp: compressed keys (rotated at their block's last token) and values
    (B, h, t_c, d_h). tail: the unrotated keys of the last cmp_block tokens (B, h, cmp_block,
    d_h), the input of the next compression (values come from the cache). sel: the current
    query block's selected blocks (B, top_blocks), -1 = none.
    """

    pos: int
    cache: KVCache
    cmp: KVCache
    tail: Tensor
    sel: Tensor

    def nbytes(self) -> int:
        small = sum(t.numel() * t.element_size() for t in (self.tail, self.sel))
        return self.cache.nbytes() + self.cmp.nbytes() + small

    def snapshot(self) -> tuple[int, int, int, Tensor, Tensor]:
        return self.pos, self.cache.snapshot(), self.cmp.snapshot(), self.tail.clone(), \
            self.sel.clone()  # fmt: skip

    def restore(self, snap: tuple[int, int, int, Tensor, Tensor]) -> None:
        """Back to the snapshot: cache lengths rewound (later writes overwrite), small parts
        copied back."""
        self.pos = snap[0]
        self.cache.restore(snap[1])
        self.cmp.restore(snap[2])
        self.tail.copy_(snap[3])
        self.sel.copy_(snap[4])


def _attend(q: Tensor, k: Tensor, v: Tensor, hidden: Tensor | None = None) -> Tensor:
    """One query per head q (B, h, 1, d_h) over k, v (B, h, L, d_h); softmax in >= fp32; no
    visible key gives zeros."""
    if k.shape[2] == 0:
        return torch.zeros_like(q)
    f = torch.promote_types(q.dtype, torch.float32)
    s = (q @ k.transpose(-1, -2)).to(f) / math.sqrt(q.shape[-1])  # (B, h, 1, L)
    if hidden is not None:
        s = s.masked_fill(hidden, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return p.to(v.dtype) @ v


class NSADecoding:
    """The recurrent half of NSA (a mixin: `self` is the NSA layer, whose parameters, options
    and `_project`, `_compress`, `_cmp_probs`, `_select`, `_forward` these methods use)."""

    def _check_decodable(self) -> None:
        if not self.causal:
            raise ConfigError("nsa: incremental decoding needs causal=true")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> NSAState:
        """No tokens yet: caches preallocated for `capacity` tokens (and their compressed
        tokens), an empty tail, no selection."""
        h, dh = self.n_heads, self.d_head
        cache = KVCache.empty(batch, h, dh, capacity, like)
        cmp = KVCache.empty(batch, h, dh, self.n_compressed(capacity), like)
        tail = like.new_zeros(batch, h, self.cmp_block, dh, dtype=compute_dtype(like))
        sel = torch.full((batch, self.top_blocks), -1, dtype=torch.long, device=like.device)
        return NSAState(0, cache, cmp, tail, sel)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, NSAState]:
        """The forward of a prompt x (B, n, d), and the state after its last token, built from
        the forward's own keys, compressed tokens and last selection."""
        self._check_decodable()
        B, n, _ = x.shape
        if n == 0:
            return self.out(x.new_zeros(B, 0, self.d_model)), self.empty_state(B, capacity, x)
        y, kept = self._forward(x)
        state = self.empty_state(B, max(capacity, n), x)
        state.cache.append(kept["k"].detach(), kept["v"].detach())
        state.cmp.append(kept["kc"].detach(), kept["vc"].detach())
        tail = kept["k_raw"][:, :, -self.cmp_block :].detach()
        state.tail[:, :, self.cmp_block - tail.shape[2] :] = tail
        last = kept["sel"][:, -1]  # (B, K) the last query block's selection
        state.sel[:, : last.shape[-1]] = last
        state.pos = n
        return y, state

    def step(self, x: Tensor, state: NSAState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.pos`; advances `state`."""
        check_step_input(x, self.d_model, "nsa")
        self._check_decodable()
        t, B = state.pos, x.shape[0]
        l, s, b, dev = self.cmp_block, self.cmp_stride, self.block, x.device
        q, k, k_raw, v, gates = self._project(x, start=t)  # (B, h, 1, d_h); gates (3, B, h, 1)
        state.cache.append(k, v)
        state.tail.copy_(torch.cat((state.tail[:, :, 1:], k_raw), 2))
        if t >= l - 1 and (t - l + 1) % s == 0:  # the block [t - l + 1, t] completes now
            kc, vc = self._compress(state.tail, state.cache.v[:, :, t - l + 1 : t + 1], t - l + 1)
            state.cmp.append(kc, vc)
        keys, values = state.cache.view()  # (B, h, t + 1, d_h)
        ck, cv = state.cmp.view()
        if t % b == 0:  # a new query block: its first query chooses, as in the forward
            i = torch.tensor([t // b], device=dev)
            chosen = self._select(self._cmp_probs(q, ck, i * b), i, t // b + 1)[:, 0]
            state.sel.fill_(-1)
            state.sel[:, : chosen.shape[-1]] = chosen
        tok = (state.sel.unsqueeze(-1) * b + torch.arange(b, device=dev)).flatten(1)  # (B, Kb)
        hidden = (state.sel.repeat_interleave(b, -1) < 0) | (tok > t)
        idx = tok.clamp(0, t).view(B, 1, -1, 1).expand(-1, self.n_heads, -1, self.d_head)
        o_slc = _attend(q, keys.gather(2, idx), values.gather(2, idx), hidden.view(B, 1, 1, -1))
        lo = max(0, t - self.window + 1)
        o_win = _attend(q, keys[:, :, lo:], values[:, :, lo:])
        o = gates[0, ..., None] * _attend(q, ck, cv) + gates[1, ..., None] * o_slc \
            + gates[2, ..., None] * o_win  # fmt: skip
        state.pos = t + 1
        self.last_backend = "nsa:step"
        return self.out(o.transpose(1, 2).reshape(B, 1, self.d_model))

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of the token after `context` tokens: projections and gates, a
        compression when a block completes, the selection scores when a block starts, and
        QK^T + PV over the keys the three branches read."""
        d, h, dh, l, t = self.d_model, self.n_heads, self.d_head, self.cmp_block, context
        flops = 2 * d * (3 * d + 3 * h + d) + 6 * d
        if t >= l - 1 and (t - l + 1) % self.cmp_stride == 0:
            flops += 2 * h * 2 * (l * dh * dh + dh * dh)
        n_cmp, n_slc, n_win = self._keys_read(t, t + 1)
        if t % self.block == 0:
            flops += 2 * d * n_cmp
        return float(flops + 4 * d * (n_cmp + n_slc + n_win))
