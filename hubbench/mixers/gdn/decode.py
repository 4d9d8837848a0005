"""Gated DeltaNet's recurrent decoding: the state one layer carries from token to token, and the
methods (`empty_state`, `prefill`, `step`, `decode_flops`) that GatedDeltaNet takes from
`GDNDecoding`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError
from hubbench.mixers.gdn.chunked import gated_delta_step, state_dtype
from hubbench.mixers.state import check_step_input, compute_dtype


@dataclass
class GDNState:
    """The recurrent state of one Gated DeltaNet layer. Constant in context length.

    conv: the last d_conv - 1 inputs of the three short convs, q, k and v channels side by side,
    (B, d_conv - 1, 2 K + V) in the compute dtype (zeros before the first token);
    ssm: the delta-rule state H per head, (B, heads, d_k, d_v) in >= fp32.
    """

    conv: Tensor
    ssm: Tensor

    def nbytes(self) -> int:
        """Bytes of the whole batch's state."""
        return sum(t.numel() * t.element_size() for t in (self.conv, self.ssm))

    def snapshot(self) -> tuple[Tensor, Tensor]:
        return self.conv.clone(), self.ssm.clone()

    def restore(self, snap: tuple[Tensor, Tensor]) -> None:
        self.conv.copy_(snap[0])
        self.ssm.copy_(snap[1])


class GDNDecoding:
    """The recurrent half of GatedDeltaNet (a mixin: `self` is the layer, whose parameters and
    helpers `_features`, `_core_ref`, `_split_in`, `_in_weight`, `_conv_weight`, `_heads`,
    `_decay_and_beta`, `_output`
    these methods use)."""

    def _check_decodable(self) -> None:
        if not self.causal:
            raise ConfigError("gdn: incremental decoding needs causal=true (the leaky control)")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> GDNState:
        del capacity  # the state does not grow
        self._check_decodable()
        conv = like.new_zeros(batch, self.d_conv - 1, self.conv_channels, dtype=compute_dtype(like))
        ssm = like.new_zeros(batch, self.n_heads, self.head_dim_k, self.head_dim_v,
                             dtype=state_dtype(like.dtype))  # fmt: skip
        return GDNState(conv, ssm)

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, GDNState]:
        """The forward of a prompt x (B, n, d) through the chunked form, and the state after it.

        Prefill always runs our chunked form (fla's kernel is not wired here), so with impl
        'fla' the prefill time is the ref path's.
        """
        del capacity
        self._check_decodable()
        B, n = x.shape[:2]
        if n == 0:  # an empty prompt leaves the empty state
            empty = self.o_proj(x.new_zeros(B, 0, self.value_dim))
            return empty, self.empty_state(B, 0, x)
        feats = self._features(x, normalise=False)
        o, last = self._core_ref(feats, True)
        keep = self.d_conv - 1
        tail = F.pad(feats.conv_in, (0, 0, keep, 0))[:, n:]  # (B, keep, 2 K + V)
        self.last_backend = "gdn:chunked"
        return self._output(o, feats.gate, feats.v.dtype), GDNState(tail.contiguous(), last)

    def step(self, x: Tensor, state: GDNState) -> Tensor:
        """One token per sequence, x (B, 1, d): conv window shift, one delta-rule update."""
        check_step_input(x, self.d_model, "gdn")
        self._check_decodable()
        conv_in, gate, a, b = self._split_in(F.linear(x[:, 0], self._in_weight()))  # (B, *)
        window = torch.cat((state.conv, conv_in.unsqueeze(1).to(state.conv.dtype)), 1)
        state.conv.copy_(window[:, 1:])
        c = (window * self._conv_weight().to(window.dtype)).sum(1)  # (B, 2 K + V)
        q, k, v = self._heads(F.silu(c), normalise=True)  # (B, h, d)
        g, beta = self._decay_and_beta(a, b)  # (B, h)
        o = gated_delta_step(q, k, v, g, beta, state.ssm)  # (B, h, d_v)
        self.last_backend = "gdn:step"
        return self._output(o, gate.unflatten(-1, (self.n_heads, self.head_dim_v)),
                            v.dtype).unsqueeze(1)  # fmt: skip

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token, constant in `context`: projections, conv taps,
        7 per (head, d_k, d_v) state entry (decay, recall, rank-one write, readout), and the
        elementwise work counted as in analytic_flops."""
        del context
        d, h, dk, dv = self.d_model, self.n_heads, self.head_dim_k, self.head_dim_v
        K, V = self.key_dim, self.value_dim
        proj = 2 * d * (2 * K + 2 * V + 2 * h) + 2 * V * d
        conv = 2 * self.d_conv * (2 * K + V) + 4 * (2 * K + V)
        elementwise = 8 * K + 10 * V + 12 * h
        return float(proj + conv + elementwise + 7 * h * dk * dv)
