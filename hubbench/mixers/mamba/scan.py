"""The chunked selective scan: Mamba's `ref` path, vectorised, on any device.

The recurrence h_t = a_t * h_{t-1} + b_t, with a_t = exp(delta_t * A) and b_t = delta_t * u_t *
B_t, runs over (B, L, D_inner, N) elements. Materialising whole-sequence tensors of that size (as
a plain autograd scan does) costs one 128 MB copy per tensor at D_inner 512, N 16, L 4096, and
autograd keeps several. Instead the sequence is cut into chunks of SCAN_CHUNK tokens, and each
chunk into sub-chunks of T tokens whose (B, T, D_inner, N) buffers fit in cache
(SCAN_WORK_ELEMS); a Python loop runs over sub-chunks (never over tokens), carrying the state h
across. Inside a sub-chunk, a work-efficient odd/even parallel scan runs in place. Decays are
multiplied, never divided: every factor is exp(delta * A) <= 1, so no exp(+S) blow-up.

A custom autograd Function (delta bias + softplus, scan, skip D, SiLU(z) gate, as mamba-ssm's
selective_scan_fn) saves only its inputs as passed (bf16 under autocast) and the chunk-start
states; all fp32 work runs chunk by chunk, and the backward rebuilds each chunk's sub-chunk start
states, then each sub-chunk's states, from the chunk's start state, in reverse (reverse scan for
dL/dh). docs/mamba.md gives the bytes kept per token.

`selective_scan_chunked` takes mamba-ssm's argument layout; `selective_scan_bld` the
(batch, length, channel) layout the block works in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.errors import ConfigError

# Tokens per chunk of the ref scan. On the 2-core CPU, 64 beat 32, 128 and 256 for fwd+bwd at
# D_inner 512, N 16 (benchmarks/mamba_vs_mambapy.py): chunk buffers stay in cache while the number
# of Python-level chunk iterations stays small.
SCAN_CHUNK = 64
# The work inside a chunk runs on (B, T, D_inner, N) buffers of at most this many elements (2 MB
# in fp32, cache-sized), so at large batch a chunk is worked in sub-chunks of T < SCAN_CHUNK
# tokens; the state is still kept only once per chunk. At batch 64, D_inner 128, N 16 (the
# quality suite's jamba) sub-chunks of 4 tokens made the block's fwd+bwd 1.75x faster than
# 64-token buffers (33 MB each); at batch 1, D_inner 512 they are whole chunks, as before.
SCAN_WORK_ELEMS = 1 << 19


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


def _bmm_rows(vec: Tensor, mat: Tensor) -> Tensor:
    """Per-token row vector times matrix: vec (B, T, K) @ mat (B, T, K, M) -> (B, T, M)."""
    B, T, K = vec.shape
    out = torch.bmm(vec.reshape(B * T, 1, K), mat.reshape(B * T, K, mat.shape[-1]))
    return out.view(B, T, -1)


@dataclass
class ScanArgs:
    """The scan's inputs as the caller passed them (any float dtype, u/delta/z may be strided).

    u, delta, z: (B, L, D_inner); Bm, Cm: (B, L, N); A (D_inner, N), D, bias (D_inner,) in f.
    Each chunk is converted to f (>= fp32) only when it is used, so nothing full-width is kept
    in f: `chunk_inputs` rebuilds a chunk's fp32 values from these in forward and in backward.
    """

    u: Tensor
    delta: Tensor
    A: Tensor
    Bm: Tensor
    Cm: Tensor
    D: Tensor | None
    z: Tensor | None
    bias: Tensor | None
    softplus: bool
    f: torch.dtype

    def chunk_inputs(self, t0: int, t1: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """u, pre (delta + bias, before softplus), dt, Bm, Cm of tokens t0..t1-1, in f."""
        f = self.f
        u = self.u[:, t0:t1].to(f)
        pre = self.delta[:, t0:t1].to(f)
        if self.bias is not None:
            pre = pre + self.bias
        dt = F.softplus(pre) if self.softplus else pre
        return u, pre, dt, self.Bm[:, t0:t1].to(f), self.Cm[:, t0:t1].to(f)


def _chunk_ab(u: Tensor, dt: Tensor, A: Tensor, Bm: Tensor) -> tuple[Tensor, Tensor]:
    """Decays a = exp(dt A) and inputs b = dt u B of one chunk, each (B, T, D_inner, N)."""
    a = (dt[..., None] * A).exp_()
    b = (u * dt)[..., None] * Bm[:, :, None, :]
    return a, b


def work_tokens(s: ScanArgs, chunk: int) -> int:
    """Tokens per sub-chunk: the largest power of two <= chunk whose buffers fit SCAN_WORK_ELEMS."""
    per_token = s.u.shape[0] * s.A.numel()  # B * D_inner * N
    tokens = 1
    while tokens * 2 <= chunk and tokens * 2 * per_token <= SCAN_WORK_ELEMS:
        tokens *= 2
    return tokens


def _sub_chunks(t0: int, t1: int, work: int) -> list[tuple[int, int]]:
    return [(t, min(t + work, t1)) for t in range(t0, t1, work)]


def _scan_states(s: ScanArgs, t0: int, t1: int, h: Tensor) -> Tensor:
    """States h of tokens t0..t1-1, (B, T, D_inner, N), from the state `h` before t0."""
    u, _, dt, Bm, _ = s.chunk_inputs(t0, t1)
    a, b = _chunk_ab(u, dt, s.A, Bm)
    b[:, 0].addcmul_(a[:, 0], h)
    _scan_(a, b)
    return b


def _scan_forward(
    s: ScanArgs, chunk: int, h: Tensor | None = None, keep_starts: bool = True
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The chunked forward: output (B, L, D_inner) in u's dtype, the state before each chunk
    (B, n_chunks, D_inner, N) in f (None unless `keep_starts`), and the state after the last token.

    `h` (B, D_inner, N) is the state before the first token (zeros when None). Skip D, gate
    SiLU(z) and the dtype cast are applied sub-chunk by sub-chunk, so the only full-length tensor
    is the output.
    """
    batch, L, d_inner = s.u.shape
    n = s.A.shape[1]
    out = torch.empty(s.u.shape, dtype=s.u.dtype, device=s.u.device)
    if h is None:
        h = s.A.new_zeros(batch, d_inner, n)  # (B, D_inner, N), state before the chunk
    n_chunks = -(-L // chunk)
    starts = s.A.new_empty(batch, n_chunks, d_inner, n) if keep_starts else None
    work = work_tokens(s, chunk)
    for c in range(n_chunks):
        if starts is not None:
            starts[:, c] = h
        for t0, t1 in _sub_chunks(c * chunk, min((c + 1) * chunk, L), work):
            u, _, dt, Bm, Cm = s.chunk_inputs(t0, t1)
            a, b = _chunk_ab(u, dt, s.A, Bm)  # (B, T, D_inner, N)
            b[:, 0].addcmul_(a[:, 0], h)  # carry the previous sub-chunk's state in
            _scan_(a, b)  # b is now h for every token of the sub-chunk
            y = _bmm_rows(Cm, b.transpose(-1, -2))  # (B, T, D_inner)
            if s.D is not None:
                y.addcmul_(u, s.D)
            if s.z is not None:
                y.mul_(F.silu(s.z[:, t0:t1].to(s.f)))
            out[:, t0:t1] = y
            h = b[:, -1]
    return out, starts, h.clone()


def _scan_backward(
    s: ScanArgs, starts: Tensor, dout: Tensor, chunk: int, need_dz: bool
) -> tuple[Tensor, ...]:
    """Chunks in reverse order: rebuild the chunk's sub-chunk start states from its start state
    (a forward pass over the chunk, only where it has more than one sub-chunk), then, sub-chunk
    by sub-chunk in reverse, its inputs and states h, reverse-scan g = dL/dh, reduce to input
    gradients and write them into their slice.

    Returns du, ddelta, dA, dB, dC, dD, dz, dbias (None where the input was None).
    """
    batch, L, d_inner = s.u.shape
    grads = _Grads(
        du=torch.empty_like(s.u),
        ddelta=torch.empty_like(s.delta),
        dA=torch.zeros_like(s.A),
        dB=torch.empty_like(s.Bm),
        dC=torch.empty_like(s.Cm),
        dD=None if s.D is None else torch.zeros_like(s.D),
        dz=torch.empty_like(s.z) if s.z is not None and need_dz else None,
        dbias=None if s.bias is None else torch.zeros_like(s.bias),
    )
    work = work_tokens(s, chunk)
    g_next = s.A.new_zeros(batch, d_inner, s.A.shape[1])  # a_{t1} * dL/dh_{t1} from the right
    for c in range(starts.shape[1] - 1, -1, -1):
        pieces = _sub_chunks(c * chunk, min((c + 1) * chunk, L), work)
        h0 = [starts[:, c]]
        for t0, t1 in pieces[:-1]:
            h0.append(_scan_states(s, t0, t1, h0[-1])[:, -1])
        for (t0, t1), h_start in zip(reversed(pieces), reversed(h0), strict=True):
            g_next = _sub_chunk_backward(s, t0, t1, h_start, dout, g_next, grads)
    return (grads.du, grads.ddelta, grads.dA, grads.dB, grads.dC, grads.dD, grads.dz,
            grads.dbias)  # fmt: skip


@dataclass
class _Grads:
    """The scan's input gradients, filled slice by slice (d*) or summed (dA, dD, dbias)."""

    du: Tensor
    ddelta: Tensor
    dA: Tensor
    dB: Tensor
    dC: Tensor
    dD: Tensor | None
    dz: Tensor | None
    dbias: Tensor | None


def _sub_chunk_backward(
    s: ScanArgs, t0: int, t1: int, h_start: Tensor, dout: Tensor, g_next: Tensor, out: _Grads
) -> Tensor:
    """Gradients of tokens t0..t1-1 into `out`, from the state before t0 and the adjoint carried
    from t1 (g_next); the adjoint to carry on to t0-1."""
    f = s.f
    u, pre, dt, Bm, Cm = s.chunk_inputs(t0, t1)
    go = dout[:, t0:t1].to(f)  # dL/d(output)
    if s.z is not None:
        zc = s.z[:, t0:t1].to(f)
        sig = torch.sigmoid(zc)
        dy = go * zc * sig  # dL/dy, y = C.h + D u before the gate
    else:
        dy = go
    a, b = _chunk_ab(u, dt, s.A, Bm)  # (B, T, D_inner, N)
    h = b.clone()
    h[:, 0].addcmul_(a[:, 0], h_start)
    r = a[:, 1:].clone()  # g_t couples to g_{t+1} through a_{t+1}
    _scan_(a, h)  # clobbers a except a[:, 0]
    g = dy[..., None] * Cm[:, :, None, :]  # (B, T, D_inner, N)
    g[:, -1].add_(g_next)
    _scan_reverse_(r, g)
    g_next = a[:, 0] * g[:, 0]
    out.dC[:, t0:t1] = _bmm_rows(dy, h)
    d_udt = _bmm_rows(Bm, g.transpose(-1, -2))  # dL/d(u dt), (B, T, D_inner)
    out.dB[:, t0:t1] = _bmm_rows(u * dt, g)
    if out.dz is not None:  # the gate needs y: one readout of the recomputed states
        y = _bmm_rows(Cm, h.transpose(-1, -2))
        if s.D is not None:
            y.addcmul_(u, s.D)
        out.dz[:, t0:t1] = go * y * sig * (1 + zc * (1 - sig))
    # dL/d(dt A) = g * a_t * h_{t-1} = g * (h_t - b_t): no need to keep a
    q = torch.sub(h, b, out=b).mul_(g)
    d_dt = (q * s.A).sum(-1).addcmul_(d_udt, u)
    out.dA += (q * dt[..., None]).sum((0, 1))
    du_c = d_udt * dt
    if s.D is not None and out.dD is not None:
        du_c.addcmul_(dy, s.D)
        out.dD += (dy * u).sum((0, 1))
    out.du[:, t0:t1] = du_c
    if s.softplus:  # torch's softplus: linear above threshold 20
        d_dt.mul_(torch.sigmoid(pre).masked_fill_(pre > 20, 1.0))
    out.ddelta[:, t0:t1] = d_dt
    if out.dbias is not None:
        out.dbias += d_dt.sum((0, 1))
    return g_next


class _SelectiveScan(torch.autograd.Function):
    """out = (C.h_t + D u_t) * SiLU(z_t), h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, with
    dt = softplus(delta + bias), in (batch, length, *) layout, as mamba-ssm's selective_scan_fn.

    u, delta, z: (B, L, D_inner); A: (D_inner, N); Bm, Cm: (B, L, N); D, bias: (D_inner,).
    Saves its inputs as passed (no fp32 copies) and the state before each chunk.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, bias, softplus, chunk):  # type: ignore[override]
        f = A.dtype
        s = ScanArgs(u, delta, A, Bm, Cm, D, z, bias, softplus, f)
        need_grad = any(ctx.needs_input_grad)
        out, starts, _ = _scan_forward(s, chunk, keep_starts=need_grad)
        ctx.chunk, ctx.softplus = chunk, softplus
        if need_grad:
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, bias, starts)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):  # type: ignore[override]
        u, delta, A, Bm, Cm, D, z, bias, starts = ctx.saved_tensors
        s = ScanArgs(u, delta, A, Bm, Cm, D, z, bias, ctx.softplus, A.dtype)
        with torch.autocast(dout.device.type, enabled=False):
            grads = _scan_backward(s, starts, dout, ctx.chunk, ctx.needs_input_grad[6])
        du, ddelta, dA, dB, dC, dD, dz, dbias = grads
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


def selective_scan_bld(
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

    u, delta, z: (B, L, D_inner); A: (D_inner, N); B, C: (B, L, N) -> (B, L, D_inner) in u's
    dtype. The scan runs in >= fp32, like mamba-ssm, chunk by chunk; the inputs stay in their
    own dtype and layout. `return_last_state` (no autograd: prefill): also the state after the
    last token, (B, D_inner, N) in >= fp32.
    """
    f = torch.promote_types(u.dtype, torch.float32)
    with torch.autocast(u.device.type, enabled=False):
        A = A.to(f)
        D, delta_bias = (None if t is None else t.to(f) for t in (D, delta_bias))
        if return_last_state:
            s = ScanArgs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, f)
            out, _, last = _scan_forward(s, chunk_size, keep_starts=False)
            return out, last
        return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)


def check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
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
    check_scan_shapes(u, delta, A, B, C)
    if chunk_size < 1:
        raise ConfigError(f"selective scan: chunk_size must be >= 1, got {chunk_size}")
    y = selective_scan_bld(
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
