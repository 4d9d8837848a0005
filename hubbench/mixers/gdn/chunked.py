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

Everything but the three small products with H_0 is batched over a group of chunks; a loop
over the chunks carries H. One autograd Function (`_GatedDelta`) holds it, with a hand-written
backward that recomputes each group from the inputs and the state saved at each chunk start.
Decays only ever appear as exp(gam_i - gam_j) with j <= i, exp(gam_i)
and exp(gam_C - gam_i), all <= 1: no exp of a positive number, so very negative g underflows
to 0 and never overflows (the masked entries are set to -inf *before* exp, so their gradients
are 0, not inf * 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError

L2_EPS = 1e-6  # inside the root of q and k's L2 norm, as fla's l2norm


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
    *,
    l2_normalise_qk: bool = False,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The gated delta rule over a whole sequence, chunk by chunk.

    q, k: (B, n, h, d_k); v: (B, n, h, d_v); g (log-decay, <= 0), beta: (B, n, h);
    initial_state: (B, h, d_k, d_v) or None (zeros). The recurrence reads q * scale and k; with
    `l2_normalise_qk` it first divides q and k by sqrt(|.|^2 + L2_EPS) (GDN's normalisation,
    fla's use_qk_l2norm_in_kernel), done here chunk group by chunk group, in cache. Returns
    o (B, n, h, d_v) in v's dtype and the state after the last token (B, h, d_k, d_v) in
    >= fp32. Autograd-correct in every input.

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
        if not l2_normalise_qk and scale != 1.0:
            q = q * scale
        opt = _Options(causal, scale if l2_normalise_qk else None)
        o, last = _chunked(q, k, v, g, beta, chunk, initial_state, opt, f)
    return o.to(out_dtype), last


# The chunks are worked in groups whose (.., C, C) buffers hold about this many elements (512 KB
# in fp32, cache-sized): at batch 1, 4 heads, C 64 that is 8 chunks (512 tokens) per group.
# Per-group ops are batched over the group's chunks; only the carry of the state between
# chunks is a loop. Nothing full-length is kept but the inputs and one state per chunk.
GROUP_ELEMS = 1 << 17


@dataclass
class _Chunks:
    """One group of chunks in (B, h, G, C, *) layout, in f, contiguous: the inputs and what the
    chunked form derives from them without the carried state (recomputed in backward)."""

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor  # (B, h, G, C)
    gam: Tensor  # (B, h, G, C) cumulative log-decay inside each chunk
    eg: Tensor  # exp(gam): the decay from the chunk start to token i
    ed: Tensor  # exp(gam_C - gam): the decay from token i to the chunk end
    decay: Tensor  # (B, h, G, C, C) D_ij = exp(gam_i - gam_j), j <= i, else 0
    kk: Tensor  # K K^T
    t: Tensor  # (I + A)^-1, A_ij = beta_i D_ij k_i.k_j for j < i: unit lower triangular
    x: Tensor  # (B, h, G, C, d_v + d_k) the solve's result [U' | W]
    qk: Tensor  # Q K^T
    p: Tensor  # the intra-chunk term Q K^T * D (unmasked above the diagonal when leaky)
    rq: Tensor | None  # 1 / |q| and 1 / |k| (B, h, G, C, 1) when normalised in here, else None
    rk: Tensor | None

    @property
    def u_prime(self) -> Tensor:
        return self.x[..., : self.v.shape[-1]]

    @property
    def w(self) -> Tensor:
        return self.x[..., self.v.shape[-1] :]


@dataclass
class _Kept:
    """What forward keeps for backward beyond the inputs, (B, h, n_chunks, C, *): the pieces a
    group costs matmuls and a solve to redo (K K^T, Q K^T, T, [U' | W]) and the new values U,
    5 C + d_k + 2 d_v numbers per token and head."""

    kk: Tensor
    qk: Tensor
    t: Tensor
    x: Tensor
    u: Tensor

    @classmethod
    def empty(cls, B: int, h: int, nc: int, C: int, d_k: int, d_v: int, like: Tensor) -> _Kept:
        def new(*shape: int) -> Tensor:
            return like.new_empty(B, h, nc, C, *shape)

        return cls(new(C), new(C), new(C), new(d_v + d_k), new(d_v))

    def store(self, c0: int, c1: int, ch: _Chunks, u: Tensor) -> None:
        for dst, src in zip(self.tensors(), (ch.kk, ch.qk, ch.t, ch.x, u), strict=True):
            dst[:, :, c0:c1] = src

    def pieces(self, c0: int, c1: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.kk[:, :, c0:c1], self.qk[:, :, c0:c1], self.t[:, :, c0:c1], self.x[:, :, c0:c1]

    def tensors(self) -> tuple[Tensor, ...]:
        return self.kk, self.qk, self.t, self.x, self.u


def _group(t: Tensor, c0: int, c1: int) -> Tensor:
    """(B, nc, C, h, *) -> chunks c0..c1-1 as (B, h, G, C, *), contiguous (a cache-sized copy)."""
    t = t[:, c0:c1]
    return t.permute(0, 3, 1, 2, *range(4, t.dim())).contiguous()


def _ungroup(t: Tensor) -> Tensor:
    """(B, h, G, C, *) -> (B, G, C, h, *) view, to write into a (B, nc, C, h, *) tensor."""
    return t.permute(0, 2, 3, 1, *range(4, t.dim()))


@dataclass(frozen=True)
class _Options:
    causal: bool  # False: the leaky control
    scale: float | None  # None: q, k used as given; else L2-normalised in here, q times scale


def _derive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    opt: _Options,
    kept: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> _Chunks:
    """The group's pieces from its inputs; `kept` = (K K^T, Q K^T, T, [U' | W]) as forward
    kept them: backward then redoes only the cheap elementwise parts."""
    C = q.shape[-2]
    rq = rk = None
    if opt.scale is not None:  # normalised here, in cache, rather than in full-length passes
        rq = torch.rsqrt(q.square().sum(-1, keepdim=True).add_(L2_EPS))  # (B, h, G, C, 1)
        rk = torch.rsqrt(k.square().sum(-1, keepdim=True).add_(L2_EPS))
        q, k = q * (rq * opt.scale), k * rk
    above, not_below = _masks(C, q.device)
    gam = g.cumsum(-1)
    diff = gam.unsqueeze(-1) - gam.unsqueeze(-2)  # gam_i - gam_j
    decay = diff.masked_fill_(above, float("-inf")).exp_()  # -inf before exp: no inf
    eg = gam.exp()
    if kept is None:
        kk = k @ k.transpose(-1, -2)
        A = (kk * decay).mul_(beta.unsqueeze(-1)).masked_fill_(not_below, 0.0)
        rhs = torch.cat((v, k * eg.unsqueeze(-1)), -1).mul_(beta.unsqueeze(-1))
        # T = (I + A)^-1 by one unit-lower solve against the identity (C right-hand sides,
        # not d_v + d_k), then products: backward needs T^T, a product too, not a solve
        eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(A.shape).contiguous()
        t = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
        x = t @ rhs
        qk = q @ k.transpose(-1, -2)
    else:
        kk, qk, t, x = kept
    p = qk * decay
    if not opt.causal:  # the leaky control: above the diagonal exp(min(gam_i - gam_j, 0)) = 1
        p = p + qk.masked_fill(~above, 0.0)
    ed = (gam[..., -1:] - gam).exp()
    return _Chunks(q, k, v, beta, gam, eg, ed, decay, kk, t, x, qk, p, rq, rk)


def _groups(n_chunks: int, batch_heads: int, C: int) -> list[tuple[int, int]]:
    per = max(1, GROUP_ELEMS // (batch_heads * C * C))
    return [(c0, min(c0 + per, n_chunks)) for c0 in range(0, n_chunks, per)]


def _forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, H: Tensor, opt: _Options
) -> tuple[Tensor, Tensor, Tensor, _Kept]:
    """Inputs (B, nc, C, h, *) in f; H (B, h, d_k, d_v) before the first chunk. Returns o
    (B, nc, C, h, d_v), the state before every chunk (B, h, nc, d_k, d_v), the state after
    the last, and what backward reuses."""
    B, nc, C, h, _ = q.shape
    o = v.new_empty(v.shape)
    starts = H.new_empty(B, h, nc, *H.shape[-2:])
    kept = _Kept.empty(B, h, nc, C, q.shape[-1], v.shape[-1], q)
    for c0, c1 in _groups(nc, B * h, C):
        ch = _derive(*(_group(t, c0, c1) for t in (q, k, v, g, beta)), opt)
        k_end = (ch.k * ch.ed.unsqueeze(-1)).transpose(-1, -2)  # (B, h, G, d_k, C)
        chunk_decay = ch.eg[..., -1, None, None]  # (B, h, G, 1, 1)
        u = ch.u_prime.clone()
        for i in range(c1 - c0):
            starts[:, :, c0 + i] = H
            u[:, :, i] -= ch.w[:, :, i] @ H  # the chunk's new values U = U' - W H_0
            H = chunk_decay[:, :, i] * H + k_end[:, :, i] @ u[:, :, i]
        h0 = starts[:, :, c0:c1]
        out = (ch.q * ch.eg.unsqueeze(-1)) @ h0 + ch.p @ u  # (B, h, G, C, d_v)
        o[:, c0:c1] = _ungroup(out)
        kept.store(c0, c1, ch, u)
    return o, starts, H, kept


def _backward(
    inputs: tuple[Tensor, ...],
    starts: Tensor,
    kept: _Kept,
    do: Tensor,
    dH: Tensor,
    opt: _Options,
) -> tuple[Tensor, ...]:
    """Gradients of the inputs (B, nc, C, h, *) and of the initial state, groups in reverse,
    from the output gradient `do` (B, nc, C, h, d_v) and that of the final state `dH`."""
    q, k, v, g, beta = inputs
    B, nc, C, h, _ = q.shape
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dg, dbeta = g.new_empty(g.shape), beta.new_empty(beta.shape)
    for c0, c1 in reversed(_groups(nc, B * h, C)):
        ch = _derive(*(_group(t, c0, c1) for t in inputs), opt, kept.pieces(c0, c1))
        h0 = starts[:, :, c0:c1]  # (B, h, G, d_k, d_v)
        u = kept.u[:, :, c0:c1]
        do_g = _group(do, c0, c1)  # (B, h, G, C, d_v)
        q_start = ch.q * ch.eg.unsqueeze(-1)  # reads H_0
        k_end = ch.k * ch.ed.unsqueeze(-1)  # writes H_C
        du = ch.p.transpose(-1, -2) @ do_g  # + k_end dH_C, per chunk below
        dh_out = q_start.transpose(-1, -2) @ do_g  # dH_0 from the output's H_0 read
        dh_end = torch.empty_like(h0)  # dL/dH_C of every chunk
        chunk_decay = ch.eg[..., -1, None, None]
        w_t = ch.w.transpose(-1, -2)
        for i in reversed(range(c1 - c0)):
            dh_end[:, :, i] = dH
            du[:, :, i] += k_end[:, :, i] @ dH
            dH = chunk_decay[:, :, i] * dH + dh_out[:, :, i] - w_t[:, :, i] @ du[:, :, i]
        dk_end = u @ dh_end.transpose(-1, -2)  # (B, h, G, C, d_k)
        dq_start = do_g @ h0.transpose(-1, -2)
        dp = do_g @ u.transpose(-1, -2)  # (B, h, G, C, C)
        dx = torch.cat((du, -(du @ h0.transpose(-1, -2))), -1)  # d[U' | W]
        dr = ch.t.transpose(-1, -2) @ dx  # d[beta V | beta exp(gam) K]
        da = (dr @ ch.x.transpose(-1, -2)).neg_().masked_fill_(_masks(C, q.device)[1], 0.0)
        dv_b, dk_b = dr.split((v.shape[-1], k.shape[-1]), -1)
        da_d = da * ch.decay
        dkk = da_d * ch.beta.unsqueeze(-1)
        dbeta_g = (da_d * ch.kk).sum(-1)
        ddecay = da * ch.beta.unsqueeze(-1) * ch.kk + dp * ch.qk
        dqk = dp * ch.decay if opt.causal else dp * (ch.decay + _masks(C, q.device)[0])
        dq_g = dqk @ ch.k + ch.eg.unsqueeze(-1) * dq_start
        kb = ch.beta * ch.eg
        dk_g = (dqk.transpose(-1, -2) @ ch.q + (dkk + dkk.transpose(-1, -2)) @ ch.k
                + kb.unsqueeze(-1) * dk_b + ch.ed.unsqueeze(-1) * dk_end)  # fmt: skip
        dkb_k = (dk_b * ch.k).sum(-1)
        dbeta_g += (dv_b * ch.v).sum(-1) + ch.eg * dkb_k
        deg = ch.beta * dkb_k + (dq_start * ch.q).sum(-1)
        ded = (dk_end * ch.k).sum(-1) * ch.ed
        s = ddecay * ch.decay
        dgam = deg * ch.eg - ded + s.sum(-1) - s.sum(-2)
        dgam[..., -1] += ded.sum(-1) + (h0 * dh_end).sum((-1, -2)) * ch.eg[..., -1]
        dg_g = dgam.flip(-1).cumsum(-1).flip(-1)  # gam = cumsum(g)
        if opt.scale is not None:  # through y = x / |x|: dx = (dy - y (y . dy)) / |x|
            dq_g = _unnormalise(dq_g, ch.q, ch.rq, opt.scale)
            dk_g = _unnormalise(dk_g, ch.k, ch.rk, 1.0)
        dq[:, c0:c1] = _ungroup(dq_g)
        dk[:, c0:c1] = _ungroup(dk_g)
        dv[:, c0:c1] = _ungroup(dv_b * ch.beta.unsqueeze(-1))
        dg[:, c0:c1] = _ungroup(dg_g)
        dbeta[:, c0:c1] = _ungroup(dbeta_g)
    return dq, dk, dv, dg, dbeta, dH


def _unnormalise(dy: Tensor, y: Tensor, r: Tensor, scale: float) -> Tensor:
    """The gradient of x from that of y = scale x r, r = (|x|^2 + eps)^-1/2."""
    dot = (y * dy).sum(-1, keepdim=True) / scale
    return (dy * scale).sub_(y * dot).mul_(r)


@functools.lru_cache(maxsize=16)
def _masks(C: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(C, C) bool masks, made once per size: `above` the diagonal (j > i), and `not_below`
    (j >= i), what a strictly lower matrix leaves out."""
    ones = torch.ones(C, C, dtype=torch.bool, device=device)
    return ones.triu(1), ones.triu(0)


class _GatedDelta(torch.autograd.Function):
    """The chunked gated delta rule with a hand-written backward that recomputes each group's
    intra-chunk pieces from the inputs and the state saved at each chunk start: autograd
    through the chunked form would keep a dozen (C x C)-per-token tensors and run its
    backward over full-length buffers, out of cache."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, h0, opt):  # type: ignore[override]
        o, starts, last, kept = _forward(q, k, v, g, beta, h0, opt)
        ctx.opt = opt
        ctx.save_for_backward(q, k, v, g, beta, starts, *kept.tensors())
        return o, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dlast):  # type: ignore[override]
        q, k, v, g, beta, starts, *kept = ctx.saved_tensors
        if dlast is None:
            dlast = starts.new_zeros(starts[:, :, 0].shape)
        if do is None:
            do = v.new_zeros(v.shape)
        grads = _backward((q, k, v, g, beta), starts, _Kept(*kept), do.contiguous(), dlast,
                          ctx.opt)  # fmt: skip
        return (*grads, None)


def _to_chunks(t: Tensor, pad: int, chunk: int, f: torch.dtype) -> Tensor:
    """(B, n, h, *) -> (B, n_chunks, C, h, *) in f, zero-padded at the end to whole chunks.
    A view when t is already f and needs no padding."""
    t = t.to(f)
    if pad:
        widths = (0, 0) * (t.dim() - 2) + (0, pad)
        t = F.pad(t, widths)
    return t.reshape(t.shape[0], -1, chunk, *t.shape[2:])


def _chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    chunk: int,
    initial_state: Tensor | None,
    opt: _Options,
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
    chunks = [_to_chunks(t, pad, C, f) for t in (q, k, v, g, beta)]
    o, last = _GatedDelta.apply(*chunks, H, opt)  # (B, nc, C, h, d_v)
    return o.reshape(B, -1, h, d_v)[:, :n], last


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
