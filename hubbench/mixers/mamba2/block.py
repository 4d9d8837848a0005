"""Mamba-2 block (docs/mixers/mamba2.md) with two implementations behind one signature.

- `ref`: the chunked SSD of ssd.py in plain PyTorch, on any device (what CPU runs use);
- `fused`: mamba-ssm's Triton `mamba_chunk_scan_combined` (CUDA), or an UnavailableError that
  says how to install it.

The layout follows mamba-ssm's `Mamba2` (norm after the gate, D per head, no biases in the
projections): one in-projection to [z, x, B, C, dt], causal depthwise conv + SiLU over
(x, B, C), dt = softplus(dt + dt_bias), A = -exp(A_log) per head, the SSD scan with skip D,
gated RMSNorm per group, out-projection. Parameter names match mamba-ssm's, so a state dict maps
1:1. The stages are methods (`split_in_proj`, `conv_silu`, `split_xbc`, `ssm`, `gate_out`), and
`in_proj_slices` names the rows of `in_proj.weight` each of z, x, B, C, dt comes from: a wrapper
that ties B/C to an attention's K/Q (Oryx, issue 31 item 3) reads those rows and calls the stages.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.mamba2.conv import conv_silu_blc
from hubbench.mixers.mamba2.decode import Mamba2Decoding, Mamba2State
from hubbench.mixers.mamba2.ssd import ssd_chunked
from hubbench.plan.variants import MAMBA_IMPLS

try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
except ImportError:
    mamba_chunk_scan_combined = None

INSTALL_HINT = "pip install 'hubbench[mamba]' on a CUDA machine (builds mamba-ssm, causal-conv1d)"
# mamba-ssm's Mamba2 init: softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX], floored; A in
# A_INIT_RANGE, uniform; norm epsilon.
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
A_INIT_RANGE = (1.0, 16.0)
NORM_EPS = 1e-5
# The forward runs in segments of whole chunks whose in-projection output has about this many
# elements (4 MB in fp32: 896 tokens at d_model 256, batch 1), each from the state the one before
# left. Every per-token tensor then stays cache-sized and reuses the allocator's blocks; one pass
# over the whole sequence made tensors of 32 MB and more at n = 16k, which glibc maps and unmaps
# on every step (page faults), and the layer's time grew faster than n.
SEGMENT_ELEMS = 1 << 20


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"mamba2: {name} must be a positive integer, got {value!r}", (name,))
    return value


class _GatedRMSNormFn(torch.autograd.Function):
    """out = RMSNorm(y * SiLU(z)) * w per group, in f; saves y, z, w and one 1/rms per group.

    Plain autograd kept SiLU(z), the gated product, the normalised product and the weighted one
    (four d_inner-wide tensors per token); backward recomputes them from y and z instead.
    """

    @staticmethod
    def forward(ctx, y, z, weight, group_size, eps):  # type: ignore[override]
        f = torch.promote_types(y.dtype, torch.float32)
        g = (y.to(f) * F.silu(z.to(f))).unflatten(-1, (-1, group_size))  # (..., G, d / G)
        rstd = torch.rsqrt(g.square().mean(-1, keepdim=True) + eps)  # (..., G, 1)
        ctx.save_for_backward(y, z, weight, rstd)
        ctx.group_size = group_size
        return (g.mul_(rstd).flatten(-2) * weight.to(f)).to(y.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        y, z, weight, rstd = ctx.saved_tensors
        f = rstd.dtype
        yf, zf = y.to(f), z.to(f)
        sig = torch.sigmoid(zf)
        silu = zf * sig
        normed = (yf * silu).unflatten(-1, (-1, ctx.group_size)).mul_(rstd)  # (..., G, d / G)
        dnormed = (grad.to(f) * weight.to(f)).unflatten(-1, (-1, ctx.group_size))
        dweight = (grad.to(f) * normed.flatten(-2)).flatten(0, -2).sum(0)
        # RMSNorm: dg = rstd * (dn - n * mean(dn * n)) over the group
        dg = (dnormed - normed * (dnormed * normed).mean(-1, keepdim=True)).mul_(rstd).flatten(-2)
        dy = (dg * silu).to(y.dtype)
        dz = (dg * yf * sig * (1 + zf * (1 - sig))).to(z.dtype)
        return dy, dz, dweight.to(weight.dtype), None, None


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)) * weight, per group of `group_size` channels: mamba-ssm's
    RMSNormGated with norm_before_gate=False. Runs in >= fp32, returns y's dtype."""

    def __init__(self, d: int, group_size: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        with torch.autocast(y.device.type, enabled=False):
            return _GatedRMSNormFn.apply(y, z, self.weight, self.group_size, self.eps)


class Mamba2(Mamba2Decoding, nn.Module):
    """Mamba-2 (SSD) block: x (B, n, d_model) -> (B, n, d_model), causal unless the leaky
    control (`causal=False`: the intra-chunk term without its causal mask)."""

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        headdim: int = 64,
        expand: int = 2,
        d_conv: int = 4,
        chunk: int = 64,
        ngroups: int = 1,
        impl: str = "ref",
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.d_state = _positive_int("d_state", d_state)
        self.headdim = _positive_int("headdim", headdim)
        self.expand = _positive_int("expand", expand)
        self.d_conv = _positive_int("d_conv", d_conv)
        self.chunk = _positive_int("chunk", chunk)
        self.ngroups = _positive_int("ngroups", ngroups)
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ConfigError(
                f"mamba2: expand * d_model = {self.d_inner} is not divisible by headdim {headdim}",
                ("headdim", "d_model", "expand"),
            )
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ConfigError(
                f"mamba2: ngroups {ngroups} does not divide the {self.nheads} heads", ("ngroups",)
            )
        if impl not in MAMBA_IMPLS:
            raise ConfigError(
                f"mamba2: unknown impl {impl!r}; valid: {', '.join(MAMBA_IMPLS)}", ("impl",)
            )
        if not isinstance(causal, bool):
            raise ConfigError(f"mamba2: causal must be true or false, got {causal!r}", ("causal",))
        if impl == "fused" and not causal:
            raise ConfigError("mamba2: the leaky control (causal=false) exists for impl 'ref' only")
        if impl == "fused" and mamba_chunk_scan_combined is None:
            raise UnavailableError(f"mamba2 impl 'fused' needs mamba-ssm's kernels: {INSTALL_HINT}")
        self.impl = impl
        self.causal = causal
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None

        H, G, N = self.nheads, ngroups, d_state
        self.conv_dim = self.d_inner + 2 * G * N  # the conv runs over x, B and C
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + H, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1
        )
        self.dt_bias = nn.Parameter(self._init_dt_bias(H))
        A = torch.empty(H).uniform_(*A_INIT_RANGE)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // G)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    @staticmethod
    def _init_dt_bias(heads: int) -> Tensor:
        """softplus^-1 of a step log-uniform in [DT_MIN, DT_MAX], floored (mamba-ssm's init)."""
        log_dt = torch.rand(heads) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_INIT_FLOOR)
        return dt + torch.log(-torch.expm1(-dt))

    @property
    def in_proj_slices(self) -> dict[str, slice]:
        """Rows of `in_proj.weight` per projection, in mamba-ssm's order z, x, B, C, dt."""
        di, gn = self.d_inner, self.ngroups * self.d_state
        bounds = {"z": di, "x": di, "B": gn, "C": gn, "dt": self.nheads}
        out, start = {}, 0
        for name, width in bounds.items():
            out[name] = slice(start, start + width)
            start += width
        return out

    # ------------------------------------------------------------------ stages of the forward

    def split_in_proj(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., d_in_proj) -> z (..., d_inner), xBC (..., conv_dim), dt (..., nheads): views."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def conv_silu(self, xBC: Tensor) -> Tensor:
        """SiLU(causal depthwise conv) over (B, K - 1 + n, conv_dim), whose first d_conv - 1
        rows are the context (zeros before a sequence) -> (B, n, conv_dim)."""
        return conv_silu_blc(xBC, self.conv1d.weight[:, 0], self.conv1d.bias)

    def split_xbc(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, n, conv_dim) -> x (B, n, H, P), B and C (B, n, G, N)."""
        gn = self.ngroups * self.d_state
        xs, Bm, Cm = xBC.split([self.d_inner, gn, gn], dim=-1)
        return (
            xs.unflatten(-1, (self.nheads, self.headdim)),
            Bm.unflatten(-1, (self.ngroups, self.d_state)),
            Cm.unflatten(-1, (self.ngroups, self.d_state)),
        )

    def ssm(
        self,
        xs: Tensor,
        dt: Tensor,
        Bm: Tensor,
        Cm: Tensor,
        initial_state: Tensor | None = None,
        want_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The SSD scan with skip D: y (B, n, H, P) in xs's dtype and, if `want_state`, the
        state after the last token (B, H, P, N) in >= fp32. dt is the raw projection."""
        if self.impl == "fused":
            return self._ssm_fused(xs, dt, Bm, Cm, initial_state, want_state)
        f = torch.promote_types(xs.dtype, torch.float32)
        with torch.autocast(xs.device.type, enabled=False):
            step = F.softplus(dt.to(f) + self.dt_bias.to(f))  # (B, n, H)
            A = -torch.exp(self.A_log.to(f))
            y, last = ssd_chunked(
                xs, step, A, Bm, Cm, self.chunk, initial_state, self.causal, D=self.D
            )
        self.last_backend = "mamba2:ref"
        return y, (last if want_state else None)

    def _ssm_fused(
        self,
        xs: Tensor,
        dt: Tensor,
        Bm: Tensor,
        Cm: Tensor,
        initial_state: Tensor | None,
        want_state: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """mamba-ssm's chunked SSD kernel, with dt's bias and softplus inside it, as Mamba2."""
        out = mamba_chunk_scan_combined(
            xs,
            dt,
            -torch.exp(self.A_log.float()),
            Bm,
            Cm,
            chunk_size=self.chunk,
            D=self.D,
            dt_bias=self.dt_bias,
            initial_states=initial_state,
            dt_softplus=True,
            return_final_states=want_state,
        )
        self.last_backend = "mamba2:fused"
        return (out[0], out[1]) if want_state else (out, None)

    def gate_out(self, y: Tensor, z: Tensor) -> Tensor:
        """Gated RMSNorm with z, then the out-projection: y (B, n, H, P) -> (B, n, d_model)."""
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _check_device(self, x: Tensor) -> None:
        if self.impl == "fused" and x.device.type != "cuda":
            raise UnavailableError(
                f"mamba2 impl 'fused' runs on CUDA only (got {x.device.type}); use impl='ref'"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_device(x)
        y, _ = self._forward(x)
        return y

    def segment_tokens(self, x: Tensor) -> int:
        """Tokens per segment of the forward: a whole number of chunks whose in-projection
        output holds about SEGMENT_ELEMS elements (at least one chunk); the whole sequence for
        the fused kernel, which wants long launches, not cache-sized ones."""
        if self.impl == "fused":
            return max(1, x.shape[1])
        per_token = x.shape[0] * self.in_proj.out_features
        return self.chunk * max(1, SEGMENT_ELEMS // (per_token * self.chunk))

    def _forward(self, x: Tensor, state: Mamba2State | None = None) -> tuple[Tensor, Mamba2State]:
        """The block over x (B, n, d) in segments, each from the conv window and SSD state the
        one before left (`state`, or zeros), and the state after the last token."""
        batch, n = x.shape[:2]
        self.last_backend = f"mamba2:{self.impl}"  # an empty sequence runs no scan
        if state is None:
            state = self.empty_state(batch, 0, x)
        tail, h = state.conv.transpose(1, 2), state.ssm  # (B, K - 1, conv_dim), (B, H, P, N)
        keep, step = self.d_conv - 1, self.segment_tokens(x)
        outs = []
        for t0 in range(0, n, step):
            z, xBC, dt = self.split_in_proj(self.in_proj(x[:, t0 : t0 + step]))
            ext = torch.cat((tail.to(xBC.dtype), xBC), 1)  # (B, K - 1 + T, conv_dim)
            tail = ext[:, ext.shape[1] - keep :]
            xs, Bm, Cm = self.split_xbc(self.conv_silu(ext))
            y, h = self.ssm(xs, dt, Bm, Cm, initial_state=h, want_state=True)
            outs.append(self.gate_out(y, z))
        if not outs:  # an empty sequence: (B, 0, d) out, the state unchanged
            outs.append(self.out_proj(x.new_zeros(batch, 0, self.d_inner)))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        return y, Mamba2State(tail.transpose(1, 2), h)

    # ------------------------------------------------------------------ FLOPs

    def _token_flops(self) -> float:
        """Per token, whatever the chunking: projections, conv, dt, skip, gate and norm."""
        d, di, H = self.d_model, self.d_inner, self.nheads
        proj = 2 * d * (di + self.conv_dim + H) + 2 * di * d
        conv = 2 * self.conv_dim * self.d_conv + 4 * self.conv_dim  # window, SiLU
        elementwise = 4 * H + 3 * di + 8 * di  # softplus + dt A, dt x + D skip, gate + norm
        return float(proj + conv + elementwise)

    def _chunk_flops(self, Q: int) -> float:
        """One chunk of Q tokens as the SSD computes it: its full Q x Q blocks (C B^T per group,
        decay weights and their product per head, times x), its state contribution, one state
        update, and the off-diagonal readout."""
        H, P, N, G = self.nheads, self.headdim, self.d_state, self.ngroups
        intra = 2 * G * Q * Q * N + 3 * H * Q * Q + 2 * H * Q * Q * P
        state = 2 * H * Q * P * N + 3 * H * Q + 2 * H * P * N  # contribution, passing
        readout = 2 * H * Q * N * P + 2 * H * Q * P
        return float(intra + state + readout)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs of one sequence: per-token work, plus every chunk of the SSD as it runs.
        Chunks are `chunk` tokens; the last partial one is padded to `chunk` when its segment
        (`segment_tokens`, at batch 1) holds more, and computed at its own length when it is a
        segment of its own (a sequence shorter than a chunk is one short chunk)."""
        if seq <= 0:
            return 0.0
        C = self.chunk
        full, r = divmod(seq, C)
        total = seq * self._token_flops() + full * self._chunk_flops(C)
        if r:
            segment = self.segment_tokens(torch.empty(1, seq, 0))
            total += self._chunk_flops(C if seq % segment >= C else r)
        return total

    def decode_flops(self, context: int) -> float:
        """One decoded token, whatever the context: the per-token work and one recurrence step
        (decay, input outer product, update, readout: ~5 per state element)."""
        del context
        H, P, N = self.nheads, self.headdim, self.d_state
        return self._token_flops() + float(5 * H * P * N + 2 * H)
