"""The chunked SSD core of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", section 6).

The recurrence, per batch element b, head h (scalar decay a_t = exp(dt_t A_h) per head):

    h_t = a_t h_{t-1} + dt_t x_t B_t^T      state (headdim P, d_state N)
    y_t = h_t C_t                           (P,)

B and C are shared by the heads of a group (`ngroups` G divides the heads H). The chunked form
cuts the sequence into chunks of Q tokens and splits the (n x n) semiseparable matrix into
diagonal blocks (inside a chunk, a masked Q x Q "attention" with decay weights) and low-rank
off-diagonal blocks (the state each chunk hands the next):

1. inside chunk c: y_i += sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j, cs = cumsum(dt A)
   over the chunk; the mask j <= i is what makes it causal;
2. chunk state: S_c = sum_j exp(cs_last - cs_j) dt_j x_j B_j^T;
3. state passing: h_c = exp(cs_last of chunk c-1) h_{c-1} + S_{c-1}, a loop over chunks
   (n / Q small updates; a closed-form (n/Q)^2 segment-sum over chunks, as ssd_minimal does,
   would grow quadratically in n);
4. between chunks: y_i += exp(cs_i) (C_i . h_c).

Every exponent is a sum of dt A <= 0 over a causal span, so every factor is <= 1 (no exp(+S)
overflow), except in the leaky control (`causal=False`), which leaves out the mask of step 1:
the realistic bug of a chunked SSD, where tokens read later tokens of their own chunk (with
weights exp(cs_i - cs_j) >= 1).

Everything runs in >= fp32 with autocast off (the state accumulates in fp32 under bf16, as
mamba-ssm's kernels do), in one autograd Function (`_SSD`) whose backward is written out and
recomputes the chunk layout from the saved inputs. All per-token tensors are O(n * H * Q), never
n x n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError


def check_ssd_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """x (b, n, H, P), dt (b, n, H), A (H,), B and C (b, n, G, N) with G dividing H."""
    if x.dim() != 4:
        raise ConfigError(f"ssd: x must be (batch, n, heads, headdim), got {tuple(x.shape)}")
    b, n, h, _ = x.shape
    if B.dim() != 4 or B.shape[:2] != (b, n) or h % B.shape[2] != 0:
        raise ConfigError(
            f"ssd: B must be (batch, n, ngroups, d_state) with ngroups dividing {h} heads, "
            f"got {tuple(B.shape)}"
        )
    want = {"dt": (b, n, h), "A": (h,), "C": tuple(B.shape)}
    for name, t in (("dt", dt), ("A", A), ("C", C)):
        if tuple(t.shape) != want[name]:
            raise ConfigError(f"ssd: {name} has shape {tuple(t.shape)}, expected {want[name]}")


def _pass_states(decay: Tensor, S: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """h_{k+1} = decay_k h_k + S_k over chunks k = 0..c-1, from h_0: the state before each chunk
    (b, c, H, P, N) and after the last (b, H, P, N). decay (b, c, H), S (b, c, H, P, N)."""
    starts = torch.empty(S.shape, dtype=S.dtype, device=S.device)  # contiguous, whatever S is
    h = h0
    for k in range(S.shape[1]):
        starts[:, k] = h
        h = torch.addcmul(S[:, k], decay[:, k, :, None, None], h)
    return starts, h


def _pass_states_backward(
    decay: Tensor, starts: Tensor, g_starts: Tensor, g_last: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The mirror loop of `_pass_states`: dS, d decay and d h_0 from the gradients of the
    states before each chunk and of the last one."""
    g = torch.zeros_like(starts[:, 0]) if g_last is None else g_last.clone()
    dS = torch.empty_like(starts)
    ddecay = torch.empty_like(decay)
    for k in range(starts.shape[1] - 1, -1, -1):  # g is dL/dh_{k+1} here
        dS[:, k] = g
        ddecay[:, k] = (g * starts[:, k]).sum((-1, -2))
        g.mul_(decay[:, k, :, None, None]).add_(g_starts[:, k])
    return dS, ddecay, g


@dataclass
class _Chunks:
    """A sequence's inputs laid out in chunks of Q tokens (padded), in f: what the forward
    computes and the backward recomputes. Shapes: b batch, c chunks, H heads, P headdim, G
    groups, N d_state."""

    xf: Tensor  # (b, n, H, P), x in f, unpadded
    dtf: Tensor  # (b, n, H)
    xdt: Tensor  # (b, c, Q, H, P), dt_j x_j
    cs: Tensor  # (b, c, H, Q), cumsum of dt A inside each chunk
    Bc: Tensor  # (b, c, G, Q, N)
    Cc: Tensor  # (b, c, G, Q, N)
    L: Tensor  # (b, c, H, Q, Q), exp(cs_i - cs_j), 0 where j > i unless leaky
    CB: Tensor  # (b, c, G, Q, Q), C_i . B_j
    w: Tensor  # (b, c, H, Q), exp(cs_last - cs_j): token j's decay to the chunk's end

    def heads(self, t: Tensor) -> Tensor:
        """(b, c, G, Q, r P) per group -> (b, c, Q, H, P) per head."""
        b, c, G, Q, _ = t.shape
        H, P = self.xdt.shape[-2:]
        return t.unflatten(-1, (H // G, P)).permute(0, 1, 3, 2, 4, 5).reshape(b, c, Q, H, P)

    def groups(self, t: Tensor) -> Tensor:
        """(b, c, Q, H, P) per head -> (b, c, G, Q, r P) per group (a view)."""
        b, c, Q = t.shape[:3]
        return t.reshape(b, c, Q, self.Bc.shape[2], -1).transpose(2, 3)

    def mixing(self) -> Tensor:
        """M = L * C B^T per head, (b, c, H, Q, Q): the diagonal blocks."""
        b, c, H, Q, _ = self.L.shape
        G = self.CB.shape[2]
        return (self.L.reshape(b, c, G, H // G, Q, Q) * self.CB[:, :, :, None]).reshape(
            b, c, H, Q, Q
        )


def _chunks(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, Q: int, causal: bool, f: torch.dtype
) -> _Chunks:
    b, n, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    c = -(-n // Q)
    pad = c * Q - n  # padded tokens have dt = 0: no decay, no input, outputs dropped
    xf, dtf, Bf, Cf = (t.to(f) for t in (x, dt, B, C))
    xdt = xf * dtf[..., None]  # (b, n, H, P)
    dA = dtf * A.to(f)  # (b, n, H)
    if pad:
        xdt, dA = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(dA, (0, 0, 0, pad))
        Bf, Cf = F.pad(Bf, (0, 0, 0, 0, 0, pad)), F.pad(Cf, (0, 0, 0, 0, 0, pad))
    cs = dA.view(b, c, Q, H).transpose(2, 3).cumsum(-1)  # (b, c, H, Q)
    Bc = Bf.view(b, c, Q, G, N).transpose(2, 3)  # (b, c, G, Q, N)
    Cc = Cf.view(b, c, Q, G, N).transpose(2, 3)
    seg = cs[..., :, None] - cs[..., None, :]  # (b, c, H, Q, Q), cs_i - cs_j
    if causal:
        future = torch.ones(Q, Q, dtype=torch.bool, device=x.device).triu_(1)
        seg.masked_fill_(future, float("-inf"))
    return _Chunks(
        xf=xf,
        dtf=dtf,
        xdt=xdt.reshape(b, c, Q, H, P),
        cs=cs,
        Bc=Bc,
        Cc=Cc,
        L=seg.exp_(),
        CB=Cc @ Bc.transpose(-1, -2),
        w=(cs[..., -1:] - cs).exp_(),
    )


class _SSD(torch.autograd.Function):
    """The chunked SSD (module docstring) with its backward written out.

    Saves its inputs as passed and the state before each chunk (one (H, P, N) state per chunk);
    backward recomputes the chunk layout, the decay blocks and C B^T from them. Plain autograd
    kept about a dozen per-token tensors of H * Q elements (the decay blocks, their products,
    transposed copies of x) from forward to backward.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, D, Q, causal):  # type: ignore[override]
        f = h0.dtype
        b, n, H, P = x.shape
        k = _chunks(x, dt, A, B, C, Q, causal, f)
        c = k.cs.shape[1]
        y_diag = k.mixing() @ k.xdt.transpose(2, 3)  # (b, c, H, Q, P)
        xw = k.groups(k.xdt * k.w.transpose(2, 3)[..., None])  # (b, c, G, Q, r P)
        S = (xw.transpose(-1, -2) @ k.Bc).reshape(b, c, H, P, -1)  # (b, c, H, P, N)
        starts, last = _pass_states(k.cs[..., -1].exp(), S, h0)
        G = k.Bc.shape[2]
        off = k.Cc @ starts.reshape(b, c, G, -1, S.shape[-1]).transpose(-1, -2)  # (b,c,G,Q,rP)
        y = k.heads(off).mul_(k.cs.exp().transpose(2, 3)[..., None])  # (b, c, Q, H, P)
        y = y.add_(y_diag.transpose(2, 3)).reshape(b, c * Q, H, P)[:, :n]
        if D is not None:
            y = y + k.xf * D.to(f)[:, None]
        ctx.save_for_backward(x, dt, A, B, C, D, starts)
        ctx.Q, ctx.causal = Q, causal
        return y.to(x.dtype), last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast):  # type: ignore[override]
        x, dt, A, B, C, D, starts = ctx.saved_tensors
        f = starts.dtype
        b, n, H, P = x.shape
        Q = ctx.Q
        k = _chunks(x, dt, A, B, C, Q, ctx.causal, f)
        c, G, N = k.cs.shape[1], k.Bc.shape[2], k.Bc.shape[4]
        dyf = torch.zeros(b, c * Q, H, P, dtype=f, device=x.device)
        dyf[:, :n] = dy
        dyc = dyf.view(b, c, Q, H, P)
        E = k.cs.exp()  # (b, c, H, Q), decay from the chunk's start to token i

        # 4. off-diagonal readout y_i += E_i C_i h_c
        dy_e = k.groups(dyc * E.transpose(2, 3)[..., None])  # (b, c, G, Q, r P)
        st = starts.reshape(b, c, G, -1, N)  # (b, c, G, r P, N)
        dC = dy_e @ st  # (b, c, G, Q, N)
        dstarts = (dy_e.transpose(-1, -2) @ k.Cc).reshape(b, c, H, P, N)
        off = dy_e * (k.Cc @ st.transpose(-1, -2))  # dL/dE_i * E_i, before summing over P
        dcs = k.heads(off).sum(-1).transpose(2, 3)  # (b, c, H, Q)

        # 3. state passing
        decay = k.cs[..., -1].exp()  # (b, c, H)
        dS, ddecay, dh0 = _pass_states_backward(decay, starts, dstarts, dlast)
        dcs[..., -1] += ddecay * decay

        # 2. chunk states S = sum_j w_j dt_j x_j B_j^T
        dSg = dS.reshape(b, c, G, -1, N)  # (b, c, G, r P, N)
        wt = k.w.transpose(2, 3)[..., None]  # (b, c, Q, H, 1)
        dB = k.groups(k.xdt * wt) @ dSg  # (b, c, G, Q, N)
        dxw = k.heads(k.Bc @ dSg.transpose(-1, -2))  # (b, c, Q, H, P)
        dxdt = dxw * wt
        dw = (dxw * k.xdt).sum(-1).transpose(2, 3).mul_(k.w)  # dL/dw_j * w_j, (b, c, H, Q)
        dcs -= dw
        dcs[..., -1] += dw.sum(-1)

        # 1. diagonal blocks y_i = sum_j L_ij (C_i . B_j) dt_j x_j
        M = k.mixing()  # (b, c, H, Q, Q)
        dyh = dyc.transpose(2, 3)  # (b, c, H, Q, P)
        dxdt += (M.transpose(-1, -2) @ dyh).transpose(2, 3)
        dM = dyh @ k.xdt.permute(0, 1, 3, 4, 2)  # (b, c, H, Q, Q)
        dseg = dM * M  # dL/d(cs_i - cs_j), zero where masked
        dcs += dseg.sum(-1) - dseg.sum(-2)
        dCB = (dM.mul_(k.L)).reshape(b, c, G, H // G, Q, Q).sum(3)  # (b, c, G, Q, Q)
        dC += dCB @ k.Bc
        dB += dCB.transpose(-1, -2) @ k.Cc

        # cs is a cumsum of dt A inside each chunk: its gradient is a reversed cumsum
        d_dA = dcs.flip(-1).cumsum(-1).flip(-1).transpose(2, 3).reshape(b, c * Q, H)[:, :n]
        dxdt = dxdt.reshape(b, c * Q, H, P)[:, :n]
        Af = A.to(f)
        ddt = d_dA * Af + (dxdt * k.xf).sum(-1)
        dA = (d_dA * k.dtf).sum((0, 1))
        dx = dxdt * k.dtf[..., None]
        dD = None
        if D is not None:
            dx += dyf[:, :n] * D.to(f)[:, None]
            dD = (dyf[:, :n] * k.xf).sum((0, 1, 3)).to(D.dtype)
        dB = dB.transpose(2, 3).reshape(b, c * Q, G, N)[:, :n]
        dC = dC.transpose(2, 3).reshape(b, c * Q, G, N)[:, :n]
        return (dx.to(x.dtype), ddt.to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype),
                dC.to(C.dtype), dh0, dD, None, None)  # fmt: skip


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    initial_state: Tensor | None = None,
    causal: bool = True,
    *,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The SSD scan in chunks of `chunk` tokens: y (b, n, H, P) in x's dtype, and the state
    after the last token (b, H, P, N) in >= fp32.

    x (b, n, H, P); dt (b, n, H), the step after softplus and bias (> 0); A (H,), negative;
    B, C (b, n, G, N); initial_state (b, H, P, N) or None (zeros); D (H,) or None: the skip
    y += D_h x, added in >= fp32 before the cast (as mamba-ssm's kernel takes it). No gate: the
    block applies it. `causal=False` is the leaky control (module docstring).
    """
    check_ssd_shapes(x, dt, A, B, C)
    if chunk < 1:
        raise ConfigError(f"ssd: chunk must be >= 1, got {chunk}")
    b, n, H, P = x.shape
    N = B.shape[3]
    f = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        h0 = x.new_zeros(b, H, P, N, dtype=f) if initial_state is None else initial_state.to(f)
        if n == 0:
            return x.new_zeros(b, 0, H, P), h0.clone()
        Q = min(chunk, n)  # a prompt shorter than a chunk is one short chunk, not padding
        return _SSD.apply(x, dt, A, B, C, h0, D, Q, causal)


def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
) -> Tensor:
    """One token of the recurrence, advancing `state` (b, H, P, N) in place.

    x (b, H, P); dt (b, H) after softplus and bias; A (H,); B, C (b, G, N); D (H,) or None,
    the skip. Returns y (b, H, P)
    in the state's dtype (>= fp32 when the state was made by `ssd_chunked` or an empty state).
    """
    H = state.shape[1]
    G = B.shape[1]
    f = state.dtype
    xf, dtf, Af = x.to(f), dt.to(f), A.to(f)
    Bh = B.to(f).repeat_interleave(H // G, dim=1)  # (b, H, N), each head its group's B
    Ch = C.to(f).repeat_interleave(H // G, dim=1)  # (b, H, N)
    decay = torch.exp(dtf * Af)  # (b, H)
    state.mul_(decay[..., None, None]).add_((xf * dtf[..., None])[..., None] * Bh[:, :, None, :])
    y = (state @ Ch[..., None]).squeeze(-1)  # (b, H, P)
    return y if D is None else y + xf * D.to(f)[:, None]
