"""NSA, the layer: projections, block compression, block selection, three branches, gates.

Shapes: B batch, n tokens, h heads, d_h = d_model / h, nc compressed tokens, nqb = ceil(n / block)
query (and selection) blocks, K = min(top_blocks, nqb) selected blocks per query block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError
from hubbench.mixers.nsa.blocked import NEVER, blocked_attention
from hubbench.mixers.nsa.decode import NSADecoding
from hubbench.mixers.nsa.select import select_blocks
from hubbench.mixers.rope import rotary

WINDOW_QBLOCK = 64  # rows per window block = its key unit: reads (ceil((w-1)/64) + 1) * 64 keys
CMP_QBLOCK = 64  # query rows per compressed-branch block (chunks of these read one key prefix)


class Compressor(nn.Module):
    """phi of the paper: a block of `length` keys (or values) of one head -> one token.

    A learned intra-block position embedding is added, the block is flattened and a two-layer
    MLP (hidden width d_h, SiLU) maps it to d_h. Shared by all heads, as in the paper's phi.
    """

    def __init__(self, length: int, d_head: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(length, d_head) * 0.02)
        self.fc1 = nn.Linear(length * d_head, d_head)
        self.fc2 = nn.Linear(d_head, d_head)

    def forward(self, blocks: Tensor) -> Tensor:
        """blocks (..., length, d_h) -> (..., d_h)."""
        return self.fc2(F.silu(self.fc1((blocks + self.pos).flatten(-2))))


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"nsa: {name} must be a positive integer, got {value!r}")
    return value


class NSA(NSADecoding, nn.Module):
    """Native Sparse Attention (Yuan et al. 2025): x (B, n, d) -> (B, n, d). docs/mixers/nsa.md."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        cmp_block: int = 32,
        cmp_stride: int = 16,
        block: int = 64,
        top_blocks: int = 16,
        window: int = 512,
        rope: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("n_heads", n_heads), ("cmp_block", cmp_block),
                            ("cmp_stride", cmp_stride), ("block", block),
                            ("top_blocks", top_blocks), ("window", window)):  # fmt: skip
            _positive(name, value)
        if d_model % n_heads:
            raise ConfigError(f"nsa: d_model={d_model} must be divisible by n_heads={n_heads}")
        if rope and (d_model // n_heads) % 2:
            raise ConfigError(f"nsa: rope needs an even head width, got {d_model // n_heads}")
        if cmp_block % cmp_stride or block % cmp_stride:
            raise ConfigError(
                f"nsa: cmp_stride={cmp_stride} must divide cmp_block={cmp_block} and "
                f"block={block} (the paper's d | l and d | l')"
            )
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.cmp_block, self.cmp_stride, self.block = cmp_block, cmp_stride, block
        self.top_blocks, self.window, self.rope, self.causal = top_blocks, window, rope, causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, 3 * n_heads)  # compressed, selected, window per head
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.compress_k = Compressor(cmp_block, self.d_head)
        self.compress_v = Compressor(cmp_block, self.d_head)

    # -- pieces shared by forward, prefill and step -------------------------------------------

    def _project(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k rotated at positions start.., k unrotated, v: (B, h, n, d_h); gates (3, B, h, n)."""
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        k_raw = k
        if self.rope:
            pos = torch.arange(start, start + n, device=x.device)
            q, k = rotary(q, pos), rotary(k, pos)
        gates = torch.sigmoid(self.gate(x)).view(B, n, 3, self.n_heads).permute(2, 0, 3, 1)
        return q, k, k_raw, v, gates

    def n_compressed(self, n: int) -> int:
        """Compressed tokens of n tokens: complete blocks [c*stride, c*stride + cmp_block)."""
        return 0 if n < self.cmp_block else (n - self.cmp_block) // self.cmp_stride + 1

    def _compress(self, k_raw: Tensor, v: Tensor, first: int = 0) -> tuple[Tensor, Tensor]:
        """Compressed keys (rotated at their block's last position) and values (B, h, nc, d_h)
        of every complete block in k_raw, v (B, h, n, d_h); block c starts at first + c*stride."""
        l, s = self.cmp_block, self.cmp_stride
        if k_raw.shape[2] < l:
            empty = k_raw.new_zeros(*k_raw.shape[:2], 0, self.d_head)
            return empty, empty
        kc = self.compress_k(k_raw.unfold(2, l, s).transpose(-1, -2))  # (B, h, nc, d_h)
        vc = self.compress_v(v.unfold(2, l, s).transpose(-1, -2))
        if self.rope:
            kc = rotary(kc, first + torch.arange(kc.shape[2], device=kc.device) * s + l - 1)
        return kc, vc

    def cmp_visible_from(self, nc: int, device=None) -> Tensor:
        """The first position that sees compressed token c: its block's last token, or its
        first token in the leaky control (which lets a query read the block's future)."""
        c = torch.arange(nc, device=device) * self.cmp_stride
        return c if not self.causal else c + self.cmp_block - 1

    def _cmp_probs(self, q: Tensor, kc: Tensor, t: Tensor) -> Tensor:
        """Mean over heads of the compressed-branch probabilities of queries q (B, h, R, d_h) at
        positions t (R,) -> (B, R, nc) in >= fp32; 0 for invisible tokens and empty rows."""
        f = torch.promote_types(q.dtype, torch.float32)
        s = (q.to(f) @ kc.to(f).transpose(-1, -2)) / math.sqrt(self.d_head)  # (B, h, R, nc)
        hidden = self.cmp_visible_from(kc.shape[2], q.device).view(1, -1) > t.view(-1, 1)
        p = torch.softmax(s.masked_fill(hidden, float("-inf")), -1)
        return torch.nan_to_num(p, nan=0.0).mean(1)

    def _select(self, P: Tensor, own: Tensor, n_blocks: int) -> Tensor:
        return select_blocks(P, own, n_blocks, self.top_blocks, self.cmp_block, self.cmp_stride,
                             self.block)  # fmt: skip

    # -- the parallel forward -----------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The output and what a prefill keeps (rotated keys, values, compressed tokens, the
        last query block's selection)."""
        B, n, _ = x.shape
        q, k, k_raw, v, gates = self._project(x)
        kc, vc = self._compress(k_raw, v)
        nqb, b, dev = -(-n // self.block), self.block, x.device
        with torch.no_grad():  # selection is discrete: no gradient, as in the paper
            own = torch.arange(nqb, device=dev)
            P = self._cmp_probs(q[:, :, ::b].detach(), kc.detach(), own * b)  # (B, nqb, nc)
            sel = self._select(P, own, nqb)  # (B, nqb, K)
        scale = 1.0 / math.sqrt(self.d_head)
        o_cmp = blocked_attention(q, kc.to(q.dtype), vc.to(q.dtype),
                                  self.cmp_visible_from(kc.shape[2], dev),
                                  torch.full((kc.shape[2],), NEVER, device=dev), None,
                                  CMP_QBLOCK, scale)  # fmt: skip
        pos = torch.arange(n, device=dev)
        used = torch.clamp(own + 1, max=sel.shape[-1])  # valid slots come first
        o_slc = blocked_attention(q, k, v, pos, torch.full_like(pos, NEVER), sel, b, scale,
                                  unit=b, lengths=used)  # fmt: skip
        u, w = WINDOW_QBLOCK, self.window
        span = -(-(w - 1) // u) + 1  # aligned units that hold a block's window
        first = torch.arange(-(-n // u), device=dev) - span + 1
        win = (first.view(-1, 1) + torch.arange(span, device=dev)).unsqueeze(0)  # (1, nwb, U)
        o_win = blocked_attention(q, k, v, pos, pos + w - 1, win, u, scale, unit=u)
        o = gates[0, ..., None] * o_cmp + gates[1, ..., None] * o_slc + gates[2, ..., None] * o_win
        self.last_backend = "nsa:blocked"
        y = self.out(o.transpose(1, 2).reshape(B, n, self.d_model))
        return y, {"k": k, "v": v, "k_raw": k_raw, "kc": kc, "vc": vc, "sel": sel}

    # -- FLOPs ---------------------------------------------------------------------------------

    def _keys_read(self, t: int, seq: int) -> tuple[int, int, int]:
        """Keys query t (of a sequence of `seq` tokens) reads in each branch: compressed,
        selected, window."""
        seen = self.n_compressed(t + 1) if self.causal else t // self.cmp_stride + 1
        i = t // self.block
        n_slc = (min(self.top_blocks, i + 1) - 1) * self.block + t - i * self.block + 1
        return min(seen, self.n_compressed(seq)), n_slc, min(self.window, t + 1)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence: projections and gates, compression (two MLPs per
        compressed token and head), the selection scores of each block's first query, and
        QK^T + PV over the keys each query reads in the three branches (what is visible, not
        the masked padding of the blocked kernel), plus the gated sum."""
        d, h, dh, l = self.d_model, self.n_heads, self.d_head, self.cmp_block
        proj = 2 * seq * d * (3 * d + 3 * h + d) + 6 * seq * d
        nc = self.n_compressed(seq)
        compress = 2 * nc * h * 2 * (l * dh * dh + dh * dh)
        keys = sum(self._keys_summed(seq))
        starts = range(0, seq, self.block)
        select = sum(2 * d * self._keys_read(t, seq)[0] for t in starts)
        return float(proj + compress + select + 4 * d * keys)

    def _keys_summed(self, seq: int) -> tuple[int, int, int]:
        """Sum over t < seq of `_keys_read(t)`, in closed form per branch."""
        l, s, b, w = self.cmp_block, self.cmp_stride, self.block, self.window
        if self.causal:
            nc = self.n_compressed(seq)
            cmp = nc * (seq - l + 1) - s * nc * (nc - 1) // 2
        else:  # block c seen from its first token, while it lies inside the sequence
            nc = self.n_compressed(seq)
            cmp = nc * seq - s * nc * (nc - 1) // 2
        slc = 0
        for i, start in enumerate(range(0, seq, b)):
            r = min(b, seq - start)
            slc += r * (min(self.top_blocks, i + 1) - 1) * b + r * (r + 1) // 2
        win = seq * (seq + 1) // 2 if seq <= w else w * (w + 1) // 2 + (seq - w) * w
        return cmp, slc, win
