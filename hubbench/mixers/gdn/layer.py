"""Gated DeltaNet layer (Yang, Kautz, Hatamizadeh 2024), laid out as fla's `GatedDeltaNet`.

x -> q, k, v projections, each through a causal depthwise short conv + SiLU; q, k L2-normalised
per head (q then scaled by 1/sqrt(d_k)); beta = sigmoid(b_proj x); log-decay
g = -exp(A_log) softplus(a_proj x + dt_bias) per head; the gated delta rule (chunked.py); a
per-head RMSNorm of the output gated by SiLU(g_proj x); out-projection. Parameter names follow
fla's layer (q_proj, ..., q_conv1d, A_log, dt_bias, o_norm.weight, o_proj), so its state dict
maps 1:1 (fla's conv has no bias by default; ours has none).

Two implementations of the recurrence behind one signature:
- `ref`: `gated_delta_chunked`, this project's PyTorch chunked form, on any device;
- `fla`: fla's `chunk_gated_delta_rule` (Triton, CUDA only), or an UnavailableError saying how
  to get it. Everything around the recurrence is the same code for both.

The six input projections run as one matmul over their concatenated weights, and the three
short convs as one conv over the concatenated channels: the same arithmetic as fla's separate
modules (fla fuses the three convs the same way when it can), fewer passes over x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.gdn.chunked import L2_EPS, gated_delta_chunked, state_dtype
from hubbench.mixers.gdn.conv import short_conv_silu
from hubbench.mixers.gdn.decode import GDNDecoding
from hubbench.mixers.gdn.norm import GatedRMSNorm
from hubbench.mixers.state import compute_dtype
from hubbench.plan.variants import GDN_IMPLS  # which recurrence runs: ours, or fla's kernels

try:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
except ImportError:
    chunk_gated_delta_rule = None

INSTALL_HINT = "pip install flash-linear-attention on a CUDA machine (Triton kernels)"
# Initial softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX], floored; A uniform in [A_MIN, A_MAX]:
# fla's GatedDeltaNet (and Mamba-2's) initialisation.
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
A_MIN, A_MAX = 1.0, 16.0


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"gdn: {name} must be a positive integer, got {value!r}", (name,))
    return value


def l2_normalise(t: Tensor) -> Tensor:
    """t / sqrt(|t|^2 + eps) over the last axis (fla's l2norm; finite at t = 0)."""
    return t * torch.rsqrt(t.square().sum(-1, keepdim=True) + L2_EPS)


@dataclass
class Features:
    """What the recurrence reads, per token: q, k (B, n, h, d_k), unit and q scaled, or raw
    (`_features`' `normalise`); v (B, n, h, d_v); g, beta (B, n, h) in >= fp32; gate
    (B, n, h, d_v) for the output norm; conv_in (B, n, 2 K + V), the short convs' input, whose
    tail a decode state keeps."""

    q: Tensor
    k: Tensor
    v: Tensor
    g: Tensor
    beta: Tensor
    gate: Tensor
    conv_in: Tensor


def _check_fla_input(x: Tensor) -> None:
    """fla's chunk kernel is Triton (CUDA) and refuses fp32 inputs (its assert); say so first."""
    if x.device.type != "cuda":
        raise UnavailableError(
            f"gdn impl 'fla' runs on CUDA only (got {x.device.type}); use impl='ref'"
        )
    if compute_dtype(x) not in (torch.bfloat16, torch.float16):
        raise UnavailableError(
            f"gdn impl 'fla': fla's chunk kernel takes bf16 / fp16, got {compute_dtype(x)}; "
            "run under bf16 autocast, or use impl='ref'"
        )


class GatedDeltaNet(GDNDecoding, nn.Module):
    """Gated DeltaNet mixer: x (B, n, d_model) -> (B, n, d_model), causal unless `causal=False`.

    head_dim_k = d_model // n_heads; head_dim_v = expand_v * head_dim_k. `chunk` is the chunked
    form's block of tokens (impl 'ref'; fla's kernel has its own, 64). `causal=False` builds
    the leaky control: the chunked form's intra-chunk term without its causal mask
    (chunked.py), for `hubbench verify causal` to catch.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        chunk: int = 64,
        d_conv: int = 4,
        expand_v: int = 1,
        impl: str = "ref",
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.n_heads = _positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ConfigError(
                f"gdn: d_model ({d_model}) must be divisible by n_heads ({n_heads})",
                ("d_model", "n_heads"),
            )
        self.chunk = _positive_int("chunk", chunk)
        self.d_conv = _positive_int("d_conv", d_conv)
        self.expand_v = _positive_int("expand_v", expand_v)
        if impl not in GDN_IMPLS:
            raise ConfigError(
                f"gdn: unknown impl {impl!r}; valid: {', '.join(GDN_IMPLS)}", ("impl",)
            )
        if not isinstance(causal, bool):
            raise ConfigError(f"gdn: causal must be True or False, got {causal!r}", ("causal",))
        if impl == "fla" and not causal:
            raise ConfigError("gdn: the leaky control (causal=False) exists for impl 'ref' only")
        if impl == "fla" and chunk_gated_delta_rule is None:
            raise UnavailableError(f"gdn impl 'fla' needs flash-linear-attention: {INSTALL_HINT}")
        self.impl = impl
        self.causal = causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None

        h = n_heads
        self.head_dim_k = d_model // h
        self.head_dim_v = self.expand_v * self.head_dim_k
        self.key_dim, self.value_dim = h * self.head_dim_k, h * self.head_dim_v
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, h, bias=False)
        self.b_proj = nn.Linear(d_model, h, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.q_conv1d = nn.Conv1d(self.key_dim, self.key_dim, d_conv, groups=self.key_dim,
                                  bias=False)  # fmt: skip
        self.k_conv1d = nn.Conv1d(self.key_dim, self.key_dim, d_conv, groups=self.key_dim,
                                  bias=False)  # fmt: skip
        self.v_conv1d = nn.Conv1d(self.value_dim, self.value_dim, d_conv, groups=self.value_dim,
                                  bias=False)  # fmt: skip
        self.o_norm = GatedRMSNorm(self.head_dim_v)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(A_MIN, A_MAX)))
        self.dt_bias = nn.Parameter(self._dt_bias_init(h))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True

    @staticmethod
    def _dt_bias_init(h: int) -> Tensor:
        """softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX]: the decays start between slow and
        fast memories, as in Mamba-2 and fla."""
        log_dt = torch.rand(h) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_INIT_FLOOR)
        return dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim

    def _in_weight(self) -> Tensor:
        """The six input projections as one (2 K + 2 V + 2 h, d_model) weight: q, k, v (the
        conv channels), then the output gate, a, b."""
        return torch.cat([m.weight for m in (self.q_proj, self.k_proj, self.v_proj,
                                             self.g_proj, self.a_proj, self.b_proj)])  # fmt: skip

    def _conv_weight(self) -> Tensor:
        """(d_conv, 2 K + V): tap j of every channel, tap d_conv - 1 reading the current token."""
        w = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
        return w[:, 0].transpose(0, 1)

    def _split_in(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The fused projection's output -> conv input, output gate, a, b."""
        return z.split([self.conv_channels, self.value_dim, self.n_heads, self.n_heads], -1)

    def _heads(self, c: Tensor, normalise: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Conv output (..., 2 K + V) -> q, k (..., h, d_k), v (..., h, d_v); with `normalise`
        q and k unit (q then scaled), else raw: the chunked core normalises them itself."""
        q, k, v = c.split([self.key_dim, self.key_dim, self.value_dim], -1)
        h = self.n_heads
        q, k = q.unflatten(-1, (h, self.head_dim_k)), k.unflatten(-1, (h, self.head_dim_k))
        if normalise:
            q, k = l2_normalise(q) * self.scale, l2_normalise(k)
        return q, k, v.unflatten(-1, (h, self.head_dim_v))

    def _decay_and_beta(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """g = -exp(A_log) softplus(a + dt_bias) <= 0 and beta = sigmoid(b), (..., h) in >= fp32."""
        f = state_dtype(a.dtype)
        g = -self.A_log.to(f).exp() * F.softplus(a.to(f) + self.dt_bias.to(f))
        return g, torch.sigmoid(b.to(f))

    @property
    def scale(self) -> float:
        return self.head_dim_k**-0.5

    def _features(self, x: Tensor, normalise: bool) -> Features:
        conv_in, gate, a, b = self._split_in(F.linear(x, self._in_weight()))  # (B, n, *)
        q, k, v = self._heads(short_conv_silu(conv_in, self._conv_weight()), normalise)
        g, beta = self._decay_and_beta(a, b)
        return Features(q, k, v, g, beta, gate.unflatten(-1, (self.n_heads, self.head_dim_v)),
                        conv_in)  # fmt: skip

    def _output(self, o: Tensor, gate: Tensor, dtype: torch.dtype) -> Tensor:
        """o (..., h, d_v) -> gated norm -> out-projection, (..., d_model)."""
        return self.o_proj(self.o_norm(o, gate).to(dtype).flatten(-2))

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "fla":
            _check_fla_input(x)
            feats = self._features(x, normalise=True)
            o = self._core_fla(feats)
        else:
            feats = self._features(x, normalise=False)
            o, _ = self._core_ref(feats, self.causal)
        self.last_backend = f"gdn:{'fla' if self.impl == 'fla' else 'chunked'}"
        return self._output(o, feats.gate, feats.v.dtype)

    def _core_ref(self, feats: Features, causal: bool) -> tuple[Tensor, Tensor]:
        """Our chunked core on raw q, k: it normalises them chunk group by chunk group."""
        return gated_delta_chunked(
            feats.q, feats.k, feats.v, feats.g, feats.beta, self.chunk, causal=causal,
            l2_normalise_qk=True, scale=self.scale,
        )  # fmt: skip

    def _core_fla(self, feats: Features) -> Tensor:
        """fla's chunked kernel on our features: q already normalised and scaled (scale 1), g
        in fp32, everything else in the compute dtype (fla's kernel takes bf16 / fp16)."""
        dtype = feats.v.dtype
        o, _ = chunk_gated_delta_rule(
            q=feats.q.to(dtype),
            k=feats.k.to(dtype),
            v=feats.v,
            g=feats.g,
            beta=feats.beta.to(dtype),
            scale=1.0,
            initial_state=None,
            output_final_state=False,
        )
        return o

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence: projections, short convs, the chunked form's work
        (every product it computes, padding to whole chunks included), and the elementwise
        work (normalisations, gates, decays) at a few FLOPs per element."""
        d, h, dk, dv = self.d_model, self.n_heads, self.head_dim_k, self.head_dim_v
        K, V = self.key_dim, self.value_dim
        proj = 2 * d * (2 * K + 2 * V + 2 * h) + 2 * V * d
        conv = 2 * self.d_conv * (2 * K + V) + 4 * (2 * K + V)  # taps, SiLU
        elementwise = 8 * K + 10 * V + 12 * h  # l2 norms, gated RMSNorm, decay and beta
        if seq <= 0:
            return 0.0
        C = min(self.chunk, seq)
        n_chunks = -(-seq // C)
        per_chunk = (
            2 * C * C * dk * 2  # K K^T and Q K^T
            + C * C * (dv + dk)  # unit-lower triangular solve, dv + dk right-hand sides
            + 2 * C * C * dv  # (Q K^T * D) U
            + 3 * 2 * C * dk * dv  # W H, (exp(gam) Q) H, K'^T U
            + 8 * C * C  # decay matrix (difference, mask, exp) and the two products with it
            + 4 * C * (dk + dv)  # scaling rows by beta and decays
        )
        return float(seq * (proj + conv + elementwise) + h * n_chunks * per_chunk)
