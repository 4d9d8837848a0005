"""The attention mode's runs of queries over one shared key/value tensor.

A run [a, b) of attention-mode queries (inside one chunk) reads keys 0..end-1 of the whole
sequence: end = b with the causal mask j <= t (or plain `is_causal` when a = 0), or the end of
the chunk unmasked in the leaky control. Every run slices the same keys and values.

Through public SDPA, autograd turns the gradient of each slice keys[:, :, :end] into a
full-length zero-filled tensor before adding it: with 16 runs at n = 16k that was about a fifth
of the attention's time. On CPU `_Runs` calls the flash kernel's forward and backward ops
directly and adds each run's key and value gradients into one buffer in place; it keeps the
outputs and log-sum-exps (not the masks, rebuilt in backward). Elsewhere (CUDA, or a torch
without those ops) the runs go through `F.scaled_dot_product_attention` one by one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hubbench.mixers.attention import _KernelSpy

_OPS = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_OPS_BACKWARD = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None
)
CPU_KERNEL = "sdpa:flash-cpu"


class Run(NamedTuple):
    """Queries a..b-1 over keys 0..end-1. kind: "mask" (causal, j <= t, for a > 0), "causal"
    (a = 0 and end = b: SDPA's own square causal mask, nothing materialised) or "none" (every
    key: the leaky control)."""

    a: int
    b: int
    end: int
    kind: str


def _mask(run: Run, like: Tensor) -> Tensor | None:
    """The additive mask of a "mask" run, (b - a, end) in like's dtype: 0 where key j <= the
    query's position, -inf after (C x t, never n x n); None for the other kinds."""
    if run.kind != "mask":
        return None
    pos = torch.arange(run.end, device=like.device)
    hidden = pos[None] > pos[run.a : run.b, None]
    return torch.zeros(hidden.shape, dtype=like.dtype, device=like.device).masked_fill_(
        hidden, float("-inf")
    )


class _Runs(torch.autograd.Function):
    """All runs of a forward on CPU's flash kernel, gradients accumulated in place."""

    @staticmethod
    def forward(ctx, keys: Tensor, values: Tensor, runs: list[Run], *qs: Tensor):  # type: ignore[override]
        outs, lses = [], []
        with torch.autocast("cpu", enabled=False):
            for run, q in zip(runs, qs, strict=True):
                e = run.end
                out, lse = _OPS(q, keys[:, :, :e], values[:, :, :e], 0.0, run.kind == "causal",
                                attn_mask=_mask(run, q), scale=1.0)  # fmt: skip
                outs.append(out)
                lses.append(lse)
        ctx.runs = runs
        ctx.save_for_backward(keys, values, *qs, *outs, *lses)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *douts: Tensor):  # type: ignore[override]
        keys, values, *rest = ctx.saved_tensors
        m = len(ctx.runs)
        qs, outs, lses = rest[:m], rest[m : 2 * m], rest[2 * m :]
        dk, dv, dqs = torch.zeros_like(keys), torch.zeros_like(values), []
        with torch.autocast("cpu", enabled=False):
            for i, run in enumerate(ctx.runs):
                e = run.end
                dq, gk, gv = _OPS_BACKWARD(
                    douts[i].contiguous(), qs[i], keys[:, :, :e], values[:, :, :e], outs[i],
                    lses[i], 0.0, run.kind == "causal", attn_mask=_mask(run, qs[i]), scale=1.0,
                )  # fmt: skip
                dk[:, :, :e] += gk
                dv[:, :, :e] += gv
                dqs.append(dq)
        return (dk, dv, None, *dqs)


def attend_runs(
    qs: list[Tensor], keys: Tensor, values: Tensor, runs: list[Run], spy: bool
) -> tuple[list[Tensor], str | None]:
    """Each run's attention: qs[i] (B, H, b - a, D) with the temperature folded in (scale 1);
    keys and values (B, H, n, D) of one width and dtype. Returns the outputs (B, H, b - a, D)
    and, when `spy`, the kernel that ran (else None)."""
    if keys.device.type == "cpu" and _OPS is not None and _OPS_BACKWARD is not None:
        return list(_Runs.apply(keys, values, runs, *qs)), (CPU_KERNEL if spy else None)
    outs, kernel = [], None
    for run, q in zip(runs, qs, strict=True):
        args = (q, keys[:, :, : run.end], values[:, :, : run.end])
        kw = {"attn_mask": _mask(run, q), "is_causal": run.kind == "causal", "scale": 1.0}
        if spy and kernel is None:
            watch = _KernelSpy()
            with watch:
                outs.append(F.scaled_dot_product_attention(*args, **kw))
            kernel = watch.kernel or "sdpa:math"
        else:
            outs.append(F.scaled_dot_product_attention(*args, **kw))
    return outs, kernel
