"""Mamba-1 selective-SSM mixer with two implementations behind one signature.

- `ref`: this project's PyTorch implementation (`selective_scan_chunked`, a chunked vectorised
  scan), on any device. It is the `impl` that CPU runs use. `selective_scan_ref` is the slow
  per-token loop it is tested against (mamba-ssm's naming: `_ref` is the plain reference).
- `fused`: mamba-ssm's CUDA kernels (`selective_scan_fn`, plus `causal_conv1d_fn` when the
  causal-conv1d package is present, as mamba-ssm itself does), or an UnavailableError that says
  how to install them.

The block follows mamba-ssm's `Mamba` (and Jamba's Mamba layers): in-projection to x and a gate z,
causal depthwise conv1d + SiLU on x, input-dependent (delta, B, C) from x, the selective scan with
skip D, gate SiLU(z), out-projection. Parameter names match mamba-ssm's, so a state dict maps 1:1.

How the `ref` scan works. The recurrence h_t = a_t * h_{t-1} + b_t, with a_t = exp(delta_t * A)
and b_t = delta_t * u_t * B_t, runs over (B, L, D_inner, N) elements. Materialising whole-sequence
tensors of that size (as a plain autograd scan does) costs one 128 MB copy per tensor at
D_inner 512, N 16, L 4096, and autograd keeps several. Instead the sequence is cut into chunks of
SCAN_CHUNK tokens; a Python loop runs over chunks (never over tokens), carrying the state h at each
chunk boundary. Inside a chunk, a work-efficient odd/even parallel scan runs in place on
(B, T, D_inner, N) tensors that fit in cache. Decays are multiplied, never divided: every factor
is exp(delta * A) <= 1, so no exp(+S) blow-up. A custom autograd Function saves only the inputs
and the chunk-boundary states and recomputes each chunk in its hand-written backward (reverse scan
for dL/dh), so peak memory is a few chunk-sized buffers rather than several full-length copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.state import check_step_input, compute_dtype
from hubbench.variants import MAMBA_IMPLS

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except ImportError:
    selective_scan_fn = None
try:
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None

# Tokens per chunk of the ref scan. On the 2-core CPU, 64 beat 32, 128 and 256 for fwd+bwd at
# D_inner 512, N 16 (benchmarks/mamba_vs_mambapy.py): chunk buffers stay in cache while the number
# of Python-level chunk iterations stays small.
SCAN_CHUNK = 64
# Initial softplus(dt_bias) is log-uniform in [DT_MIN, DT_MAX], floored, as in mamba-ssm.
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
INSTALL_HINT = "pip install 'hubbench[mamba]' on a CUDA machine (builds mamba-ssm, causal-conv1d)"


# ----------------------------------------------------------------------------- scan kernels


def _scan_(a: Tensor, b: Tensor) -> None:
    """b[:, t] <- a[:, t] * b[:, t-1] + b[:, t] for t = 1..T-1, in place; `a` is clobbered.

    Odd/even recursion: fold each pair (2i, 2i+1) into the odd slot, scan the odd slots (a
    half-length problem on stride-2 views), then finish each even slot from its scanned left
    neighbour. O(T) work in log2(T) levels of in-place ops on views, no copies.
    """
    T = b.shape[1]
    if T == 1:
        return
    p = T // 2
    a_odd, b_odd = a[:, 1 : 2 * p : 2], b[:, 1 : 2 * p : 2]
    b_odd.addcmul_(a_odd, b[:, 0 : 2 * p : 2])
    if p > 1:
        a_odd.mul_(a[:, 0 : 2 * p : 2])  # decay across the folded pair
        _scan_(a_odd, b_odd)
    q = (T - 1) // 2  # even slots 2, 4, .., 2q still need their left neighbour
    if q:
        b[:, 2 : 2 * q + 1 : 2].addcmul_(a[:, 2 : 2 * q + 1 : 2], b[:, 1 : 2 * q : 2])


def _scan_reverse_(r: Tensor, g: Tensor) -> None:
    """g[:, t] <- g[:, t] + r[:, t] * g[:, t+1] for t = T-2..0, in place; `r` (T-1 rows) clobbered.

    The mirror image of `_scan_`, with pairs counted from the right end.
    """
    T = g.shape[1]
    if T == 1:
        return
    s = T % 2  # pairs (s, s+1), (s+2, s+3), .., (T-2, T-1) fold into their left slot
    g_left, r_left = g[:, s : T - 1 : 2], r[:, s : T - 1 : 2]
    g_left.addcmul_(r_left, g[:, s + 1 : T : 2])
    if T // 2 > 1:
        r_pair = r[:, s : T - 2 : 2]  # couples a folded pair to the next one
        r_pair.mul_(r[:, s + 1 : T - 1 : 2])
        _scan_reverse_(r_pair, g_left)
    q = (T - 1) // 2  # unfolded slots before T-1 still need their right neighbour
    if q:
        st = T - 1 - 2 * q
        g[:, st : T - 2 : 2].addcmul_(r[:, st : T - 2 : 2], g[:, st + 1 : T - 1 : 2])


def _chunk_ab(
    u_dt: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, t0: int, t1: int
) -> tuple[Tensor, Tensor]:
    """Decays a = exp(dt A) and inputs b = dt u B for tokens t0..t1-1, each (B, T, D_inner, N)."""
    a = (dt[:, t0:t1, :, None] * A).exp_()
    b = u_dt[:, t0:t1, :, None] * Bm[:, t0:t1, None, :]
    return a, b


def _bmm_rows(vec: Tensor, mat: Tensor) -> Tensor:
    """Per-token row vector times matrix: vec (B, T, K) @ mat (B, T, K, M) -> (B, T, M)."""
    B, T, K = vec.shape
    out = torch.bmm(vec.reshape(B * T, 1, K), mat.reshape(B * T, K, mat.shape[-1]))
    return out.view(B, T, -1)


def _scan_chunks(
    u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, chunk: int, h: Tensor | None = None
) -> tuple[Tensor, list[Tensor], Tensor]:
    """The chunked forward scan: y (B, L, D_inner), the state before each chunk, the last state.

    `h` (B, D_inner, N) is the state before the first token (zeros when None).
    """
    batch, L, d_inner = u.shape
    u_dt = u * dt  # (B, L, D_inner)
    y = torch.empty_like(u)
    if h is None:
        h = u.new_zeros(batch, d_inner, A.shape[1])  # (B, D_inner, N), state before the chunk
    starts = []
    for t0 in range(0, L, chunk):
        t1 = min(t0 + chunk, L)
        starts.append(h)
        a, b = _chunk_ab(u_dt, dt, A, Bm, t0, t1)  # (B, T, D_inner, N)
        b[:, 0].addcmul_(a[:, 0], h)  # carry the previous chunk's state in
        _scan_(a, b)  # b is now h for every token of the chunk
        y[:, t0:t1] = _bmm_rows(Cm[:, t0:t1], b.transpose(-1, -2))
        h = b[:, -1].clone()
    return y, starts, h


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, in (batch, length, *) layout.

    u, dt: (B, L, D_inner); A: (D_inner, N); Bm, Cm: (B, L, N) -> y (B, L, D_inner).
    """

    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, chunk):  # type: ignore[override]
        y, starts, _ = _scan_chunks(u, dt, A, Bm, Cm, chunk)
        ctx.chunk = chunk
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(u, dt, A, Bm, Cm, torch.stack(starts, 1))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        u, dt, A, Bm, Cm, starts = ctx.saved_tensors
        with torch.autocast(dy.device.type, enabled=False):
            return (*_scan_backward(u, dt, A, Bm, Cm, starts, dy.to(u.dtype), ctx.chunk), None)


def _scan_backward(
    u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, starts: Tensor, dy: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Chunks in reverse order: recompute h, reverse-scan g = dL/dh, reduce to input gradients."""
    batch, L, d_inner = u.shape
    u_dt = u * dt
    d_udt, d_dt = torch.empty_like(u), torch.empty_like(u)  # (B, L, D_inner)
    dA = torch.zeros_like(A)
    dB, dC = torch.empty_like(Bm), torch.empty_like(Cm)
    g_next = u.new_zeros(batch, d_inner, A.shape[1])  # a_{t1} * dL/dh_{t1} from the chunk after
    for c in range(starts.shape[1] - 1, -1, -1):
        t0 = c * chunk
        t1 = min(t0 + chunk, L)
        a, b = _chunk_ab(u_dt, dt, A, Bm, t0, t1)  # (B, T, D_inner, N)
        h = b.clone()
        h[:, 0].addcmul_(a[:, 0], starts[:, c])
        r = a[:, 1:].clone()  # g_t couples to g_{t+1} through a_{t+1}
        _scan_(a, h)  # clobbers a except a[:, 0]
        g = dy[:, t0:t1, :, None] * Cm[:, t0:t1, None, :]  # (B, T, D_inner, N)
        g[:, -1].add_(g_next)
        _scan_reverse_(r, g)
        g_next = a[:, 0] * g[:, 0]
        dC[:, t0:t1] = _bmm_rows(dy[:, t0:t1], h)
        d_udt[:, t0:t1] = _bmm_rows(Bm[:, t0:t1], g.transpose(-1, -2))
        dB[:, t0:t1] = _bmm_rows(u_dt[:, t0:t1], g)
        # dL/d(dt A) = g * a_t * h_{t-1} = g * (h_t - b_t): no need to keep a
        q = torch.sub(h, b, out=b).mul_(g)
        d_dt[:, t0:t1] = (q * A).sum(-1)
        dA += (q * dt[:, t0:t1, :, None]).sum((0, 1))
    return d_udt * dt, d_dt + d_udt * u, dA, dB, dC


def _selective_scan_bld(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = SCAN_CHUNK,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """`selective_scan_chunked` in (batch, length, channel) layout, the layout the block works in.

    u, delta, z: (B, L, D_inner); A: (D_inner, N); B, C: (B, L, N) -> (B, L, D_inner).
    `return_last_state` (no autograd: prefill): also the state after the last token,
    (B, D_inner, N) in >= fp32.
    """
    dtype_in = u.dtype
    f = torch.promote_types(dtype_in, torch.float32)  # the scan runs in >= fp32, like mamba-ssm
    with torch.autocast(u.device.type, enabled=False):
        u, delta, B, C = (t.to(f).contiguous() for t in (u, delta, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.to(f)
        if delta_softplus:
            delta = F.softplus(delta)
        last = None
        if return_last_state:
            y, _, last = _scan_chunks(u, delta, A.to(f), B, C, chunk_size)
        else:
            y = _SelectiveScan.apply(u, delta, A.to(f), B, C, chunk_size)  # (B, L, D_inner)
        if D is not None:
            y = y + u * D.to(f)
        if z is not None:
            y = y * F.silu(z.to(f))
    return (y.to(dtype_in), last) if return_last_state else y.to(dtype_in)


def _check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    batch, d_inner, L = u.shape
    n = A.shape[-1]
    want = {"delta": (batch, d_inner, L), "A": (d_inner, n), "B": (batch, n, L), "C": (batch, n, L)}
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if tuple(t.shape) != want[name]:
            raise ConfigError(
                f"selective scan: {name} has shape {tuple(t.shape)}, expected {want[name]} "
                "(u, delta: (batch, d_inner, L); A: (d_inner, N); B, C: (batch, N, L))"
            )


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    chunk_size: int = SCAN_CHUNK,
) -> Tensor:
    """Selective scan with mamba-ssm's argument layout, chunked and vectorised (no token loop).

    u, delta: (B, D_inner, L); A: (D_inner, N), real; B, C: (B, N, L), input-dependent;
    D, delta_bias: (D_inner,); z: (B, D_inner, L) -> (B, D_inner, L) in u's dtype.
    delta <- softplus(delta + delta_bias) when asked; y = C.h + D u, gated by SiLU(z).
    """
    _check_scan_shapes(u, delta, A, B, C)
    if chunk_size < 1:
        raise ConfigError(f"selective scan: chunk_size must be >= 1, got {chunk_size}")
    y = _selective_scan_bld(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        D=D,
        z=None if z is None else z.transpose(1, 2),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        chunk_size=chunk_size,
    )
    return y.transpose(1, 2)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """The reference scan, as mamba-ssm's `selective_scan_ref`: a plain loop over tokens (slow).

    Ground truth for `selective_scan_chunked` and for the fused kernel.
    """
    _check_scan_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    f = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D_inner, N)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D_inner, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (B, D_inner)
    y = torch.stack(ys, dim=-1)  # (B, D_inner, L)
    if D is not None:
        y = y + u * D.to(f)[:, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(dtype_in)


# ----------------------------------------------------------------------------- the block


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"mamba: {name} must be a positive integer, got {value!r}")
    return value


@dataclass
class MambaState:
    """The recurrent state of one Mamba layer, as mamba-ssm's `step` keeps it.

    conv: the last d_conv - 1 inputs of the depthwise conv, (B, D_inner, d_conv - 1);
    ssm: h after the last token, (B, D_inner, N), in >= fp32. Constant in context length.
    """

    conv: Tensor
    ssm: Tensor

    def nbytes(self) -> int:
        return (
            self.conv.numel() * self.conv.element_size()
            + self.ssm.numel() * self.ssm.element_size()
        )

    def snapshot(self) -> tuple[Tensor, Tensor]:
        return self.conv.clone(), self.ssm.clone()

    def restore(self, snap: tuple[Tensor, Tensor]) -> None:
        self.conv.copy_(snap[0])
        self.ssm.copy_(snap[1])


class Mamba(nn.Module):
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
        # Model-level weight init must keep the dt init below (models._init_weights honours this).
        self.dt_proj._no_reinit = True
        self.dt_proj.bias._no_reinit = True
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)
        dt = log_dt.exp().clamp(min=DT_INIT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # S4D-real init: A = -(1..N) for every channel, kept as log so A stays negative.
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)  # (D_inner, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

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
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D_inner) each
        xs = self._conv_silu(xs.transpose(1, 2)).transpose(1, 2)  # (B, L, D_inner)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, D_inner); bias goes in at fp32, below
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y = _selective_scan_bld(
            xs, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias, delta_softplus=True
        )  # (B, L, D_inner)
        return self.out_proj(y)

    # -- incremental inference ----------------------------------------------------------------

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> MambaState:
        del capacity  # the state does not grow
        f = torch.promote_types(like.dtype, torch.float32)
        conv = like.new_zeros(batch, self.d_inner, self.d_conv - 1, dtype=compute_dtype(like))
        return MambaState(conv, torch.zeros(batch, self.d_inner, self.d_state, dtype=f,
                                            device=like.device))  # fmt: skip

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, MambaState]:
        """The forward of a prompt x (B, L, d) through the chunked scan, and the state after it.

        Prefill always runs the chunked scan (mamba-ssm's fused prefill is not wired here), so
        on CUDA with impl 'fused' the prefill time is the ref scan's; the row records it.
        """
        del capacity
        L = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D_inner) each
        conv_in = xs.transpose(1, 2)  # (B, D_inner, L)
        keep = self.d_conv - 1
        # the conv window's last d_conv - 1 inputs, zeros before the first token
        tail = F.pad(conv_in, (keep, 0))[..., L:]  # (B, D_inner, keep)
        xs = self._conv_silu(conv_in).transpose(1, 2)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y, last = _selective_scan_bld(
            xs, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias, delta_softplus=True,
            return_last_state=True,
        )  # fmt: skip
        self.last_backend = "mamba:ref"
        return self.out_proj(y), MambaState(tail.contiguous(), last)

    def step(self, x: Tensor, state: MambaState) -> Tensor:
        """One token per sequence, x (B, 1, d): conv window shift, one SSM update, readout."""
        check_step_input(x, self.d_model, "mamba")
        f = state.ssm.dtype
        xs, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)  # (B, D_inner) each
        window = torch.cat((state.conv, xs.unsqueeze(-1)), -1)  # (B, D_inner, d_conv)
        state.conv.copy_(window[..., 1:])
        w = self.conv1d.weight.squeeze(1)  # (D_inner, d_conv)
        xc = F.silu((window * w).sum(-1) + self.conv1d.bias)  # (B, D_inner)
        dt, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight).to(f) + self.dt_proj.bias.to(f))
        A = -torch.exp(self.A_log.to(f))  # (D_inner, N)
        u = xc.to(f)
        state.ssm.mul_(torch.exp(dt.unsqueeze(-1) * A)).add_(
            (dt * u).unsqueeze(-1) * Bm.to(f).unsqueeze(1)
        )
        y = (state.ssm * Cm.to(f).unsqueeze(1)).sum(-1) + u * self.D.to(f)
        y = y * F.silu(z.to(f))
        self.last_backend = "mamba:step"
        return self.out_proj(y.to(x.dtype)).unsqueeze(1)

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token: the same per-token work as the scan's."""
        del context
        return self.analytic_flops(1)

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
