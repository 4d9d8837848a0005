"""MoBA layer: multi-head attention where each query reads its own key block (causally) and the
`top_blocks` earlier complete blocks whose mean key scores highest against it.

`causal=False` is the family's leaky control: MoBA without its causal block exclusion, a global
top-k over every block (future and partial ones included), which `verify causal` must catch.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.heads import RotaryHeads
from hubbench.mixers.moba.attend import block_attention
from hubbench.mixers.moba.decode import MoBADecoding
from hubbench.mixers.moba.select import select_blocks


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"moba: {name} must be an integer >= {low}, got {value!r}")
    return value


class MoBA(MoBADecoding, RotaryHeads):
    """Mixture of block attention: x (B, n, d) -> (B, n, d)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        block: int = 64,
        top_blocks: int = 3,
        rope: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self._init_heads("moba", d_model, n_heads, rope)
        self.block = _int_at_least("block", block, 1)
        self.top_blocks = _int_at_least("top_blocks", top_blocks, 0)
        self.causal = causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        sel = select_blocks(q, k, self.block, self.top_blocks, self.causal)  # (B, h, n, t)
        self.last_backend = "blocked"
        return block_attention(q, k, v, sel, self.block, self.causal)

    def forward(self, x: Tensor) -> Tensor:
        return self._merge(self._attend(*self._heads(x, 0)))

    def _per_block(self, seq: int) -> Iterator[tuple[int, int, int]]:
        """(tokens, candidate blocks, selected blocks) for each query block of a sequence."""
        nb = -(-seq // self.block)
        for c in range(nb):
            tokens = min(self.block, seq - c * self.block)
            cand = c if self.causal else nb - 1
            yield tokens, cand, min(self.top_blocks, cand)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence, counting what is used (attention.py's convention):
        projections 8 seq d^2; block means d per key of a candidate block; block scores 2 d per
        (query, candidate block); QK^T and AV 4 d per (query, visible key): its own block up to
        itself plus block keys per selected block (the leaky control's partial block counted
        whole). The dense own-block product also computes the masked upper triangle and padded
        tile rows, which are not counted."""
        d, b = self.d_model, self.block
        total = 2 * seq * d * 4 * d
        means = (seq // b) * b if self.causal else seq
        total += d * means
        for tokens, cand, chosen in self._per_block(seq):
            total += 2 * d * tokens * cand
            total += 4 * d * (tokens * (tokens + 1) // 2 + tokens * chosen * b)
        return float(total)
