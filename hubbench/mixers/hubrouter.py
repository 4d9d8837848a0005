"""HubRouter: encode -> decode -> score/select -> council, non-causal and chunked-causal.

The algorithm is pinned down in shared/design/hubrouter.md. Everything is vectorised over tokens
and chunks; the only Python loops are the doubling steps of two log-depth scans over chunks:
- encode: per-chunk softmax statistics (max, sum of exps, weighted value sums per hub and head)
  merged by an exclusive prefix (`prefix_combine_blocked`: masked matmuls inside blocks of 16
  chunks, a Hillis-Steele scan over block totals); chunk c reads sink + chunks 0..c-1;
- select: per-chunk top-k candidates merged by a Hillis-Steele "top-k of the union" scan
  (`prefix_topk`, O(n/C * k * log(n/C))), so chunk c sees the top-k of chunks 0..c-1.
`LeakyGlobalTopK` at the end is a deliberately broken variant (global top-k, masked council) that
exists only to prove the causality checks can fail.

Choices where the spec is silent (the loop reference in tests/mixers/test_hubrouter.py spells
each one out, and the module must match it):
- Heads. Encode, decode and council are all multi-head with the same `n_heads`. The routing
  fingerprint is the decode attention over hubs averaged over heads, (B, n, M).
- The learned initial hub state is a sink. It has a learned logit per hub and head and takes part
  in every hub softmax as one extra entry, so chunk 0 reads exactly the initial state and later
  chunks read a mix of it and the prefix. The non-causal encode uses the same sink, so both modes
  share one parameter set and every parameter gets gradient in either mode.
- Decode keys and values are the hub states themselves (the spec lists no decode key/value
  projection); the token query is `W_dq x`.
- Score head: `s = w . x + u . fingerprint + b` (a linear map of the token and its fingerprint).
- Members' council values are scaled by `sigmoid(s)` of the member's own score; a right neighbour
  is scaled by its own score too (after de-duplication a position occurs once, whatever brought
  it in). The causal local window (own chunk, positions <= t) is not scaled.
- Non-causal council: every token attends only to the k' members (no local window); `chunk` is
  ignored. Causal council: members visible to the chunk plus the causal local window.
- Gate: `sigmoid(W_g x)` is d-wide (one gate per output channel).
- Ranking members: by `rank_key(s)`, the score rounded to RANK_BITS significant bits (30 for
  fp64 scores, 16 for fp32), then by position, lower first (`top_ordered`: a stable sort over
  candidates laid out in position order). A token repeated in a chunk scores the same as its
  twin only up to rounding, and the parallel GEMM, prefill and the one-token step round
  differently; ranking raw scores (or with torch.topk's arbitrary tie-breaking) made the
  recurrent path pick other members than the forward. Rounded, near-ties become ties that both
  paths break the same way; the council still scales by sigmoid of the raw score. The set for
  chunk c is computed from chunks < c only, so a tie never lets a later token decide it.
- Half precision: the softmax statistics of the encode and the prefix combine run in fp32 (fp64
  for fp64 input) with autocast off; projections and the council follow autocast / the input.
- `neighbours` r adds positions p+1 .. p+r of every member p; neighbours past n (non-causal) or at
  or after the start of the reading chunk (causal) are dropped; duplicates are masked, so the
  fixed width is k' = min(k, available) * (1 + r) slots with a validity mask.

Speed: the encode key projection is folded into the hub queries (logits are `x @ (W_k^T q_hub)`),
and the encode value projection is applied to per-chunk weighted sums of x, not to every token;
the decode query is folded into the hub states in the same way. Both are exact rewrites that keep
the spec's parameters (W_hq, W_ek, W_ev, W_dq) and cut the per-token projection work from 8 d^2
to about 5 d^2 multiply-adds. All remaining per-token linear maps are one fused GEMM.

Complexity (causal): O(n (M + k' + C) d) time, activations O(n (d + k' + C)) plus
O((n / C) M d) for hub states: linear in n for fixed M, k, C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from hubbench.errors import ConfigError
from hubbench.mixers.state import check_step_input, compute_dtype


def validate_hub_config(
    d_model: int,
    n_heads: int,
    hubs: int,
    topk: int,
    neighbours: int,
    chunk: int,
    ortho_weight: float,
    rope: bool,
) -> None:
    """Raise ConfigError naming the first invalid field and its valid range."""
    checks = [
        ("d_model", d_model >= 1, f"d_model must be >= 1 (got {d_model})"),
        ("n_heads", n_heads >= 1, f"n_heads must be >= 1 (got {n_heads})"),
        ("hubs", hubs >= 1, f"hubs must be >= 1 (got {hubs})"),
        ("topk", topk >= 1, f"topk must be >= 1 (got {topk})"),
        ("neighbours", neighbours >= 0, f"neighbours must be >= 0 (got {neighbours})"),
        ("chunk", chunk >= 1, f"chunk must be >= 1 (got {chunk})"),
        ("ortho", ortho_weight >= 0, f"ortho (weight) must be >= 0 (got {ortho_weight})"),
    ]
    for _, ok, msg in checks:
        if not ok:
            raise ConfigError(f"hubrouter: {msg}")
    if d_model % n_heads:
        raise ConfigError(f"hubrouter: d_model={d_model} must be divisible by n_heads={n_heads}")
    if rope and (d_model // n_heads) % 2:
        raise ConfigError(
            f"hubrouter: rope needs an even head width d_model/n_heads, got {d_model // n_heads}"
        )


def ortho_loss(hubs: Tensor) -> Tensor:
    """`|| E_hat E_hat^T - I ||_F^2` over row-normalised hub embeddings E (M, d)."""
    e = F.normalize(hubs if hubs.dtype == torch.float64 else hubs.float(), dim=-1)
    gram = e @ e.t()  # (M, M)
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return (gram - eye).pow(2).sum()


# --- encode: per-chunk softmax statistics and their prefix combine -----------------------------


def _combine(
    m1: Tensor, l1: Tensor, o1: Tensor, m2: Tensor, l2: Tensor, o2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge two partial softmaxes (max, sum of exps, weighted value sum); associative."""
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)  # (B, c, hM)
    return m, a1 * l1 + a2 * l2, a1.unsqueeze(-1) * o1 + a2.unsqueeze(-1) * o2


def prefix_combine(m: Tensor, l: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inclusive scan of `_combine` along dim 1 (Hillis-Steele, log2(length) steps).

    m, l: (B, c, hM); o: (B, c, hM, d_h). Position c combines entries 0..c through a tree that
    depends on c only, so a prefix of the input gives bit-identical results.
    """
    length, off = m.shape[1], 1
    while off < length:
        mm, ll, oo = _combine(
            m[:, :-off], l[:, :-off], o[:, :-off], m[:, off:], l[:, off:], o[:, off:]
        )
        m = torch.cat((m[:, :off], mm), 1)
        l = torch.cat((l[:, :off], ll), 1)
        o = torch.cat((o[:, :off], oo), 1)
        off *= 2
    return m, l, o


def prefix_combine_blocked(
    m: Tensor, l: Tensor, o: Tensor, block: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """Same result as `prefix_combine`, in fewer, larger ops (the fast twin used in forward).

    Entries are cut into blocks of `block`. Inside a block, entry i combines entries j <= i in
    one masked matmul, each weighted exp(m_j - R_i) with R_i the running max up to i (so every
    weight is <= 1). Block totals are scanned with `prefix_combine` (log2(#blocks) steps) and
    merged into the blocks after them. Work is O(length * block), linear in the length.
    """
    B, length, K = m.shape
    if length <= block:
        return _blocked_inner(m.unsqueeze(1), l.unsqueeze(1), o.unsqueeze(1))
    nb = -(-length // block)
    pad = nb * block - length
    if pad:  # entries after the last real one; they never reach a real prefix
        m = torch.cat((m, m[:, -1:].expand(B, pad, K)), 1)
        l = torch.cat((l, l.new_zeros(B, pad, K)), 1)
        o = torch.cat((o, o.new_zeros(B, pad, K, o.shape[-1])), 1)
    mi, li, oi = _blocked_inner(
        m.view(B, nb, block, K), l.view(B, nb, block, K), o.view(B, nb, block, K, -1)
    )  # each (B, nb * block, ...), inclusive within its block
    mi, li, oi = (t.view(B, nb, block, *t.shape[2:]) for t in (mi, li, oi))
    # inclusive prefix of block totals; block b > 0 adds the prefix through block b-1
    tm, tl, to = prefix_combine(mi[:, :-1, -1], li[:, :-1, -1], oi[:, :-1, -1])
    first = (mi[:, :1], li[:, :1], oi[:, :1])
    rest = _combine(
        tm.unsqueeze(2),
        tl.unsqueeze(2),
        to.unsqueeze(2),
        mi[:, 1:],
        li[:, 1:],
        oi[:, 1:],
    )
    out = [torch.cat((a, b), 1).flatten(1, 2)[:, :length] for a, b in zip(first, rest, strict=True)]
    return out[0], out[1], out[2]


def _blocked_inner(m: Tensor, l: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inclusive prefix inside each block: m, l (B, nb, G, K); o (B, nb, G, K, d_h)."""
    G = m.shape[2]
    r = m.cummax(dim=2).values  # (B, nb, G, K) reference of reader i
    tri = torch.ones(G, G, dtype=torch.bool, device=m.device).tril().view(1, 1, G, G, 1)
    diff = m.unsqueeze(2) - r.unsqueeze(3)  # (B, nb, G_i, G_j, K): m_j - R_i
    w = torch.exp(diff.masked_fill(~tri, float("-inf")))  # 0 for j > i, exactly
    l_in = torch.einsum("bnijk,bnjk->bnik", w, l)
    o_in = torch.einsum("bnijk,bnjke->bnike", w, o)
    return r.flatten(1, 2), l_in.flatten(1, 2), o_in.flatten(1, 2)


# --- select: per-chunk candidates and their prefix top-k merge --------------------------------


RANK_BITS = {torch.float64: 30, torch.float32: 16}  # significant bits the ranking keeps


def rank_key(s: Tensor) -> Tensor:
    """Scores rounded to RANK_BITS significant bits, for ranking only (-inf stays -inf)."""
    bits = RANK_BITS.get(s.dtype, 16)
    mant, exp = torch.frexp(s)
    key = torch.ldexp(torch.round(mant * 2.0**bits) / 2.0**bits, exp)
    return torch.where(torch.isfinite(s), key, s)


def top_ordered(vals: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest along the last dim and their indices, ties to the lower index.

    `torch.topk` breaks ties arbitrarily (and differently for differently shaped inputs), which
    would let two paths over the same scores pick different members; a stable sort does not.
    """
    v, i = torch.sort(vals, dim=-1, descending=True, stable=True)
    return v[..., :k], i[..., :k]


def prefix_topk(vals: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Inclusive scan of "top-k of the union" along dim 1 (Hillis-Steele).

    vals, pos: (B, c, k) candidate scores (-inf = empty slot) and positions. Each step merges two
    k-sets with a top-k over 2k, so the cost is O(c k log c). The earlier set goes first, so
    ties resolve to the lower position (`top_ordered`).
    """
    length, off = vals.shape[1], 1
    while off < length:
        v2 = torch.cat((vals[:, :-off], vals[:, off:]), -1)  # (B, c - off, 2k)
        p2 = torch.cat((pos[:, :-off], pos[:, off:]), -1)
        top_v, top_i = top_ordered(v2, k)
        vals = torch.cat((vals[:, :off], top_v), 1)
        pos = torch.cat((pos[:, :off], p2.gather(-1, top_i)), 1)
        off *= 2
    return vals, pos


def expand_members(pos: Tensor, valid: Tensor, r: int, limit: Tensor) -> tuple[Tensor, Tensor]:
    """Add r right neighbours of each valid member, keep those `< limit`, mask duplicates.

    pos, valid: (B, c, k); limit: broadcastable to (B, c, 1). Returns sorted positions and the
    validity mask, both (B, c, k (1 + r)); invalid slots hold position 0.
    """
    if r == 0:
        return torch.where(valid, pos, 0), valid
    offs = torch.arange(r + 1, device=pos.device)
    cand = pos.unsqueeze(-1) + offs  # (B, c, k, r + 1)
    ok = valid.unsqueeze(-1) & (cand < limit.unsqueeze(-1))
    big = torch.iinfo(pos.dtype).max
    cand = torch.where(ok, cand, big).flatten(-2)  # (B, c, k (1 + r))
    cand, _ = cand.sort(dim=-1)
    dup = torch.zeros_like(cand, dtype=torch.bool)
    dup[..., 1:] = cand[..., 1:] == cand[..., :-1]
    keep = (cand != big) & ~dup
    return torch.where(keep, cand, 0), keep


class _GatherCouncil(torch.autograd.Function):
    """Council keys and values for every chunk, members' values scaled by sigmoid(score).

    k, v: (T, d) token keys and values (strided views are fine); flat: (G, L) row indices, the
    first km of each row are members; sig: (G, km). Returns keys and values (G, L, d). Written
    by hand because autograd's version (gather, then scale a slice in place) clones and
    zero-fills the whole (G, L, 2d) gradient; here the backward is index_adds into contiguous
    (T, d) gradients and one reduction for the scores.
    """

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, flat: Tensor, sig: Tensor) -> tuple[Tensor, Tensor]:
        (G, L), km, d = flat.shape, sig.shape[1], k.shape[1]
        idx = flat.reshape(-1)
        keys = k.index_select(0, idx).view(G, L, d)
        values = v.index_select(0, idx).view(G, L, d)
        values[:, :km].mul_(sig.unsqueeze(-1))
        ctx.save_for_backward(v, flat, sig)
        ctx.k_rows = k.shape[0]
        return keys, values

    @staticmethod
    def backward(ctx, d_keys: Tensor, d_values: Tensor) -> tuple[Tensor, Tensor, None, Tensor]:
        v, flat, sig = ctx.saved_tensors
        (G, L), km, d = flat.shape, sig.shape[1], v.shape[1]
        d_k = d_keys.new_zeros(ctx.k_rows, d)
        d_k.index_add_(0, flat.reshape(-1), d_keys.reshape(G * L, d))
        members, local = flat[:, :km].reshape(-1), flat[:, km:].reshape(-1)
        dv_m = d_values[:, :km]  # (G, km, d)
        v_m = v.index_select(0, members).view(G, km, d)  # unscaled member values
        d_sig = (dv_m * v_m).sum(-1)  # (G, km)
        d_v = d_values.new_zeros(v.shape[0], d)
        d_v.index_add_(0, members, (dv_m * sig.unsqueeze(-1)).reshape(G * km, d))
        if local.numel():
            d_v.index_add_(0, local, d_values[:, km:].reshape(-1, d))
        return d_k, d_v, None, d_sig


COUNCIL_IMPLS = ("auto", "split", "masked")


def split_council_available(q: Tensor) -> bool:
    """Whether `_SplitCouncil` can run here: it calls the CPU flash-attention kernel directly,
    which returns the log-sum-exp the merge needs (the public SDPA does not)."""
    return q.device.type == "cpu" and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"
    )


# members gathered per slice of chunks: about this many elements of keys (and of values), so
# the gathered copies and their gradients stay a few MiB instead of (B nc, k', d) at once
_SLICE_ELEMENTS = 1 << 18


class _SplitCouncil(torch.autograd.Function):
    """The causal council as one softmax over members and the local window, without a mask for
    their union and without keeping gathered copies.

    q (G, h, C, d_h), G = B nc; k, v (T, d) token keys and values, T = G C (strided views are
    fine); flat (G, K) member rows, sig (G, K) sigmoid of the members' scores, bias (G, 1, 1, K)
    additive validity (0 or -inf), has (G,) False where no member is valid. Forward: each
    part's output and log-sum-exp from the CPU flash kernel (the chunk's own keys, in place,
    under plain causal attention; the members, gathered with values scaled by sig, under the
    bias), merged as o = sum_p exp(lse_p - lse) o_p, lse = logaddexp of the parts. Backward:
    each part's flash backward fed the MERGED output and log-sum-exp, so its probabilities are
    exp(s - lse), the union's softmax restricted to the part, and its rowsum(dO * O) term is
    the union's: the two gradients are the union's, split by key. The members are gathered
    (again, in backward) one slice of chunks at a time, so neither pass holds all of them.
    Saved: q, the (T, d) views, the indices and scales, the output and one (G, h, C)
    log-sum-exp; the largest mask is the (G, 1, 1, K) bias.
    """

    @staticmethod
    def forward(ctx, q, k, v, flat, sig, bias, has):  # type: ignore[override]
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        G, h, C, d_h = q.shape
        kl, vl = (t.view(G, C, h, d_h).transpose(1, 2) for t in (k, v))
        out, lse = flash(q, kl, vl, is_causal=True)  # the local part; becomes the union's
        for sl in _slices(G, flat.shape[1] * k.shape[1]):
            km, vm = _gather_members(k, v, flat[sl], sig[sl], h)
            o_m, lse_m = flash(q[sl], km, vm, attn_mask=bias[sl])
            # a row whose members are all masked comes back with lse 0, not -inf
            lse_m = lse_m.masked_fill(~has[sl].view(-1, 1, 1), float("-inf"))
            lse_u = torch.logaddexp(lse_m, lse[sl])  # fp32 (fp64 for fp64)
            w_m = torch.exp(lse_m - lse_u).unsqueeze(-1).to(out.dtype)
            out[sl].lerp_(o_m, w_m)  # out = o_l + w_m (o_m - o_l)
            lse[sl] = lse_u
        ctx.save_for_backward(q, k, v, flat, sig, bias, out, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):  # type: ignore[override]
        q, k, v, flat, sig, bias, out, lse = ctx.saved_tensors
        bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        G, h, C, d_h = q.shape
        K, d = flat.shape[1], k.shape[1]
        kl, vl = (t.view(G, C, h, d_h).transpose(1, 2) for t in (k, v))
        if d_out.stride(-1) != 1:
            d_out = d_out.contiguous()
        d_q, d_kl, d_vl = bwd(d_out, q, kl, vl, out, lse, 0.0, True)
        # the kernel lays its gradients out like its inputs: these are views, in token layout
        d_k = d_kl.transpose(1, 2).reshape(G * C, d)  # the local part
        d_v = d_vl.transpose(1, 2).reshape(G * C, d)
        d_sig = torch.empty_like(sig)
        for sl in _slices(G, K * d):
            km, vm = _gather_members(k, v, flat[sl], sig[sl], h)
            dq_m, dk_m, dv_m = bwd(
                d_out[sl], q[sl], km, vm, out[sl], lse[sl], 0.0, False, attn_mask=bias[sl]
            )
            del km, vm
            d_q[sl] += dq_m
            rows = flat[sl].reshape(-1)
            d_k.index_add_(0, rows, dk_m.transpose(1, 2).reshape(-1, d))
            dv_m = dv_m.transpose(1, 2).reshape(-1, K, d)  # w.r.t. the scaled member values
            v_m = v.index_select(0, rows).view(-1, K, 1, d)
            d_sig[sl] = (v_m @ dv_m.unsqueeze(-1)).view(-1, K)  # rowwise dot products
            d_v.index_add_(0, rows, dv_m.mul_(sig[sl].unsqueeze(-1)).view(-1, d))
        return d_q, d_k, d_v, None, d_sig, None, None


def _slices(G: int, per_chunk: int) -> list[slice]:
    """Slices of the G chunks with about _SLICE_ELEMENTS member elements each."""
    step = max(1, _SLICE_ELEMENTS // max(per_chunk, 1))
    return [slice(g, min(g + step, G)) for g in range(0, G, step)]


def _gather_members(k: Tensor, v: Tensor, flat: Tensor, sig: Tensor, h: int):
    """Members' keys and values (G, h, K, d_h) from (T, d) rows, values scaled by sig (G, K)."""
    (G, K), d = flat.shape, k.shape[1]
    rows = flat.reshape(-1)
    km = k.index_select(0, rows).view(G, K, h, d // h).transpose(1, 2)
    vm = v.index_select(0, rows).view(G, K, d).mul_(sig.unsqueeze(-1))
    return km, vm.view(G, K, h, d // h).transpose(1, 2)


class HubRouter(nn.Module):
    """x (B, n, d) -> (B, n, d). See the module docstring and shared/design/hubrouter.md."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        hubs: int = 8,
        topk: int = 64,
        neighbours: int = 1,
        chunk: int = 64,
        causal: bool = True,
        ortho_weight: float = 0.0,
        rope: bool = False,
        council: str = "auto",
    ) -> None:
        super().__init__()
        validate_hub_config(d_model, n_heads, hubs, topk, neighbours, chunk, ortho_weight, rope)
        if council not in COUNCIL_IMPLS:
            raise ConfigError(
                f"hubrouter: council must be one of {', '.join(COUNCIL_IMPLS)} (got {council!r})"
            )
        self.council = council
        self._last_council = "masked"
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.hubs, self.topk, self.neighbours, self.chunk = hubs, topk, neighbours, chunk
        self.causal, self.ortho_weight, self.rope = causal, ortho_weight, rope
        d, h, M = d_model, n_heads, hubs
        self.hub_embed = nn.Parameter(torch.empty(M, d))  # E
        nn.init.orthogonal_(self.hub_embed)
        self.hub_query = nn.Linear(d, d, bias=False)  # hub queries from E
        self.enc_key = nn.Linear(d, d, bias=False)  # encode keys from x (folded, see forward)
        self.enc_value = nn.Linear(d, d, bias=False)  # encode values from x (folded)
        self.dec_query = nn.Linear(d, d, bias=False)  # decode token queries (folded)
        # council k, v, q, gate and the token part of the score head share one GEMM
        self.in_proj = nn.Linear(d, 4 * d + 1)
        self.score_fp = nn.Linear(M, 1, bias=False)  # fingerprint part of the score head
        self.init_logit = nn.Parameter(torch.zeros(h, M))  # sink logit of the initial state
        self.init_state = nn.Parameter(0.02 * torch.randn(h, M, self.d_head))
        self.out_proj = nn.Linear(d, d)
        self.last_backend: str | None = None
        # set record_routing to keep the last forward's council members: (positions (B, nc, k'),
        # validity (B, nc, k'), chunk C); off by default, so a forward keeps nothing extra
        self.record_routing = False
        self.last_routing: tuple[Tensor, Tensor, int] | None = None
        self.aux_loss: Tensor | None = None

    def ortho_loss(self) -> Tensor:
        """The unweighted orthogonal hub regulariser."""
        return ortho_loss(self.hub_embed)

    def analytic_flops(self, seq: int) -> float:
        """Forward FLOPs for one sequence as this implementation computes it (matmuls only).

        The council counts the key slots each chunk's queries are scored against: k' member
        slots plus, causally, (C+1)/2 local keys on average. Causally, the member slots are
        min(k, (nc - 1) C) wide (what `_members` allocates: chunk c draws on chunks before it),
        so at n <= C there are none and the council is the causal local window alone.
        Elementwise work (softmax, scans, gathers) is not counted.
        """
        d, h, M, d_h = self.d_model, self.n_heads, self.hubs, self.d_head
        C = self.chunk if self.causal else seq
        nc = -(-seq // C)
        n_pad = nc * C
        members = min(self.topk, (nc - 1) * C) if self.causal else min(self.topk, seq)
        slots = members * (1 + self.neighbours)
        visible = slots + ((C + 1) / 2 if self.causal else 0)
        flops = 2 * n_pad * d * (4 * d + 1 + h * M)  # fused input GEMM
        flops += 2 * M * d * d + 2 * h * M * d_h * d  # hub queries folded into W_k
        flops += 2 * n_pad * h * M * d + 2 * nc * h * M * d * d_h  # encode sums, W_v
        flops += 2 * nc * h * M * d_h * d  # decode query folded into the hub states
        flops += 2 * 2 * n_pad * h * M * d  # decode logits and (block-diagonal) readout
        flops += 2 * 2 * n_pad * visible * d  # council QK^T and AV
        flops += 2 * n_pad * d * d  # output projection
        return float(flops)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, hubs={self.hubs}, topk={self.topk}, "
            f"neighbours={self.neighbours}, chunk={self.chunk}, causal={self.causal}, "
            f"ortho_weight={self.ortho_weight}, rope={self.rope}"
        )

    # -- forward --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The output (B, n, d) and what prefill reads: projections and scores, padded to n_pad."""
        _, n, d = x.shape
        if d != self.d_model:
            raise ConfigError(f"hubrouter: input width {d} != d_model {self.d_model}")
        C = self.chunk if self.causal else n
        nc = -(-n // C)
        n_pad = nc * C
        xp = F.pad(x, (0, 0, 0, n_pad - n)) if n_pad != n else x  # (B, n_pad, d)
        proj = F.linear(xp, *self._fused_weights())  # (B, n_pad, 4d + 1 + hM)
        # one split, not slices: each slice's backward would zero-fill a full-size gradient
        k_c, v_c, q_c, gate, s_tok, z = proj.split((d, d, d, d, 1, self.n_heads * self.hubs), -1)
        s_tok = s_tok.squeeze(-1)  # (B, n_pad)

        with record_function("hub.encode"):
            states = self._encode(xp, z, nc, C)  # (B, nc, h, M, d_h)
        with record_function("hub.decode"):
            readout, fp = self._decode(xp, states, nc, C)  # (B, n_pad, d), (B, n_pad, M)
        with record_function("hub.select"):
            s = self._score(s_tok, fp, x)
            if n_pad != n:
                pad = torch.arange(n_pad, device=x.device) >= n
                s = s.masked_fill(pad, float("-inf"))  # (B, n_pad)
            mpos, mvalid = self._select(s, n, nc, C)  # (B, nc, k') each
            if self.record_routing:  # quality mode scores the selection (quality.routing)
                self.last_routing = (mpos.detach(), mvalid.detach(), C)
        with record_function("hub.council"):
            council = self._council(q_c, k_c, v_c, s, mpos, mvalid, nc, C)  # (B, n_pad, d)

        y = self.out_proj(readout.to(council.dtype) + council) * torch.sigmoid(gate)
        self.aux_loss = self.ortho_weight * self.ortho_loss() if self.ortho_weight > 0 else None
        self.last_backend = self._backend_name()
        parts = {"xp": xp, "k": k_c, "v": v_c, "s": s, "z": z}
        return (y[:, :n] if n_pad != n else y), parts

    def _score(self, s_tok: Tensor, fp: Tensor, x: Tensor) -> Tensor:
        """s = w . x + b (from the fused GEMM) + u . fingerprint, in >= fp32 (bf16: top-k ties)."""
        sd = self._stat_dtype(x)
        return s_tok.to(sd) + self.score_fp(fp.to(self.score_fp.weight.dtype)).squeeze(-1).to(sd)

    # -- recurrent decoding -----------------------------------------------------------------

    def _check_decodable(self, x: Tensor) -> None:
        if not self.causal:
            raise ConfigError("hubrouter: incremental decoding needs causal=true")
        if x.shape[-1] != self.d_model:
            raise ConfigError(f"hubrouter: input width {x.shape[-1]} != d_model {self.d_model}")

    def empty_state(self, batch: int, capacity: int, like: Tensor) -> HubState:
        """The state before the first token: the sink alone, no members, an empty chunk."""
        del capacity  # the state does not grow
        B, d, h, M, C = batch, self.d_model, self.n_heads, self.hubs, self.chunk
        sd = self._stat_dtype(like)
        cd = compute_dtype(like)  # what the fused GEMM yields: keys, values, hub logits
        S = self.topk * (1 + self.neighbours)
        m, l, o = self._sink(B, sd)
        dev = like.device
        # in the compute dtype: autocast would cast an fp32 copy again on every token
        w_in, b_in = (t.detach().to(cd) for t in self._fused_weights())
        state = HubState(
            pos=0, m=m, l=l, o=o, g=like.new_zeros(B, h * M, d), block=like.new_zeros(B, h * M, d),
            top_vals=torch.full((B, self.topk), float("-inf"), dtype=sd, device=dev),
            top_pos=torch.zeros(B, self.topk, dtype=torch.long, device=dev),
            slot_pos=torch.zeros(B, S, dtype=torch.long, device=dev),
            slot_valid=torch.zeros(B, S, dtype=torch.bool, device=dev),
            slot_k=like.new_zeros(B, S, d, dtype=cd), slot_v=like.new_zeros(B, S, d, dtype=cd),
            buf_x=like.new_zeros(B, C, d), buf_z=like.new_zeros(B, C, h * M, dtype=cd),
            buf_k=like.new_zeros(B, C, d, dtype=cd), buf_v=like.new_zeros(B, C, d, dtype=cd),
            buf_s=torch.zeros(B, C, dtype=sd, device=dev), w_in=w_in, b_in=b_in,
        )  # fmt: skip
        self._read_hubs(state, like.dtype)
        return state

    def prefill(self, x: Tensor, capacity: int = 0) -> tuple[Tensor, HubState]:
        """The parallel forward of a prompt x (B, n, d), and the state after its last token.

        The state is built from the forward's own projections and scores: hub statistics over
        the sink and the complete chunks, the top-k of their scores with right neighbours
        before the current chunk, and the tokens of the incomplete last chunk.
        """
        self._check_decodable(x)
        y, parts = self._forward(x)
        B, n, _ = x.shape
        C = self.chunk
        start = (n // C) * C  # first position of the chunk the next token falls in
        state = self.empty_state(B, capacity, x)
        sd = state.m.dtype
        z, xp, s = parts["z"], parts["xp"], parts["s"]
        k = parts["k"]
        if self.rope:  # keys rotated at their true positions, as the council rotates them
            from hubbench.mixers.rope import rotary

            rows = torch.arange(k.shape[1], device=x.device).view(-1, 1)
            k = rotary(k.reshape(B, k.shape[1], self.n_heads, self.d_head), rows).view(k.shape)
        if start:
            with torch.autocast(x.device.type, enabled=False):
                mc, lc, oc = self._chunk_stats(z[:, :start].to(sd), xp[:, :start].to(sd))
                state.m, state.l, state.o = _combine(state.m, state.l, state.o, mc, lc, oc)
            kw = min(self.topk, start)
            vals, pos = top_ordered(rank_key(s[:, :start]), kw)
            state.top_vals[:, :kw], state.top_pos[:, :kw] = vals, pos
            self._refill_slots(state, start, k, parts["v"], s, 0)
        self._read_hubs(state, x.dtype)
        cnt = n - start
        for name, src in (("buf_x", xp), ("buf_z", z), ("buf_k", k), ("buf_v", parts["v"])):
            getattr(state, name)[:, :cnt] = src[:, start:n]
        state.buf_s[:, :cnt] = s[:, start:n]
        state.pos = n
        return y, state

    def step(self, x: Tensor, state: HubState) -> Tensor:
        """One token per sequence, x (B, 1, d), at position `state.pos`; advances `state`.

        O(M + k' + C) work: decode against the current hub states, score, council over the
        member slots and the chunk so far. When the token completes its chunk, the boundary
        update (O(C M d), once per chunk) merges the chunk into the hubs and the members.
        """
        self._check_decodable(x)
        check_step_input(x, self.d_model, "hubrouter")
        B, d, h, d_h, C = x.shape[0], self.d_model, self.n_heads, self.d_head, self.chunk
        t, i = state.pos, state.pos % C
        proj = F.linear(x, state.w_in, state.b_in)  # (B, 1, 4d + 1 + hM)
        k_c, v_c, q_c, gate, s_tok, z = proj.split((d, d, d, d, 1, h * self.hubs), -1)
        logits = (x @ state.g.transpose(-1, -2)).view(B, 1, h, self.hubs)
        attn = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        fp = attn.mean(dim=2)  # (B, 1, M)
        readout = attn.view(B, 1, h * self.hubs).to(state.block.dtype) @ state.block  # (B, 1, d)
        s = self._score(s_tok.squeeze(-1), fp, x)  # (B, 1)
        if self.rope:
            from hubbench.mixers.rope import rotary

            pos = torch.full((1, 1), t, device=x.device)
            q_c = rotary(q_c.view(B, 1, h, d_h), pos).view(B, 1, d)
            k_c = rotary(k_c.view(B, 1, h, d_h), pos).view(B, 1, d)
        state.buf_x[:, i : i + 1], state.buf_z[:, i : i + 1] = x, z
        state.buf_k[:, i : i + 1], state.buf_v[:, i : i + 1] = k_c, v_c
        state.buf_s[:, i : i + 1] = s
        keys = torch.cat((state.slot_k, state.buf_k[:, : i + 1]), 1)  # (B, L, d)
        values = torch.cat((state.slot_v, state.buf_v[:, : i + 1]), 1)
        ones = state.slot_valid.new_ones(B, i + 1)
        mask = torch.cat((state.slot_valid, ones), 1).view(B, 1, 1, -1)
        L = keys.shape[1]
        qh = q_c.view(B, 1, h, d_h).transpose(1, 2)  # (B, h, 1, d_h)
        kh = keys.view(B, L, h, d_h).transpose(1, 2)
        vh = values.view(B, L, h, d_h).transpose(1, 2)
        council = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        council = council.transpose(1, 2).reshape(B, 1, d)
        y = self.out_proj(readout.to(council.dtype) + council) * torch.sigmoid(gate)
        state.pos = t + 1
        if state.pos % C == 0:
            self._boundary(state, x.dtype)
        self.last_backend = "hubrouter:recurrent"
        return y

    def decode_flops(self, context: int) -> float:
        """Forward FLOPs of one decoded token (matmuls), the chunk-boundary work amortised.

        Constant in `context`: k' member slots plus, on average, (C + 1) / 2 local keys.
        """
        del context
        d, h, M, d_h, C = self.d_model, self.n_heads, self.hubs, self.d_head, self.chunk
        slots = self.topk * (1 + self.neighbours)
        flops = 2 * d * (4 * d + 1 + h * M)  # fused input GEMM
        flops += 2 * 2 * h * M * d  # decode logits and readout
        flops += 2 * 2 * (slots + (C + 1) / 2) * d  # council
        flops += 2 * d * d  # output projection
        # once per chunk: the chunk's weighted sums, W_v, the decode fold (the fused input
        # weight is folded once per state, in prefill)
        per_chunk = 2 * C * h * M * d + 2 * h * M * d * d_h + 2 * h * M * d_h * d
        return float(flops + per_chunk / C)

    def _sink(self, B: int, sd: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        hM = self.n_heads * self.hubs
        m = self.init_logit.to(sd).reshape(1, hM).expand(B, hM).clone()
        o = self.init_state.to(sd).reshape(1, hM, self.d_head).expand(B, hM, self.d_head).clone()
        return m, torch.ones_like(m), o

    def _chunk_stats(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Softmax statistics of tokens z (B, T, hM), x (B, T, d) for every hub and head."""
        B, d, h, M, d_h = x.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        m = z.amax(dim=1)  # (B, hM)
        p = torch.exp(z - m.unsqueeze(1))  # (B, T, hM)
        xs = p.transpose(1, 2) @ x  # (B, hM, d)
        w_v = self.enc_value.weight.to(x.dtype).view(h, d_h, d)
        o = torch.einsum("bhmd,hed->bhme", xs.view(B, h, M, d), w_v).reshape(B, h * M, d_h)
        return m, p.sum(dim=1), o

    def _read_hubs(self, state: HubState, dtype: torch.dtype) -> None:
        """The current chunk's hub states, folded as `_decode` folds them."""
        B, d, h, M, d_h = state.m.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        st = (state.o / state.l.unsqueeze(-1)).view(B, h, M, d_h).to(dtype)
        w_q = self.dec_query.weight.view(h, d_h, d)
        cd = state.slot_k.dtype  # the compute dtype the state was made for
        g = torch.einsum("bhme,hed->bhmd", st, w_q * (1.0 / math.sqrt(d_h)))
        state.g = g.reshape(B, h * M, d).to(cd)
        eye = torch.eye(h, device=st.device, dtype=st.dtype).view(1, h, 1, h, 1)
        state.block = (st.unsqueeze(3) * eye).reshape(B, h * M, d).to(cd)

    def _refill_slots(
        self, state: HubState, limit: int, k: Tensor, v: Tensor, s: Tensor, offset: int
    ) -> None:
        """Council slots of the current members: positions < `limit`, keys and scaled values
        looked up in (k, v, s), whose row j holds position j + offset."""
        B = k.shape[0]
        valid = state.top_vals > float("-inf")
        pos, ok = expand_members(state.top_pos.unsqueeze(1), valid.unsqueeze(1), self.neighbours,
                                 torch.full((1, 1, 1), limit, device=k.device))  # fmt: skip
        pos, ok = pos[:, 0], ok[:, 0]  # (B, S)
        rows = (pos - offset).clamp(min=0)
        idx = rows.unsqueeze(-1).expand(B, rows.shape[1], k.shape[-1])
        state.slot_k = k.gather(1, idx)
        sig = torch.sigmoid(s.gather(1, rows)).to(v.dtype)
        state.slot_v = v.gather(1, idx) * sig.unsqueeze(-1)
        state.slot_pos, state.slot_valid = pos, ok

    def _boundary(self, state: HubState, dtype: torch.dtype) -> None:
        """The chunk in the buffer is complete: merge it into the hubs and the members."""
        B, C, d = state.buf_x.shape
        start = state.pos - C
        sd = state.m.dtype
        with torch.autocast(state.buf_x.device.type, enabled=False):
            mc, lc, oc = self._chunk_stats(state.buf_z.to(sd), state.buf_x.to(sd))
            state.m, state.l, state.o = _combine(state.m, state.l, state.o, mc, lc, oc)
        self._read_hubs(state, dtype)
        # members: the top-k of the previous members and this chunk's tokens
        here = start + torch.arange(C, device=state.buf_s.device).expand(B, C)
        keys = torch.cat((state.top_vals, rank_key(state.buf_s)), 1)
        vals, idx = top_ordered(keys, self.topk)
        state.top_pos = torch.cat((state.top_pos, here), 1).gather(1, idx)
        state.top_vals = vals
        # every new slot is an old slot or a token of this chunk (a member stays a member from
        # the chunk after its own until it is pushed out, so its older neighbours are slots)
        sig = torch.sigmoid(state.buf_s).to(state.buf_v.dtype).unsqueeze(-1)
        old_pos = torch.where(state.slot_valid, state.slot_pos, -1)
        union_pos = torch.cat((old_pos, here), 1)  # (B, S + C)
        union_k = torch.cat((state.slot_k, state.buf_k), 1)
        union_v = torch.cat((state.slot_v, state.buf_v * sig), 1)
        valid = state.top_vals > float("-inf")
        pos, ok = expand_members(state.top_pos.unsqueeze(1), valid.unsqueeze(1), self.neighbours,
                                 torch.full((1, 1, 1), state.pos, device=here.device))  # fmt: skip
        pos, ok = pos[:, 0], ok[:, 0]
        where = (pos.unsqueeze(-1) == union_pos.unsqueeze(1)).to(torch.uint8).argmax(-1)
        gidx = where.unsqueeze(-1).expand(B, where.shape[1], d)
        state.slot_k, state.slot_v = union_k.gather(1, gidx), union_v.gather(1, gidx)
        state.slot_pos, state.slot_valid = pos, ok

    def _backend_name(self) -> str:
        if not self.causal:
            return "hubrouter:bidirectional"
        return f"hubrouter:causal:{self._last_council}-council"

    def _fused_weights(self) -> tuple[Tensor, Tensor]:
        """One (4d + 1 + hM, d) weight: council k, v, q, gate, token score, encode logits."""
        h, M, d_h = self.n_heads, self.hubs, self.d_head
        q_hub = self.hub_query(self.hub_embed).view(M, h, d_h).transpose(0, 1)  # (h, M, d_h)
        w_k = self.enc_key.weight.view(h, d_h, self.d_model)  # (h, d_h, d)
        w_z = (q_hub @ w_k).reshape(h * M, self.d_model) * (1.0 / math.sqrt(d_h))  # (hM, d)
        weight = torch.cat((self.in_proj.weight, w_z), 0)
        bias = torch.cat((self.in_proj.bias, self.in_proj.bias.new_zeros(h * M)))
        return weight, bias

    def _stat_dtype(self, x: Tensor) -> torch.dtype:
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def _encode(self, xp: Tensor, z: Tensor, nc: int, C: int) -> Tensor:
        """Hub states read by each chunk: (B, nc, h, M, d_h).

        Causal: chunk c reads sink + chunks 0..c-1 (exclusive prefix). Non-causal (nc == 1,
        C == n): sink + every token.
        """
        B, d, h, M, d_h = xp.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        sd = self._stat_dtype(xp)
        used = nc - 1 if self.causal else nc  # the last causal chunk is read by no one
        with torch.autocast(xp.device.type, enabled=False):
            zc = z.to(sd).view(B, nc, C, h * M)
            xc = xp.to(sd).view(B, nc, C, d)
            if used < nc:
                zc, xc = zc.split((used, 1), 1)[0], xc.split((used, 1), 1)[0]
            m = zc.amax(dim=2)  # (B, used, hM)
            p = torch.exp(zc - m.unsqueeze(2))  # (B, used, C, hM)
            l = p.sum(dim=2)  # (B, used, hM)
            xs = p.transpose(2, 3) @ xc  # (B, used, hM, d) weighted sums of x
            w_v = self.enc_value.weight.to(sd).view(h, d_h, d)  # (h, d_h, d)
            # einsum makes this one GEMM per head (a broadcast @ would copy W per chunk)
            o = torch.einsum("bchmd,hed->bchme", xs.view(B, used, h, M, d), w_v)
            o = o.reshape(B, used, h * M, d_h)
            m0 = self.init_logit.to(sd).reshape(1, 1, h * M).expand(B, 1, h * M)
            o0 = self.init_state.to(sd).reshape(1, 1, h * M, d_h).expand(B, 1, h * M, d_h)
            m = torch.cat((m0, m), 1)  # (B, used + 1, hM)
            l = torch.cat((torch.ones_like(m0), l), 1)
            o = torch.cat((o0, o), 1)
            if self.causal:
                m, l, o = prefix_combine_blocked(m, l, o)  # entry c = sink + chunks < c
            else:
                m, l, o = _combine(m[:, :1], l[:, :1], o[:, :1], m[:, 1:], l[:, 1:], o[:, 1:])
            states = o / l.unsqueeze(-1)  # (B, nc, hM, d_h)
        return states.view(B, nc, h, M, d_h)

    def _decode(self, xp: Tensor, states: Tensor, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Readout (B, n_pad, d) and fingerprint (B, n_pad, M) of every token.

        The decode query is folded into the hub states (G = H W_dq per head), and the readout
        uses a block-diagonal copy of H, so both are single batched GEMMs per chunk with no
        permutes of token-sized tensors.
        """
        B, d, h, M, d_h = xp.shape[0], self.d_model, self.n_heads, self.hubs, self.d_head
        # outside autocast everything runs in the input's dtype; inside, autocast picks
        st = states if torch.is_autocast_enabled(xp.device.type) else states.to(xp.dtype)
        w_q = self.dec_query.weight.view(h, d_h, d)  # (h, d_h, d)
        g = torch.einsum("bchme,hed->bchmd", st, w_q * (1.0 / math.sqrt(d_h)))
        g = g.reshape(B, nc, h * M, d)  # (B, nc, hM, d)
        logits = (xp.view(B, nc, C, d) @ g.transpose(-1, -2)).view(B, nc, C, h, M)
        attn = torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        fp = attn.mean(dim=3).reshape(B, nc * C, M)  # (B, n_pad, M)
        eye = torch.eye(h, device=xp.device, dtype=st.dtype).view(1, 1, h, 1, h, 1)
        block = (st.unsqueeze(4) * eye).reshape(B, nc, h * M, d)  # (B, nc, hM, d) block-diag
        readout = attn.view(B, nc, C, h * M).to(block.dtype) @ block  # (B, nc, C, d)
        return readout.view(B, nc * C, d), fp

    def _select(self, s: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Members per chunk after adding right neighbours: positions, validity (B, nc, k')."""
        pos, valid = self._members(rank_key(s.detach()), n, nc, C)
        return expand_members(pos, valid, self.neighbours, self._neighbour_limit(n, nc, C, s))

    def _neighbour_limit(self, n: int, nc: int, C: int, s: Tensor) -> Tensor:
        """First position a neighbour may not reach: the reading chunk's start (causal) or n."""
        if not self.causal:
            return torch.full((1, 1, 1), n, device=s.device)
        return torch.arange(nc, device=s.device).view(1, nc, 1) * C

    def _members(self, sd: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        """Top-k members per chunk before neighbours: positions, validity (B, nc, k).

        Causal: chunk c sees the top-k of positions in chunks 0..c-1 (a prefix top-k merge over
        per-chunk candidates). Non-causal: one top-k over the whole sequence (nc == 1).
        """
        if not self.causal:
            vals, pos = top_ordered(sd, min(self.topk, n))  # (B, k)
            return pos.unsqueeze(1), vals.unsqueeze(1) > float("-inf")
        B = sd.shape[0]
        kw = min(self.topk, (nc - 1) * C)
        kc = min(self.topk, C)
        # slot 0 is the empty set, so the inclusive scan at c covers chunks 0..c-1
        vals = torch.full((B, nc, kw), float("-inf"), dtype=sd.dtype, device=sd.device)
        pos = torch.zeros(B, nc, kw, dtype=torch.long, device=sd.device)
        if kw > 0:
            cv, ci = top_ordered(sd[:, : (nc - 1) * C].view(B, nc - 1, C), kc)  # (B, nc-1, kc)
            starts = torch.arange(nc - 1, device=sd.device).view(1, -1, 1) * C
            vals[:, 1:, :kc] = cv
            pos[:, 1:, :kc] = ci + starts
            vals, pos = prefix_topk(vals, pos, kw)
        return pos, vals > float("-inf")

    def _council(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        s: Tensor,
        mpos: Tensor,
        mvalid: Tensor,
        nc: int,
        C: int,
    ) -> Tensor:
        """Each chunk's queries attend to its members (+ the causal local window): (B, n_pad, d)."""
        if self.rope:
            q, k = self._rotate(q, k)
        self._last_council = self._council_impl(q) if self.causal else "masked"
        if self._last_council == "split":
            return self._council_split(q, k, v, s, mpos, mvalid, nc, C)
        return self._council_masked(q, k, v, s, mpos, mvalid, nc, C)

    def _council_impl(self, q: Tensor) -> str:
        """Which council runs: split (two attentions merged by log-sum-exp) or masked (one
        attention under a dense mask)."""
        if self.council != "auto":
            return self.council
        return "split" if split_council_available(q) else "masked"

    def _member_kv(
        self, k: Tensor, v: Tensor, s: Tensor, idx: Tensor, km: int, nc: int
    ) -> tuple[Tensor, Tensor]:
        """Gathered council keys and values (B nc, h, L, d_h) for positions idx (B, nc, L);
        the first km of each row are members (values scaled by sigmoid of their score)."""
        B, n_pad, d = k.shape
        h, d_h, L = self.n_heads, self.d_head, idx.shape[-1]
        flat = (idx + torch.arange(B, device=k.device).view(B, 1, 1) * n_pad).view(B * nc, L)
        sig = torch.sigmoid(s.gather(1, idx[..., :km].reshape(B, -1))).view(B * nc, km)
        rows = (B * n_pad, d)
        mk, mv = _GatherCouncil.apply(k.reshape(rows), v.reshape(rows), flat, sig.to(v.dtype))
        kh = mk.view(B * nc, L, h, d_h).transpose(1, 2)
        return kh, mv.view(B * nc, L, h, d_h).transpose(1, 2)

    def _council_masked(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        s: Tensor,
        mpos: Tensor,
        mvalid: Tensor,
        nc: int,
        C: int,
    ) -> Tensor:
        """The reference council: members and (causal) the local window gathered into one key
        list, one attention under a mask; causally the mask is dense, (B nc, 1, C, k' + C)."""
        B, n_pad, d = q.shape
        h, d_h, km = self.n_heads, self.d_head, mpos.shape[-1]
        idx = mpos
        mask = mvalid.view(B * nc, 1, 1, km)
        if self.causal:  # the local window: this chunk's own tokens, after the members
            local = torch.arange(n_pad, device=q.device).view(1, nc, C).expand(B, nc, C)
            idx = torch.cat((mpos, local), -1)  # (B, nc, k' + C)
            tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            mask = torch.cat((mask.expand(B * nc, 1, C, km), tril.expand(B * nc, 1, C, C)), -1)
        kh, vh = self._member_kv(k, v, s, idx, km, nc)  # (B nc, h, L, d_h)
        qh = q.reshape(B * nc, C, h, d_h).transpose(1, 2)  # (B nc, h, C, d_h)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # (B nc, h, C, d_h)
        return out.transpose(1, 2).reshape(B, n_pad, d)

    def _council_split(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        s: Tensor,
        mpos: Tensor,
        mvalid: Tensor,
        nc: int,
        C: int,
    ) -> Tensor:
        """The causal council as two attentions merged by their log-sum-exp: the members
        (gathered, a per-key validity bias of shape (B nc, 1, 1, k')) and the local window
        (the chunk's own keys in place, plain causal attention). No dense mask, and the local
        keys and values are never copied. Same softmax over the same keys as the masked path."""
        B, n_pad, d = q.shape
        h, d_h, km = self.n_heads, self.d_head, mpos.shape[-1]
        heads = (B * nc, C, h, d_h)
        qh = q.reshape(heads).transpose(1, 2)  # (B nc, h, C, d_h), views
        kl, vl = k.reshape(heads).transpose(1, 2), v.reshape(heads).transpose(1, 2)
        if km == 0:  # n <= C: no chunk has members, the council is the local window alone
            out = F.scaled_dot_product_attention(qh, kl, vl, is_causal=True)
            # the score head still gets an (exactly zero) gradient, as in the masked path:
            # None would make AdamW skip its weight decay and moments, and the paths differ
            out = out + s[:, :0].sum().to(out.dtype)
        else:
            flat = (mpos + torch.arange(B, device=q.device).view(B, 1, 1) * n_pad).view(-1, km)
            sig = torch.sigmoid(s.gather(1, mpos.view(B, -1))).view(B * nc, km).to(v.dtype)
            valid = mvalid.view(B * nc, 1, 1, km)
            bias = torch.zeros(valid.shape, dtype=qh.dtype, device=q.device)
            bias = bias.masked_fill(~valid, float("-inf"))
            rows = (B * n_pad, d)
            out = _SplitCouncil.apply(
                qh, k.reshape(rows), v.reshape(rows), flat, sig, bias, valid.any(-1).view(-1)
            )
        return out.transpose(1, 2).reshape(B, n_pad, d)

    def _rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary on council queries and keys at their true positions, before the gather, so
        a gathered member keeps the rotation of where it sits in the sequence."""
        from hubbench.mixers.rope import rotary

        B, n_pad, d = q.shape
        shape = (B, n_pad, self.n_heads, self.d_head)
        # positions (n, 1) broadcast over heads: rotating the (B, n, h, d_h) layout in place of
        # memory avoids transposed copies
        pos = torch.arange(n_pad, device=q.device).view(n_pad, 1)
        q_rot = rotary(q.reshape(shape), pos).view(B, n_pad, d)
        return q_rot, rotary(k.reshape(shape), pos).view(B, n_pad, d)


# --- recurrent decoding -------------------------------------------------------------------------


@dataclass
class HubState:
    """What a causal HubRouter carries from token to token (spec: "Recurrent decoding").

    Nothing in it grows with the context: the hub softmax statistics over the sink and every
    complete chunk (`m`, `l`, `o`; per hub and head), the hub states the current chunk reads
    (folded into decode keys `g` and a block-diagonal readout `block`), the top-k members so
    far (`top_vals`, `top_pos`), their council slots after right neighbours (`slot_*`: keys
    rotated at their positions, values scaled by sigmoid(score), validity), and the tokens of
    the current chunk (`buf_*`, the first `pos % C` rows used). At a chunk boundary the chunk's
    statistics are merged into the hubs and its tokens compete for membership, as the parallel
    forward does between chunks.
    """

    pos: int  # tokens seen
    m: Tensor  # (B, hM) running max of the hub logits
    l: Tensor  # (B, hM) sum of exps
    o: Tensor  # (B, hM, d_h) weighted value sums
    g: Tensor  # (B, hM, d) decode keys of the current chunk's hub states
    block: Tensor  # (B, hM, d) block-diagonal hub states for the readout
    top_vals: Tensor  # (B, k) members' rank keys (rank_key of the score), -inf = empty
    top_pos: Tensor  # (B, k)
    slot_pos: Tensor  # (B, S) S = k (1 + r)
    slot_valid: Tensor  # (B, S)
    slot_k: Tensor  # (B, S, d)
    slot_v: Tensor  # (B, S, d)
    buf_x: Tensor  # (B, C, d) inputs (for the chunk's hub statistics)
    buf_z: Tensor  # (B, C, hM) hub logits
    buf_k: Tensor  # (B, C, d) council keys, rotated
    buf_v: Tensor  # (B, C, d) council values, unscaled
    buf_s: Tensor  # (B, C) scores
    # the fused input weight and bias (parameters folded once per state, not per token); derived
    # from the parameters, shared by every sequence, so neither counted nor snapshotted. Folded
    # when the state is made: parameters changed after that need a new state (a new prefill)
    w_in: Tensor | None = None
    b_in: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        skip = ("pos", "w_in", "b_in")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def snapshot(self) -> tuple[int, dict[str, Tensor]]:
        return self.pos, {k: t.clone() for k, t in self.tensors().items()}

    def restore(self, snap: tuple[int, dict[str, Tensor]]) -> None:
        self.pos = snap[0]
        for k, t in snap[1].items():
            setattr(self, k, t.clone())


class LeakyGlobalTopK(HubRouter):
    """DELIBERATELY BROKEN: the Mixture-of-Depths mistake, kept to prove the causality checks bite.

    Members are the top-k over the WHOLE sequence (so which past tokens are members depends on
    future scores); the council is masked so a token only sees members before its chunk. Every
    gradient into the future is zero, yet output t changes when inputs after t change. It claims
    `causal = True`, and the perturbation check must catch it.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["causal"] = True
        super().__init__(*args, **kwargs)

    def _backend_name(self) -> str:
        return "hubrouter:leaky-global-topk"

    def _members(self, sd: Tensor, n: int, nc: int, C: int) -> tuple[Tensor, Tensor]:
        B = sd.shape[0]
        vals, pos = sd.topk(min(self.topk, n), dim=-1)  # (B, k) over ALL positions: the leak
        starts = torch.arange(nc, device=sd.device).view(1, nc, 1) * C
        pos = pos.unsqueeze(1).expand(B, nc, pos.shape[-1])
        valid = (vals.unsqueeze(1) > float("-inf")) & (pos < starts)  # the masked council
        return pos, valid
