"""MoBA decoding: a KV cache plus the mean key of every complete block, and the methods
(`empty_state`, `prefill`, `step`, `decode_flops`) that MoBA takes from `MoBADecoding`.

A step appends its key and value; when its token completes a block, that block's mean key is
stored (the same sum / block the forward's selection computes). It then scores the complete
blocks before its own (all of them are, since its own is the one in progress or just
completed), keeps the top ones (rounded score, lower index wins), and attends over them plus its
own block's tokens so far: the forward's choice for that position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.attention import KVCache
from hubbench.mixers.moba.select import block_means, ordered_keys
from hubbench.mixers.state import check_step_input


@dataclass
class MoBAState:
    """Keys (rotated) and values of every token so far, and the complete blocks' mean keys.

    cache: KVCache (B, h, capacity, d_h); means: (B, h, blocks capacity, d_h) in >= fp32, the
    first `cache.length // block` rows valid. Grows linearly with the context, like a KV cache.
    """

    cache: KVCache
    means: Tensor
    block: int

    @property
    def length(self) -> int:
        return self.cache.length

    def nbytes(self) -> int:
        """Keys and values held plus the valid block means."""
        m = self.means
        row = m.shape[0] * m.shape[1] * m.shape[3] * m.element_size()
        return self.cache.nbytes() + (self.length // self.block) * row

    def snapshot(self) -> int:
        return self.cache.length

    def restore(self, snap: int) -> None:
        """Back to `snap` tokens: later writes overwrite what came after (no copy); a block
        completed after the snapshot is averaged again when it completes again."""
        self.cache.restore(snap)

    def set_mean(self, j: int, mean: Tensor) -> None:
        if j >= self.means.shape[2]:
            grow = max(j + 1, 2 * self.means.shape[2]) - self.means.shape[2]
            self.means = F.pad(self.means, (0, 0, 0, grow))
        self.means[:, :, j] = mean


class MoBADecoding:
    """The recurrent half of MoBA (a mixin: `self` is the layer)."""

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> MoBAState:
        cache = KVCache.empty(batch, self.n_heads, self.d_head, capacity, like)
        f = torch.promote_types(cache.k.dtype, torch.float32)
        blocks = max(1, capacity // self.block)
        means = torch.zeros(batch, self.n_heads, blocks, self.d_head, dtype=f, device=like.device)
        return MoBAState(cache, means, self.block)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, MoBAState]:
        """The forward of a prompt x (B, n, d), and its cache and complete blocks' means."""
        if not self.causal:
            raise ConfigError("moba: incremental decoding needs causal=true")
        B, n, _ = x.shape
        state = self.empty_state(B, max(capacity, n), x)
        if n == 0:
            return self.out(x.new_zeros(B, 0, self.d_model)), state
        q, k, v = self._heads(x, 0)
        y = self._attend(q, k, v)
        state.cache.append(k, v)
        means = block_means(state.cache.k[:, :, :n], self.block, complete_only=True)
        for j in range(means.shape[2]):
            state.set_mean(j, means[:, :, j])
        return self._merge(y), state

    def step(self, x: Tensor, state: MoBAState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.length`."""
        check_step_input(x, self.d_model, "moba")
        t, b = state.length, self.block
        q, k, v = self._heads(x, t)  # (B, h, 1, d_h)
        state.cache.append(k, v)
        keys, values = state.cache.view()  # (B, h, t + 1, d_h)
        c = t // b  # own block
        if (t + 1) % b == 0:
            state.set_mean(c, block_means(keys[:, :, c * b :], b, complete_only=True)[:, :, 0])
        sel_k, sel_v = keys[:, :, c * b :], values[:, :, c * b :]  # own block so far
        take = min(self.top_blocks, c)
        if take:
            means = state.means[:, :, :c]  # (B, h, c, d_h)
            with torch.autocast(x.device.type, enabled=False):  # the gate in >= fp32
                scores = q.to(means.dtype) @ means.transpose(-2, -1)  # (B, h, 1, c)
            ok = torch.ones(c, dtype=torch.bool, device=x.device)
            idx = ordered_keys(scores, ok).topk(take, dim=-1).indices  # (B, h, 1, take)
            rows = idx.view(*idx.shape[:2], take, 1) * b + torch.arange(b, device=x.device)
            rows = rows.reshape(*idx.shape[:2], take * b, 1).expand(-1, -1, -1, self.d_head)
            sel_k = torch.cat((torch.gather(keys, 2, rows), sel_k), 2)
            sel_v = torch.cat((torch.gather(values, 2, rows), sel_v), 2)
        scores = (q @ sel_k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))
        acc = torch.promote_types(scores.dtype, torch.float32)
        y = torch.softmax(scores.to(acc), dim=-1).to(sel_v.dtype) @ sel_v  # (B, h, 1, d_h)
        self.last_backend = "kv-cache"
        return self._merge(y)

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token after `context` tokens: projections, the mean of
        the block it completes (block x d adds, on that token only), 2 d per complete earlier
        block scored, and QK^T and AV over its own block so far plus the selected blocks. Summed
        over the tokens of a sequence this is `analytic_flops` of the sequence."""
        d, b = self.d_model, self.block
        c = context // b
        keys = context - c * b + 1 + min(self.top_blocks, c) * b
        mean = b * d if (context + 1) % b == 0 else 0
        return float(2 * d * 4 * d + mean + 2 * d * c + 4 * d * keys)
