"""The gated delta rule, chunked (training, prefill) and one token at a time (decode).

Per head, with the state H (d_k, d_v) (the transpose of the paper's S, fla's layout):

    H_t = alpha_t (I - beta_t k_t k_t^T) H_{t-1} + beta_t k_t v_t^T,   o_t = H_t^T q_t

with alpha_t = exp(g_t), g_t <= 0. Written as a delta update, H_t = alpha_t H_{t-1} + k_t u_t^T
with the "new value" u_t = beta_t (v_t - alpha_t H_{t-1}^T k_t).

Chunked form (docs/mixers/gdn.md has the derivation). In a chunk of C tokens starting from the
state H_0, let gam_i = g_1 + ... + g_i (the cumulative log-decay inside the chunk) and
D_ij = exp(gam_i - gam_j) for j <= i, 0 above the diagonal. Then

    (I + A) U = beta V - (beta exp(gam) K) H_0,   A_ij = beta_i D_ij k_i.k_j  (j < i)

so with the UT / WY representation U = U' - W H_0, where U' = (I + A)^-1 beta V and
W = (I + A)^-1 beta exp(gam) K come from one triangular solve per chunk, independent of H_0;

    O = (exp(gam) Q) H_0 + (Q K^T * D) U,   H_C = exp(gam_C) H_0 + (exp(gam_C - gam) K)^T U.

Everything but the three small products with H_0 is computed for all chunks at once; a loop
over chunks carries H. Decays only ever appear as exp(gam_i - gam_j) with j <= i, exp(gam_i)
and exp(gam_C - gam_i), all <= 1: no exp of a positive number, so very negative g underflows
to 0 and never overflows (the masked entries are set to -inf *before* exp, so their gradients
are 0, not inf * 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape:
        raise ConfigError(
            f"gated delta rule: q and k must be (B, n, heads, d_k) alike; got {tuple(q.shape)} "
            f"and {tuple(k.shape)}"
        )
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ConfigError(f"gated delta rule: v must be (B, n, heads, d_v); got {tuple(v.shape)}")
    for name, t in (("g", g), ("beta", beta)):
        if t.shape != q.shape[:3]:
            raise ConfigError(
                f"gated delta rule: {name} must be (B, n, heads) = {tuple(q.shape[:3])}; "
                f"got {tuple(t.shape)}"
            )


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The recurrence runs in at least fp32, as fla's kernels do (bf16 inputs, fp32 state)."""
    return torch.promote_types(dtype, torch.float32)


def gated_delta_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    chunk: int = 64,
    initial_state: Tensor | None = None,
    causal: bool = True,
) -> tuple[Tensor, Tensor]:
    """The gated delta rule over a whole sequence, chunk by chunk.

    q, k: (B, n, h, d_k); v: (B, n, h, d_v); g (log-decay, <= 0), beta: (B, n, h);
    initial_state: (B, h, d_k, d_v) or None (zeros). q is used as given: the caller normalises
    and scales it (GDN: L2 norm, then 1/sqrt(d_k)). Returns o (B, n, h, d_v) in v's dtype and
    the state after the last token (B, h, d_k, d_v) in >= fp32. Autograd-correct in every input.

    `causal=False` is the leaky control: the intra-chunk term Q K^T * D is taken without its
    causal mask (the decay clamped to <= 1, so it stays finite and looks plausible), so a token
    reads the values of the later tokens of its own chunk.
    """
    _check_shapes(q, k, v, g, beta)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"gated delta rule: chunk must be a positive integer, got {chunk!r}")
    out_dtype = v.dtype
    f = state_dtype(v.dtype)
    with torch.autocast(q.device.type, enabled=False):
        o, last = _chunked(q, k, v, g, beta, chunk, initial_state, causal, f)
    return o.to(out_dtype), last


def _to_chunks(t: Tensor, pad: int, chunk: int, f: torch.dtype) -> Tensor:
    """(B, n, h, *) -> (B, h, n_chunks, C, *) in f, zero-padded at the end to whole chunks."""
    t = t.to(f).transpose(1, 2)  # (B, h, n, *)
    if pad:
        widths = (0, 0) * (t.dim() - 3) + (0, pad)
        t = F.pad(t, widths)
    return t.reshape(*t.shape[:2], -1, chunk, *t.shape[3:])


def _chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    chunk: int,
    initial_state: Tensor | None,
    causal: bool,
    f: torch.dtype,
) -> tuple[Tensor, Tensor]:
    B, n, h, d_k = q.shape
    d_v = v.shape[-1]
    H = (q.new_zeros(B, h, d_k, d_v, dtype=f) if initial_state is None
         else initial_state.to(f))  # fmt: skip
    if n == 0:
        return v.new_zeros(B, 0, h, d_v, dtype=f), H
    C = min(chunk, n)  # a sequence shorter than a chunk is one short chunk
    pad = -n % C
    # zero padding is inert: k = 0, beta = 0 and g = 0 leave the state as it was
    q, k, v = (_to_chunks(t, pad, C, f) for t in (q, k, v))  # (B, h, nc, C, d)
    g, beta = (_to_chunks(t, pad, C, f) for t in (g, beta))  # (B, h, nc, C)

    gam = g.cumsum(-1)  # (B, h, nc, C) cumulative log-decay inside each chunk, <= 0
    diff = gam.unsqueeze(-1) - gam.unsqueeze(-2)  # (B, h, nc, C, C): gam_i - gam_j
    ones = torch.ones(C, C, dtype=torch.bool, device=q.device)
    lower = torch.tril(ones)  # j <= i
    decay = diff.masked_fill(~lower, float("-inf")).exp()  # D, exactly 0 above the diagonal

    # UT / WY: (I + A) [U' | W] = [beta V | beta exp(gam) K], one unit-lower solve per chunk
    A = (k @ k.transpose(-1, -2)) * decay * beta.unsqueeze(-1)  # (B, h, nc, C, C)
    A = A.masked_fill(~torch.tril(ones, -1), 0.0)  # strictly lower: j < i
    rhs = torch.cat((v, k * gam.exp().unsqueeze(-1)), -1) * beta.unsqueeze(-1)
    sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    u_prime, w = sol.split((d_v, d_k), -1)  # (B, h, nc, C, d_v), (B, h, nc, C, d_k)

    qk = q @ k.transpose(-1, -2)  # (B, h, nc, C, C)
    intra = qk * (decay if causal else diff.clamp(max=0.0).exp())
    q_dec = q * gam.exp().unsqueeze(-1)  # reads H_0, decayed to token i
    k_dec = k * (gam[..., -1:] - gam).exp().unsqueeze(-1)  # writes into H_C
    chunk_decay = gam[..., -1].exp()  # (B, h, nc)

    # unbind once: indexing chunk c inside the loop would make backward write each chunk's
    # gradient into a zero tensor of the full length, O(n) per chunk, O(n^2) in all
    k_dec_t = k_dec.transpose(-1, -2).unbind(2)  # (B, h, d_k, C) per chunk
    per_chunk = zip(u_prime.unbind(2), w.unbind(2), q_dec.unbind(2), k_dec_t,
                    chunk_decay[..., None, None].unbind(2), strict=True)  # fmt: skip
    us, inter = [], []
    for u_p, w_c, q_c, k_c, a_c in per_chunk:
        u_c = u_p - w_c @ H  # (B, h, C, d_v), the chunk's new values
        inter.append(q_c @ H)  # (B, h, C, d_v)
        H = a_c * H + k_c @ u_c
        us.append(u_c)
    U = torch.stack(us, 2)  # (B, h, nc, C, d_v)
    o = torch.stack(inter, 2) + intra @ U  # (B, h, nc, C, d_v)
    o = o.reshape(B, h, -1, d_v)[:, :, :n].transpose(1, 2)  # (B, n, h, d_v)
    return o, H


def gated_delta_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor
) -> Tensor:
    """One token of the gated delta rule; advances `state` in place.

    q, k: (B, h, d_k); v: (B, h, d_v); g, beta: (B, h); state: (B, h, d_k, d_v) in >= fp32.
    Returns o (B, h, d_v) in v's dtype. O(d_k d_v) per head, constant in the context length.
    """
    f = state.dtype
    q, k, v, g, beta = (t.to(f) for t in (q, k, v, g, beta))
    state.mul_(g.exp()[..., None, None])  # alpha_t H_{t-1}
    pred = (k.unsqueeze(-2) @ state).squeeze(-2)  # (B, h, d_v): what the state recalls for k
    u = beta.unsqueeze(-1) * (v - pred)  # the delta: new value
    state.add_(k.unsqueeze(-1) * u.unsqueeze(-2))  # rank-one write
    return (q.unsqueeze(-2) @ state).squeeze(-2).to(v.dtype)
