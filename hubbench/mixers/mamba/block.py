"""Mamba-1 block with two implementations behind one signature.

- `ref`: the chunked scan of scan.py, this project's PyTorch implementation, on any device. It
  is the `impl` that CPU runs use.
- `fused`: mamba-ssm's CUDA kernels (`selective_scan_fn`, plus `causal_conv1d_fn` when the
  causal-conv1d package is present, as mamba-ssm itself does), or an UnavailableError that says
  how to install them.

The block follows mamba-ssm's `Mamba` (and Jamba's Mamba layers): in-projection to x and a gate z,
causal depthwise conv1d + SiLU on x, input-dependent (delta, B, C) from x, the selective scan with
skip D, gate SiLU(z), out-projection. Parameter names match mamba-ssm's, so a state dict maps 1:1.
The conv + SiLU of the `ref` path recomputes its conv in backward (`_ConvSiLU`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.mamba import scan
from hubbench.mixers.mamba.decode import MambaDecoding
from hubbench.plan.variants import MAMBA_IMPLS

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except ImportError:
    selective_scan_fn = None
try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None

# Initial softplus(dt_bias) is log-uniform in [DT_MIN, DT_MAX], floored, as in mamba-ssm.
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
INSTALL_HINT = "pip install 'hubbench[mamba]' on a CUDA machine (builds mamba-ssm, causal-conv1d)"


class _ConvSiLU(torch.autograd.Function):
    """SiLU(causal depthwise conv1d(x)), (B, D_inner, L) -> (B, L, D_inner) contiguous.

    Saves only x (a view of the in-projection's output, which the gate keeps anyway) and the
    weights; backward recomputes the conv. Plain autograd would keep the conv output too.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight, bias)
        return _conv_silu_bld(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            leaves = [t.detach().requires_grad_(need) for t, need in
                      zip((x, weight, bias), ctx.needs_input_grad, strict=True)]  # fmt: skip
            out = _conv_silu_bld(*leaves)
            wanted = [t for t in leaves if t.requires_grad]
            got = iter(torch.autograd.grad(out, wanted, grad))
        return tuple(next(got) if t.requires_grad else None for t in leaves)


def _conv_silu_bld(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    L = x.shape[-1]
    y = F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :L]
    return F.silu(y).transpose(1, 2).contiguous()


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"mamba: {name} must be a positive integer, got {value!r}")
    return value


class Mamba(MambaDecoding, nn.Module):
    """Mamba-1 block: x (B, L, d_model) -> (B, L, d_model), causal."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        impl: str = "ref",
    ) -> None:
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.d_state = _positive_int("d_state", d_state)
        self.d_conv = _positive_int("d_conv", d_conv)
        self.d_inner = _positive_int("expand", expand) * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        _positive_int("dt_rank", self.dt_rank)
        if impl not in MAMBA_IMPLS:
            raise ConfigError(f"mamba: unknown impl {impl!r}; valid: {', '.join(MAMBA_IMPLS)}")
        if impl == "fused" and selective_scan_fn is None:
            raise UnavailableError(f"mamba impl 'fused' needs mamba-ssm's kernels: {INSTALL_HINT}")
        self.impl = impl
        self.causal = True
        self.last_backend: str | None = None
        self.aux_loss: Tensor | None = None

        d_inner, n = self.d_inner, self.d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self._init_dt()
        # S4D-real init: A = -(1..N) for every channel, kept as log so A stays negative.
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)  # (D_inner, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _init_dt(self) -> None:
        """mamba-ssm's dt projection init: weights uniform in +-dt_rank^-0.5, and a bias whose
        softplus is log-uniform in [DT_MIN, DT_MAX]. The model's weight init keeps it
        (hubbench/models/lm.py honours `_no_reinit`)."""
        self.dt_proj._no_reinit = True
        self.dt_proj.bias._no_reinit = True
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_INIT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "fused":
            if x.device.type != "cuda":
                raise UnavailableError(
                    f"mamba impl 'fused' runs on CUDA only (got {x.device.type}); use impl='ref'"
                )
            y = self._forward_fused(x)
        else:
            y = self._forward_ref(x)
        self.last_backend = f"mamba:{self.impl}"
        return y

    def _conv_silu(self, x: Tensor) -> Tensor:
        """Depthwise conv + SiLU on (B, D_inner, L); cutting the right padding keeps it causal."""
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])

    def _forward_ref(self, x: Tensor) -> Tensor:
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D_inner) each, views of one tensor
        conv_in = xs.transpose(1, 2)  # (B, D_inner, L)
        # the weights in the input's dtype, which is what autocast would give the conv
        w, b = self.conv1d.weight.to(conv_in.dtype), self.conv1d.bias.to(conv_in.dtype)
        with torch.autocast(x.device.type, enabled=False):
            xs = _ConvSiLU.apply(conv_in, w, b)  # (B, L, D_inner), contiguous
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, D_inner); bias goes in at fp32, below
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y = scan.selective_scan_bld(
            xs, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias, delta_softplus=True
        )  # (B, L, D_inner)
        return self.out_proj(y)

    def _forward_fused(self, x: Tensor) -> Tensor:
        """mamba-ssm's kernels in their (B, channels, L) layout, mirroring mamba-ssm's Mamba."""
        xz = self.in_proj.weight @ x.transpose(1, 2)  # (B, 2 D_inner, L), contiguous in L
        xs, z = xz.chunk(2, dim=1)  # (B, D_inner, L) each
        if causal_conv1d_fn is not None and 2 <= self.d_conv <= 4:  # the kernel's width range
            w = self.conv1d.weight.squeeze(1)  # (D_inner, d_conv)
            xs = causal_conv1d_fn(xs, w, self.conv1d.bias, activation="silu")
        else:
            xs = self._conv_silu(xs)
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, Bm, Cm = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj.weight @ dt.transpose(1, 2)  # (B, D_inner, L)
        Bm, Cm = Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous()  # (B, N, L)
        A = -torch.exp(self.A_log.float())  # (D_inner, N)
        y = selective_scan_fn(
            xs,
            dt,
            A,
            Bm,
            Cm,
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, D_inner, L)
        return self.out_proj(y.transpose(1, 2))

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs for one sequence: projections, conv, 7 per (token, channel, state) in the
        scan (decay product, exp, input product, update mul-add, readout mul-add), ~8 per
        (token, channel) for bias, softplus, skip D and gate."""
        d, di, r, n = self.d_model, self.d_inner, self.dt_rank, self.d_state
        linear = 2 * (d * 2 * di + di * (r + 2 * n) + r * di + di * d)
        return float(seq * (linear + 2 * di * self.d_conv + 7 * di * n + 8 * di))
