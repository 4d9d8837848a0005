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
mamba-ssm's kernels do) and plain autograd: all per-token tensors are O(n * H * Q), never n x n.
"""

from __future__ import annotations

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


class _StatePassing(torch.autograd.Function):
    """h_{k+1} = decay_k h_k + S_k over chunks k = 0..c-1, from h_0.

    A Python loop over chunks either way; as a Function it records one autograd node instead of
    c of them, and its backward runs the mirror loop (indexing S[:, k] under plain autograd
    made every step's backward allocate and fill a zero tensor of S's full size: c^2 work).
    Returns the state before each chunk (b, c, H, P, N) and after the last (b, H, P, N).
    """

    @staticmethod
    def forward(ctx, decay, S, h0):  # type: ignore[override]
        starts = torch.empty_like(S)
        h = h0
        for k in range(S.shape[1]):
            starts[:, k] = h
            h = torch.addcmul(S[:, k], decay[:, k, :, None, None], h)
        ctx.save_for_backward(decay, starts)
        return starts, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_starts, g_last):  # type: ignore[override]
        decay, starts = ctx.saved_tensors
        c = starts.shape[1]
        g = torch.zeros_like(starts[:, 0]) if g_last is None else g_last.clone()
        dS = torch.empty_like(starts)
        ddecay = torch.empty_like(decay)
        for k in range(c - 1, -1, -1):  # g is dL/dh_{k+1} here
            dS[:, k] = g
            ddecay[:, k] = (g * starts[:, k]).sum((-1, -2))
            g.mul_(decay[:, k, :, None, None])
            if g_starts is not None:
                g.add_(g_starts[:, k])
        return ddecay, dS, g


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
    G, N = B.shape[2], B.shape[3]
    f = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        h0 = x.new_zeros(b, H, P, N, dtype=f) if initial_state is None else initial_state.to(f)
        if n == 0:
            return x.new_zeros(b, 0, H, P), h0.clone()
        Q = min(chunk, n)  # a prompt shorter than a chunk is one short chunk, not padding
        c = -(-n // Q)
        pad = c * Q - n  # padded tokens have dt = 0: no decay, no input, outputs dropped
        xf, dtf, Bf, Cf, Af = (t.to(f) for t in (x, dt, B, C, A))
        xdt = xf * dtf[..., None]  # (b, n, H, P), dt_j x_j
        dA = dtf * Af  # (b, n, H)
        if pad:
            xdt, dA = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(dA, (0, 0, 0, pad))
            Bf, Cf = F.pad(Bf, (0, 0, 0, 0, 0, pad)), F.pad(Cf, (0, 0, 0, 0, 0, pad))
        r = H // G  # heads per group
        cs = dA.view(b, c, Q, H).transpose(2, 3).cumsum(-1)  # (b, c, H, Q)
        Bc = Bf.view(b, c, Q, G, N).transpose(2, 3)  # (b, c, G, Q, N)
        Cc = Cf.view(b, c, Q, G, N).transpose(2, 3)  # (b, c, G, Q, N)
        xg = xdt.view(b, c, Q, G, r * P).transpose(2, 3)  # (b, c, G, Q, r P)

        # 1. diagonal blocks: a decay-weighted, masked C B^T per head, times dt x
        seg = cs[..., :, None] - cs[..., None, :]  # (b, c, H, Q, Q), cs_i - cs_j
        if causal:
            future = torch.ones(Q, Q, dtype=torch.bool, device=x.device).triu_(1)
            seg = seg.masked_fill(future, float("-inf"))
        CB = Cc @ Bc.transpose(-1, -2)  # (b, c, G, Q, Q)
        M = seg.exp().view(b, c, G, r, Q, Q) * CB[:, :, :, None]  # (b, c, G, r, Q, Q)
        xh = xdt.view(b, c, Q, H, P).transpose(2, 3)  # (b, c, H, Q, P)
        y = (M.view(b, c, H, Q, Q) @ xh).transpose(2, 3)  # (b, c, Q, H, P)

        # 2. what each chunk adds to the state, decayed to the chunk's end
        w = (cs[..., -1:] - cs).exp()  # (b, c, H, Q)
        w = w.view(b, c, G, r, Q).transpose(-1, -2)  # (b, c, G, Q, r)
        xw = (xg.view(b, c, G, Q, r, P) * w[..., None]).view(b, c, G, Q, r * P)
        S = (xw.transpose(-1, -2) @ Bc).view(b, c, H, P, N)  # (b, c, H, P, N)

        # 3. state passing between chunks
        starts, last = _StatePassing.apply(cs[..., -1].exp(), S, h0)

        # 4. off-diagonal blocks: the state before the chunk, read by C, decayed to token i
        off = Cc @ starts.view(b, c, G, r * P, N).transpose(-1, -2)  # (b, c, G, Q, r P)
        decay_in = cs.exp().view(b, c, G, r, Q).transpose(-1, -2)  # (b, c, G, Q, r)
        off = off.view(b, c, G, Q, r, P) * decay_in[..., None]
        y = y + off.transpose(2, 3).reshape(b, c, Q, H, P)
        y = y.reshape(b, c * Q, H, P)[:, :n]
        if D is not None:
            y = y + xf * D.to(f)[:, None]
    return y.to(x.dtype), last


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
