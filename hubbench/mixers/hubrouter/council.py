"""HubRouter's council: each chunk's queries attend to its members (+ the causal local window).

Two implementations of the same softmax over the same keys:
- `masked_council`, the reference: members and (causal) the chunk's own tokens gathered into
  one key list, one attention under a mask (dense causally: (B nc, 1, C, k' + C));
- `split_council`, causal only, the default where the CPU flash kernel exists: two attentions
  (the gathered members under a per-key validity bias, the chunk's own keys in place under plain
  causal attention) merged by their log-sum-exp; no dense mask, no copy of the local keys.
Each is served by a hand-written autograd Function (`_GatherCouncil`, `_SplitCouncil`) that keeps
the gathered copies and their gradients small. Members are given as (positions, validity), each
(B, nc, k'); q, k, v are (B, n_pad, d) with n_pad = nc C; s the scores (B, n_pad).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# members gathered per slice of chunks: about this many elements of keys (and of values), so
# the gathered copies and their gradients stay a few MiB instead of (B nc, k', d) at once
SLICE_ELEMENTS = 1 << 18


def split_council_available(q: Tensor) -> bool:
    """Whether `split_council` can run here: it calls the CPU flash-attention kernel directly,
    which returns the log-sum-exp the merge needs (the public SDPA does not)."""
    return q.device.type == "cpu" and hasattr(
        torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"
    )


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
