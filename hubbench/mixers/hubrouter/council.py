"""HubRouter's council: each chunk's queries attend to its members (+ the causal local window).

Three implementations of the same softmax over the same keys (flex.py has a fourth):
- `masked_council`, the reference: members and (causal) the chunk's own tokens gathered into
  one key list, one attention under a mask (dense causally: (B nc, 1, C, k' + C));
- `split_council`, causal only, where the CPU flash kernel exists (auto's CPU choice in half
  precision): two attentions (the gathered members under a per-key validity bias, the chunk's
  own keys in place under plain causal attention) merged by their log-sum-exp; no dense mask,
  no copy of the local keys;
- `packed_council`, causal only, auto's CPU choice in fp32/fp64: one softmax over the union
  per slice of chunks and per head, written as batched GEMMs over the gathered [members, local
  window] keys (mask built per slice), keeping the probabilities for the backward instead of
  recomputing them (the CPU flash kernel runs these 64-query blocks well below GEMM speed).
Each is served by a hand-written autograd Function (`_GatherCouncil`, `_SplitCouncil`,
`_PackedCouncil`) that keeps the gathered copies and their gradients small. Members are given
as (positions, validity), each (B, nc, k'); q, k, v are (B, n_pad, d) with n_pad = nc C; s the
scores (B, n_pad)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# members gathered per slice of chunks: about this many elements of keys (and of values), so
# the gathered copies and their gradients stay a few MiB instead of (B nc, k', d) at once
SLICE_ELEMENTS = 1 << 18
# query rows per slice of the packed council: a head's (rows, k' + C) score block then stays
# within a core's L2 through the softmax and the products that read it
PACKED_ROWS = 1 << 10


def split_council_available(q: Tensor) -> bool:
    """Whether `split_council` can run here: it calls the CPU flash-attention kernel directly,
    which returns the log-sum-exp the merge needs (the public SDPA does not)."""
    return q.device.type == "cpu" and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"
    )


def packed_council_available(q: Tensor) -> bool:
    """Whether auto takes `packed_council` here: CPU, fp32 or fp64. In half precision it would
    compute in fp32 (a bf16 softmax would round the scores), where the split council runs the
    CPU flash kernel in the input's dtype."""
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)


def masked_council(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    members: tuple[Tensor, Tensor],
    n_heads: int,
    causal: bool,
) -> Tensor:
    """The reference council, one attention under a mask: (B, n_pad, d)."""
    mpos, mvalid = members
    B, n_pad, d = q.shape
    nc, km = mpos.shape[1], mpos.shape[-1]
    C, h, d_h = n_pad // nc, n_heads, d // n_heads
    idx = mpos
    mask = mvalid.view(B * nc, 1, 1, km)
    if causal:  # the local window: this chunk's own tokens, after the members
        local = torch.arange(n_pad, device=q.device).view(1, nc, C).expand(B, nc, C)
        idx = torch.cat((mpos, local), -1)  # (B, nc, k' + C)
        tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        mask = torch.cat((mask.expand(B * nc, 1, C, km), tril.expand(B * nc, 1, C, C)), -1)
    kh, vh = _member_kv(k, v, s, idx, km, n_heads)  # (B nc, h, L, d_h)
    qh = q.reshape(B * nc, C, h, d_h).transpose(1, 2)  # (B nc, h, C, d_h)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # (B nc, h, C, d_h)
    return out.transpose(1, 2).reshape(B, n_pad, d)


def _member_kv(
    k: Tensor, v: Tensor, s: Tensor, idx: Tensor, km: int, n_heads: int
) -> tuple[Tensor, Tensor]:
    """Gathered council keys and values (B nc, h, L, d_h) for positions idx (B, nc, L);
    the first km of each row are members (values scaled by sigmoid of their score)."""
    B, n_pad, d = k.shape
    nc, L = idx.shape[1], idx.shape[-1]
    h, d_h = n_heads, d // n_heads
    flat = (idx + torch.arange(B, device=k.device).view(B, 1, 1) * n_pad).view(B * nc, L)
    sig = torch.sigmoid(s.gather(1, idx[..., :km].reshape(B, -1))).view(B * nc, km)
    rows = (B * n_pad, d)
    mk, mv = _GatherCouncil.apply(k.reshape(rows), v.reshape(rows), flat, sig.to(v.dtype))
    kh = mk.view(B * nc, L, h, d_h).transpose(1, 2)
    return kh, mv.view(B * nc, L, h, d_h).transpose(1, 2)


def split_council(
    q: Tensor, k: Tensor, v: Tensor, s: Tensor, members: tuple[Tensor, Tensor], n_heads: int
) -> Tensor:
    """The causal council as two attentions merged by their log-sum-exp: (B, n_pad, d).

    The members are gathered under a per-key validity bias of shape (B nc, 1, 1, k'); the local
    window is the chunk's own keys in place under plain causal attention."""
    mpos, mvalid = members
    B, n_pad, d = q.shape
    nc, km = mpos.shape[1], mpos.shape[-1]
    C, h, d_h = n_pad // nc, n_heads, d // n_heads
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
    """Slices of the G chunks with about SLICE_ELEMENTS member elements each."""
    step = max(1, SLICE_ELEMENTS // max(per_chunk, 1))
    return [slice(g, min(g + step, G)) for g in range(0, G, step)]


def _gather_members(k: Tensor, v: Tensor, flat: Tensor, sig: Tensor, h: int):
    """Members' keys and values (G, h, K, d_h) from (T, d) rows, values scaled by sig (G, K)."""
    (G, K), d = flat.shape, k.shape[1]
    rows = flat.reshape(-1)
    km = k.index_select(0, rows).view(G, K, h, d // h).transpose(1, 2)
    vm = v.index_select(0, rows).view(G, K, d).mul_(sig.unsqueeze(-1))
    return km, vm.view(G, K, h, d // h).transpose(1, 2)


def packed_council(
    q: Tensor, k: Tensor, v: Tensor, s: Tensor, members: tuple[Tensor, Tensor], n_heads: int
) -> Tensor:
    """The causal council as one softmax per chunk over [members, local window], computed
    slice by slice with batched GEMMs: (B, n_pad, d). q, k, v may be strided views. Half
    precision (or autocast) runs in fp32 and returns the input's dtype: the scores follow the
    working dtype, and a bf16 softmax would round them."""
    mpos, mvalid = members
    B, n_pad, _ = q.shape
    nc, km = mpos.shape[1], mpos.shape[-1]
    C = n_pad // nc
    local = torch.arange(n_pad, device=q.device).view(1, nc, C).expand(B, nc, C)
    idx = torch.cat((mpos, local), -1)  # (B, nc, k' + C): members first, then the chunk
    work = torch.promote_types(q.dtype, torch.float32)
    sig = torch.sigmoid(s.gather(1, mpos.reshape(B, -1))).view(B, nc, km).to(work)
    # without autograd (fwd and prefill cells) the probabilities are not kept: a slice-sized
    # scratch block serves instead of the (B, h, n, k' + C) buffer
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, s))
    with torch.autocast(q.device.type, enabled=False):
        q2, k2, v2 = (t.to(work) for t in (q, k, v))  # no copy when already `work`
        out = _PackedCouncil.apply(q2, k2, v2, idx, sig, mvalid, n_heads, keep)
    return out.to(q.dtype)


class _PackedCouncil(torch.autograd.Function):
    """One softmax over each chunk's members and its causal local window, as batched GEMMs.

    q, k, v (B, T, d), T = nc C (strided views are fine); idx (B, nc, L) key positions, the
    first K = L - C members, then the chunk's own C tokens; sig (B, nc, K) sigmoid of the
    members' scores (their values are scaled by it); valid (B, nc, K). Every valid member lies
    in a chunk before its reader (the causal selection guarantees it; the backward's order of
    writes relies on it, and an invalid slot adds exactly 0 wherever it points). Per slice of
    chunks, keys and values are gathered once (whole d-wide rows); per head (strided views of
    them): p = softmax(q k^T / sqrt(d_h) + bias), the bias built for the slice (-inf at
    invalid members and above the local diagonal), out = p v. Saved when autograd records
    (`keep`): the inputs and p itself, (B, h, T, L), so backward is four GEMMs and a softmax
    backward per block, with no recomputation; it regathers the slice's keys and values and
    scatters their gradients with one index_add each. Every row sees its own position, so no
    row is empty.
    """

    @staticmethod
    def forward(ctx, q, k, v, idx, sig, valid, n_heads, keep):  # type: ignore[override]
        B, T, d = q.shape
        nc, L = idx.shape[1:]
        C, K, d_h = T // nc, sig.shape[-1], d // n_heads
        scale = 1.0 / math.sqrt(d_h)
        out = q.new_empty(B, T, d)
        slices = _packed_slices(B, nc, C)
        if keep:
            probs = q.new_empty(B, n_heads, nc, C, L)
        else:  # one slice's block, reused: nothing is kept for a backward
            probs = q.new_empty(1, 1, max(g1 - g0 for _, g0, g1 in slices), C, L)
        for b, g0, g1 in slices:
            rows, g, t = idx[b, g0:g1].reshape(-1), g1 - g0, slice(g0 * C, g1 * C)
            kc = k[b].index_select(0, rows).view(g, L, d)
            vc = v[b].index_select(0, rows).view(g, L, d)
            vc[:, :K].mul_(sig[b, g0:g1].unsqueeze(-1))
            bias = _packed_bias(valid[b, g0:g1], C, q.dtype)
            qs, os = q[b, t].unflatten(0, (g, C)), out[b, t].unflatten(0, (g, C))
            for hd in range(n_heads):
                c = slice(hd * d_h, (hd + 1) * d_h)
                score = torch.baddbmm(bias, qs[..., c], kc[..., c].transpose(1, 2), alpha=scale)
                p = probs[b, hd, g0:g1] if keep else probs[0, 0, : g1 - g0]
                torch.ops.aten._softmax.out(score, -1, False, out=p)
                os[..., c] = torch.bmm(p, vc[..., c])
        if keep:
            ctx.save_for_backward(q, k, v, idx, sig, probs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):  # type: ignore[override]
        q, k, v, idx, sig, probs = ctx.saved_tensors
        B, T, d = q.shape
        n_heads = probs.shape[1]
        nc, L = idx.shape[1:]
        C, K, d_h = T // nc, sig.shape[-1], d // n_heads
        scale = 1.0 / math.sqrt(d_h)
        # every token row is its slice's local window, assigned before any member gradient
        # lands on it (members lie in earlier chunks, so in this slice or an earlier one): no
        # zero-filled buffers
        d_q, d_k, d_v = (torch.empty_like(d_out) for _ in range(3))
        d_sig = torch.empty_like(sig)
        for b, g0, g1 in _packed_slices(B, nc, C):
            rows, g, t = idx[b, g0:g1].reshape(-1), g1 - g0, slice(g0 * C, g1 * C)
            kc = k[b].index_select(0, rows).view(g, L, d)
            v_raw = v[b].index_select(0, rows).view(g, L, d)
            vc = v_raw.clone()
            vc[:, :K].mul_(sig[b, g0:g1].unsqueeze(-1))
            qs, dos = q[b, t].unflatten(0, (g, C)), d_out[b, t].unflatten(0, (g, C))
            dqs = d_q[b, t].unflatten(0, (g, C))
            dkc, dvc = torch.empty_like(kc), torch.empty_like(vc)
            for hd in range(n_heads):
                c = slice(hd * d_h, (hd + 1) * d_h)
                p = probs[b, hd, g0:g1]
                dvc[..., c] = torch.bmm(p.transpose(1, 2), dos[..., c])
                dp = torch.bmm(dos[..., c], vc[..., c].transpose(1, 2))
                ds = torch._softmax_backward_data(dp, p, -1, p.dtype).mul_(scale)
                dqs[..., c] = torch.bmm(ds, kc[..., c])
                dkc[..., c] = torch.bmm(ds.transpose(1, 2), qs[..., c])
            # the values were scaled by sig: d sig = <dV, v>, d v = sig dV (members only)
            d_sig[b, g0:g1] = (dvc[:, :K] * v_raw[:, :K]).sum(-1)
            dvc[:, :K].mul_(sig[b, g0:g1].unsqueeze(-1))
            d_k[b, t] = dkc[:, K:].reshape(g * C, d)  # the local rows first, then the members
            d_v[b, t] = dvc[:, K:].reshape(g * C, d)
            members = idx[b, g0:g1, :K].reshape(-1)
            d_k[b].index_add_(0, members, dkc[:, :K].reshape(-1, d))
            d_v[b].index_add_(0, members, dvc[:, :K].reshape(-1, d))
        return d_q, d_k, d_v, None, d_sig, None, None, None


def _packed_slices(B: int, nc: int, C: int) -> list[tuple[int, int, int]]:
    """(batch row, first chunk, end chunk) slices of about PACKED_ROWS query rows."""
    step = max(1, PACKED_ROWS // C)
    return [(b, g, min(g + step, nc)) for b in range(B) for g in range(0, nc, step)]


def _packed_bias(valid: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    """(g, C, K + C) additive mask: -inf at invalid members and above the local diagonal."""
    g, K = valid.shape
    bias = torch.zeros(g, C, K + C, dtype=dtype, device=valid.device)
    bias[:, :, :K].masked_fill_(~valid.unsqueeze(1), float("-inf"))
    upper = torch.ones(C, C, dtype=torch.bool, device=valid.device).triu(1)
    bias[:, :, K:].masked_fill_(upper, float("-inf"))
    return bias
