"""The two recurrences an Oryx block is built on, seen through one small interface.

`GDNBlock` and `Mamba2Block` are the project's GatedDeltaNet and Mamba2 (same parameters, same
names, their forward unchanged), with the methods Oryx needs to run the attention mode on the
recurrence's own representations:

- `run(x, want_state)`: the sequence in segments (the base forward's own: one for GDN, whose
  core groups chunks itself; Mamba-2's cache-sized runs of whole chunks), each with its streams,
  the per-token tensors among which the tied ones (attention keys: GDN k / Mamba-2 B,
  unit-normalised; values: GDN v / Mamba-2 x; the base of the attention query: GDN q /
  Mamba-2 C, raw), and the recurrence's outputs over every token (its state must pass through
  attention-mode tokens too); then the base's state after the last token;
- `finish(o, s)`: the shared output gate / norm and out-projection, o (B, T, H, Dv) -> (B, T, d);
- `token(x, state)` and `recurrence_step(s, state)`: the same for one decoded token, advancing
  the base's conv and recurrent state in place;
- `recurrence_only()`: the parameter elements only the recurrence mode uses (its gates and
  decays), for the tied share.

Shapes: H value heads of width Dv; Hk key heads of width Dk (Hk divides H: head h reads key head
h // (H / Hk)); the query base is per head, (B, n, H, Dk). GDN: Hk = H, Dk = d_k, Dv = d_v.
Mamba-2: Hk = ngroups, Dk = d_state, H = nheads, Dv = headdim.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.gdn import GatedDeltaNet, GDNState, gated_delta_step
from hubbench.mixers.mamba2 import Mamba2, Mamba2State, ssd_step

NORM_EPS = 1e-6  # inside the root, as GDN's (and fla's) l2norm: unit(GDN k) is GDN's own key


def unit(t: Tensor) -> Tensor:
    """t / sqrt(|t|^2 + eps) over the last axis: finite at 0, unit length elsewhere."""
    return t * torch.rsqrt(t.square().sum(-1, keepdim=True) + NORM_EPS)


@dataclass
class Streams:
    """What one run of a base computes per token (B, n, ...).

    query: the base of the attention query, the recurrence's query before any normalisation
    (GDN q after its conv, (B, n, H, Dk); Mamba-2 C, (B, n, Hk, 1, Dk), one per key head,
    broadcast over its H / Hk heads); keys (B, n, Hk, Dk) unit length;
    values (B, n, H, Dv); rest: what the base's recurrence and output need (its own layout).
    """

    query: Tensor
    keys: Tensor
    values: Tensor
    rest: Any


@dataclass
class _GDNToken:
    """One decoded token's GDN inputs as the recurrence reads them: q (unit, scaled), k (unit)
    (B, h, d_k), v (B, h, d_v), g, beta (B, h), and the output gate (B, 1, h, d_v)."""

    q: Tensor
    k: Tensor
    v: Tensor
    g: Tensor
    beta: Tensor
    gate: Tensor


@dataclass
class _Mamba2Rest:
    """Mamba-2's per-token tensors beside the tied ones: the gate z, the raw step dt, and B
    and C as the scan reads them (not normalised)."""

    z: Tensor
    dt: Tensor
    B: Tensor
    C: Tensor


@dataclass
class Segment:
    """Tokens t0 .. t0 + T - 1 of a run: their streams and the recurrence's outputs o
    (B, T, H, Dv)."""

    t0: int
    streams: Streams
    o: Tensor


class GDNBlock(GatedDeltaNet):
    """Gated DeltaNet with the stages Oryx runs separately (module docstring)."""

    @property
    def heads(self) -> int:
        return self.n_heads

    @property
    def key_heads(self) -> int:
        return self.n_heads

    @property
    def key_width(self) -> int:
        return self.head_dim_k

    @property
    def value_width(self) -> int:
        return self.head_dim_v

    def run(self, x: Tensor, want_state: bool) -> tuple[list[Segment], GDNState | None]:
        """The whole sequence as one segment (GDN's core groups its chunks itself), and the
        state after it if `want_state`."""
        feats = self._features(x, normalise=False)  # raw q, k: the core normalises them
        s = Streams(feats.q, unit(feats.k), feats.v, feats)
        if self.impl == "fla" and not want_state:  # fla's kernel takes q, k normalised
            q, k = unit(feats.q) * self.scale, s.keys.to(feats.k.dtype)
            return [Segment(0, s, self._core_fla(replace(feats, q=q, k=k)))], None
        o, last = self._core_ref(feats, True)  # the very call GatedDeltaNet.forward makes
        self.last_backend = "gdn:chunked"
        if not want_state:
            return [Segment(0, s, o)], None
        keep, n = self.d_conv - 1, x.shape[1]
        tail = F.pad(feats.conv_in, (0, 0, keep, 0))[:, n:].contiguous()  # (B, keep, channels)
        return [Segment(0, s, o)], GDNState(tail, last)

    def finish(self, o: Tensor, s: Streams) -> Tensor:
        """The shared output: gated RMSNorm per head, out-projection: (B, T, d_model)."""
        return self._output(o, s.rest.gate, s.values.dtype)

    def empty_output(self, x: Tensor) -> Tensor:
        """The output of an empty prompt, (B, 0, d_model), in the out-projection's dtype."""
        return self.o_proj(x.new_zeros(x.shape[0], 0, self.value_dim))

    def token(self, x: Tensor, state: GDNState) -> Streams:
        """One token x (B, 1, d): shifts the conv window in `state`; streams of length 1."""
        conv_in, gate, a, b = self._split_in(F.linear(x[:, 0], self._in_weight()))  # (B, *)
        window = torch.cat((state.conv, conv_in.unsqueeze(1).to(state.conv.dtype)), 1)
        state.conv.copy_(window[:, 1:])
        c = (window * self._conv_weight().to(window.dtype)).sum(1)  # (B, 2 K + V)
        q, k, v = self._heads(F.silu(c), normalise=False)  # (B, h, d), q and k raw
        g, beta = self._decay_and_beta(a, b)  # (B, h)
        gate = gate.unflatten(-1, (self.n_heads, self.head_dim_v)).unsqueeze(1)  # (B, 1, h, d_v)
        k = unit(k)
        rest = _GDNToken(unit(q) * self.scale, k, v, g, beta, gate)
        return Streams(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), rest)

    def recurrence_step(self, s: Streams, state: GDNState) -> Tensor:
        r = s.rest
        o = gated_delta_step(r.q, r.k, r.v, r.g, r.beta, state.ssm)  # (B, h, d_v)
        self.last_backend = "gdn:step"
        return o.unsqueeze(1)  # (B, 1, h, d_v)

    def recurrence_only(self) -> dict[str, int]:
        """The decay and write-strength projections and parameters: beta, g (a, dt, A)."""
        return {
            "a_proj.weight": self.a_proj.weight.numel(),
            "b_proj.weight": self.b_proj.weight.numel(),
            "A_log": self.A_log.numel(),
            "dt_bias": self.dt_bias.numel(),
        }


class Mamba2Block(Mamba2):
    """Mamba-2 with the stages Oryx runs separately (module docstring)."""

    @property
    def heads(self) -> int:
        return self.nheads

    @property
    def key_heads(self) -> int:
        return self.ngroups

    @property
    def key_width(self) -> int:
        return self.d_state

    @property
    def value_width(self) -> int:
        return self.headdim

    def _split(self, z: Tensor, xBC: Tensor, dt: Tensor) -> Streams:
        xs, Bm, Cm = self.split_xbc(xBC)  # (B, n, H, P), (B, n, G, N) twice
        query = Cm.unsqueeze(-2)  # (B, n, G, 1, N): one C per group, broadcast over its heads
        return Streams(query, unit(Bm), xs, _Mamba2Rest(z, dt, Bm, Cm))

    def run(self, x: Tensor, want_state: bool) -> tuple[list[Segment], Mamba2State | None]:
        """The sequence in Mamba2.forward's segments (`segment_tokens`: whole chunks, cache-sized
        per-token tensors), each from the conv context and SSD state the one before left, and
        the state after the last token."""
        del want_state  # the segments carry the state anyway
        batch, n = x.shape[:2]
        state = self.empty_state(batch, 0, x)
        tail, h = state.conv.transpose(1, 2), state.ssm  # (B, K - 1, conv_dim), (B, H, P, N)
        keep, step = self.d_conv - 1, self.segment_tokens(x)
        segments = []
        for t0 in range(0, n, step):
            z, xBC, dt = self.split_in_proj(self.in_proj(x[:, t0 : t0 + step]))
            ext = torch.cat((tail.to(xBC.dtype), xBC), 1)  # (B, K - 1 + T, conv_dim)
            tail = ext[:, ext.shape[1] - keep :]
            s = self._split(z, self.conv_silu(ext), dt)
            o, h = self.ssm(s.values, dt, s.rest.B, s.rest.C, initial_state=h, want_state=True)
            segments.append(Segment(t0, s, o))
        return segments, Mamba2State(tail.transpose(1, 2).contiguous(), h)

    def finish(self, o: Tensor, s: Streams) -> Tensor:
        """The shared output: y SiLU(z), grouped RMSNorm, out-projection: (B, T, d_model)."""
        return self.gate_out(o, s.rest.z)

    def empty_output(self, x: Tensor) -> Tensor:
        """The output of an empty prompt, (B, 0, d_model), in the out-projection's dtype."""
        return self.out_proj(x.new_zeros(x.shape[0], 0, self.d_inner))

    def token(self, x: Tensor, state: Mamba2State) -> Streams:
        """One token x (B, 1, d): shifts the conv window in `state`; streams of length 1."""
        z, xBC, dt = self.split_in_proj(self.in_proj(x[:, 0]))  # (B, *) each
        window = torch.cat((state.conv, xBC.unsqueeze(-1).to(state.conv.dtype)), -1)
        state.conv.copy_(window[..., 1:])
        w = self.conv1d.weight.squeeze(1)  # (conv_dim, d_conv)
        xBC = F.silu((window * w).sum(-1) + self.conv1d.bias)  # (B, conv_dim)
        return self._split(z.unsqueeze(1), xBC.unsqueeze(1), dt.unsqueeze(1))

    def recurrence_step(self, s: Streams, state: Mamba2State) -> Tensor:
        r, f = s.rest, state.ssm.dtype
        step = F.softplus(r.dt[:, 0].to(f) + self.dt_bias.to(f))  # (B, H)
        A = -torch.exp(self.A_log.to(f))
        y = ssd_step(state.ssm, s.values[:, 0], step, A, r.B[:, 0], r.C[:, 0], self.D)
        self.last_backend = "mamba2:step"
        return y.to(s.values.dtype).unsqueeze(1)  # (B, 1, H, P)

    def recurrence_only(self) -> dict[str, int]:
        """The step size (dt rows of in_proj, dt_bias), the decay A and the skip D."""
        return {
            "in_proj.weight[dt]": self.nheads * self.d_model,
            "dt_bias": self.dt_bias.numel(),
            "A_log": self.A_log.numel(),
            "D": self.D.numel(),
        }
