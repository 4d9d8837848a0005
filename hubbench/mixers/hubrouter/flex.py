"""HubRouter's causal council as one block-sparse FlexAttention: no dense mask tensor.

Layout: one attention row per chunk (G = B nc rows). Row g's queries are chunk g's C tokens;
its keys and values are K member slots (the chunk's k' members padded up to a multiple of the
sparse block, values scaled by sigmoid of their score) followed by the chunk's own C tokens:

    keys of row g = [member slot 0 .. K-1 | local token 0 .. C-1]        (K + C keys)

`mask_mod` reads a (G, K) table of which member slots are valid and knows the causal local
window from the indices alone (local key j is visible to query i when j <= i). The BlockMask is
built from that table, not by evaluating `mask_mod` on a dense grid: a block of member slots
that are all invalid is skipped (early chunks, whose k' exceeds their past), one whose slots are
all valid is a full block (no mask evaluated), local blocks below the diagonal are full and the
diagonal one partial. Every query sees at least itself, so no row is fully masked.

Why one row per chunk rather than one flat sequence of all members then all tokens: eager
FlexAttention (the CPU path) ignores the block sparsity and materialises the whole score matrix,
which for a flat layout is quadratic in n; per chunk it is (C, K + C), the masked council's size.
On CUDA the compiled kernel visits only the listed blocks either way.

Devices: on CUDA, `torch.compile(flex_attention)` (Triton kernels, forward and backward) with
128-wide sparse blocks: the default H100/A100 kernel tiles are 128 and 64 wide, and the kernel
refuses a sparse block they do not divide. float64 on CUDA runs the eager reference below (the
Triton path is made for half and single precision; verify causal runs in float64). On CPU,
torch 2.13's public `flex_attention` refuses inputs that need a gradient ("FlexAttention does
not support backward on CPU", compiled or not), although its dense math reference (the
`flex_attention_hop` eager kernel and its backward) differentiates correctly; the CPU path
calls that reference directly. It is the correctness twin, not a fast
path: it builds the (G, h, C, K + C) scores and mask internally, as the public eager call does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention import flex_attention as _fa

from hubbench.mixers.hubrouter.council import _member_kv

# sparse block on CUDA: divisible by every default Triton tile of torch 2.13's flex kernels
CUDA_BLOCK = 128
# sparse block on CPU: eager FlexAttention ignores the blocks, so this only bounds the padding
# of member slots (at most CPU_BLOCK - 1 wasted keys per chunk)
CPU_BLOCK = 16

_compiled_flex: Callable[..., Tensor] | None = None
RECOMPILE_LIMIT = 64  # compiled flex graphs per process (dynamo's default is 8)


def flex_council_available(q: Tensor) -> bool:
    """Whether `flex_council` runs as a fused kernel here (CUDA with Triton); on CPU it runs
    the dense eager reference, correct but not fast."""
    return q.device.type == "cuda" and _has_triton()


def flex_council(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    s: Tensor,
    members: tuple[Tensor, Tensor],
    n_heads: int,
    block: int | None = None,
) -> Tensor:
    """The causal council as one FlexAttention over per-chunk rows: (B, n_pad, d).

    q, k, v (B, n_pad, d) with n_pad = nc C; s the scores (B, n_pad); members (positions,
    validity), each (B, nc, k'). `block` is the sparse block size (default CUDA_BLOCK on CUDA,
    CPU_BLOCK elsewhere); tests vary it to exercise skipped, full and partial blocks.
    """
    mpos, mvalid = members
    B, n_pad, d = q.shape
    nc, km = mpos.shape[1], mpos.shape[-1]
    C, h, d_h = n_pad // nc, n_heads, d // n_heads
    bs = block or (CUDA_BLOCK if q.device.type == "cuda" else CPU_BLOCK)
    K = -(-km // bs) * bs  # member slots, padded so the local window starts on a block
    if km != K:  # padding slots point at position 0 and are invalid
        mpos = torch.nn.functional.pad(mpos, (0, K - km))
        mvalid = torch.nn.functional.pad(mvalid, (0, K - km), value=False)
    local = torch.arange(n_pad, device=q.device).view(1, nc, C).expand(B, nc, C)
    idx = torch.cat((mpos, local), -1)  # (B, nc, K + C)
    kh, vh = _member_kv(k, v, s, idx, K, n_heads)  # (B nc, h, K + C, d_h)
    qh = q.reshape(B * nc, C, h, d_h).transpose(1, 2)  # (B nc, h, C, d_h)
    valid = mvalid.reshape(B * nc, K)
    block_mask = council_block_mask(valid, C, bs)
    out = _attend(qh, kh, vh, block_mask)  # (B nc, h, C, d_h)
    return out.transpose(1, 2).reshape(B, n_pad, d)


def council_mask_mod(valid: Tensor, C: int) -> Callable[..., Tensor]:
    """mask_mod for rows laid out as [K member slots | C local tokens]: a member slot is
    visible when valid[row, slot]; local token j is visible to query i when j <= i."""
    K = valid.shape[1]
    if K == 0:  # n <= C: no member slots, the causal local window alone

        def local_only(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return kv_idx <= q_idx

        return local_only

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        member = kv_idx < K
        slot_ok = valid[b, torch.clamp(kv_idx, max=K - 1)]
        return torch.where(member, slot_ok, kv_idx - K <= q_idx)

    return mask_mod


def council_block_mask(valid: Tensor, C: int, bs: int) -> _fa.BlockMask:
    """The BlockMask of per-chunk rows, from the (G, K) slot validity (K a multiple of bs).

    Per query block i: member blocks with some valid slot (full when all are valid), local
    blocks j < i full, j == i partial, j > i skipped."""
    G, K = valid.shape
    nq, nl, nm = -(-C // bs), -(-C // bs), K // bs
    dev = valid.device
    slots = valid.view(G, nm, bs)
    m_any, m_all = slots.any(-1), slots.all(-1)  # (G, nm)
    i = torch.arange(nq, device=dev).view(nq, 1)
    j = torch.arange(nl, device=dev).view(1, nl)
    l_part, l_full = (j == i).expand(G, nq, nl), (j < i).expand(G, nq, nl)
    partial = torch.cat(((m_any & ~m_all).unsqueeze(1).expand(G, nq, nm), l_part), -1)
    full = torch.cat((m_all.unsqueeze(1).expand(G, nq, nm), l_full), -1)  # (G, nq, nm + nl)
    num, ids = _ordered(partial)
    full_num, full_ids = _ordered(full)
    return _fa.BlockMask.from_kv_blocks(
        num.unsqueeze(1),
        ids.unsqueeze(1),
        full_num.unsqueeze(1),
        full_ids.unsqueeze(1),
        BLOCK_SIZE=(bs, bs),
        mask_mod=council_mask_mod(valid, C),
        seq_lengths=(C, K + C),
    )


def _ordered(table: Tensor) -> tuple[Tensor, Tensor]:
    """(G, nq, nkv) block table -> counts (G, nq) and indices (G, nq, nkv), listed blocks
    first in ascending order (the layout BlockMask expects), int32."""
    counts = table.sum(-1, dtype=torch.int32)
    ids = torch.argsort((~table).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts, ids.contiguous()


def _attend(qh: Tensor, kh: Tensor, vh: Tensor, block_mask: _fa.BlockMask) -> Tensor:
    """FlexAttention with the council's block mask: compiled on CUDA, the eager reference
    (called below the public entry, which refuses CPU gradients) elsewhere and for float64."""
    if qh.device.type == "cuda" and qh.dtype != torch.float64:
        return _run_compiled(qh, kh, vh, block_mask)
    kernel_options = _fa._apply_kernel_options(qh, kh, vh, False, None, None)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    out, _, _ = _fa.flex_attention_hop(
        qh, kh, vh, _identity_score, block_mask.as_tuple(), scale, kernel_options
    )
    return out


class _NeverRaised(Exception):
    """Caught where a torch without either limit exception would raise nothing to catch."""


def _run_compiled(qh: Tensor, kh: Tensor, vh: Tensor, block_mask: _fa.BlockMask) -> Tensor:
    """The compiled kernel. One compiled function serves every shape a worker meets: past
    dynamo's recompile limit it would fall back to eager FlexAttention (the whole score matrix)
    while the row still said flex-council; a higher limit here, and an error past it. Inside an
    outer torch.compile (a `compile=true` cell) the call is traced into the outer graph as it is
    (dynamo cannot trace a config patch: it would break the graph at every council)."""
    import torch._dynamo

    if torch.compiler.is_compiling():
        return _compiled()(qh, kh, vh, block_mask=block_mask)
    config = torch._dynamo.config
    # torch >= 2.6 names them recompile_limit / FailOnRecompileLimitHit, earlier cache_size_*
    new = hasattr(config, "fail_on_recompile_limit_hit")
    limits = (
        {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
        if new
        else {"cache_size_limit": RECOMPILE_LIMIT, "fail_on_cache_limit_hit": True}
    )
    hit = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None) or getattr(
        torch._dynamo.exc, "FailOnCacheLimitHit", _NeverRaised
    )
    try:
        with config.patch(**limits):
            return _compiled()(qh, kh, vh, block_mask=block_mask)
    except hit as exc:
        raise RuntimeError(
            f"flex council: torch.compile(flex_attention) recompiled {RECOMPILE_LIMIT} times "
            "in this process (one per new shape or chunk); refusing to run it eagerly under "
            "the flex council's name: measure fewer shapes per worker or --set council=masked"
        ) from exc


def _identity_score(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return score


def _compiled() -> Callable[..., Tensor]:
    """torch.compile(flex_attention), made once: compiling is what fuses it into one kernel."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(_fa.flex_attention)
    return _compiled_flex


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
