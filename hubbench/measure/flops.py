"""FLOPs per step from torch's FlopCounterMode (the peak they are divided by: measure.peaks).

What the counter counts (torch 2.13, checked): matmul-class ops only (mm, bmm, addmm, baddbmm,
convolutions, the CUDA SDPA kernels, flex attention), 2 FLOPs per multiply-add, forward and
backward as they dispatch. Elementwise work (softmax, norms, GELU, the Mamba scan's recurrence,
the optimizer) is not counted. Causal masking is ignored: a causal SDPA call counts the full
n x n score matrix, which is what naive attention really executes and about twice what a
causal flash kernel executes. The causal-aware estimate is `model.flops_analytic` (recorded
beside it; MFU uses the analytic count, the model FLOPs of the PaLM definition).

Torch registers no formula for the CPU SDPA kernel
(`aten._scaled_dot_product_flash_attention_for_cpu` and its backward): without the formulas
below a CPU `sdpa` model would count zero attention FLOPs while `naive` counts its bmm's.
flash-attn's ops (`torch.ops.flash_attn.*`, flash-attn >= 2.6) get formulas when the package is
loaded. mamba-ssm's fused scan is a pybind call that dispatches no aten op, so neither Mamba
implementation's scan is counted; its projections and conv are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_registered = False


def register_formulas() -> None:
    """Teach FlopCounterMode the ops it misses (idempotent)."""
    global _registered
    if _registered:
        return
    import torch
    from torch.utils import flop_counter as fc

    def register(op: Any, formula: Callable[..., int]) -> None:
        if op not in fc.flop_registry:
            fc.register_flop_formula(op)(formula)

    def cpu_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def cpu_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    register(aten._scaled_dot_product_flash_attention_for_cpu, cpu_fwd)
    register(aten._scaled_dot_product_flash_attention_for_cpu_backward, cpu_bwd)
    _register_flash_attn(register, fc)
    _registered = True


def _register_flash_attn(register: Callable, fc: Any) -> None:
    """flash-attn keeps (B, n, h, d) layouts; torch's helpers want (B, h, n, d)."""
    import torch

    try:
        ns = torch.ops.flash_attn
        fwd, bwd = ns._flash_attn_forward, ns._flash_attn_backward
    except (AttributeError, RuntimeError):
        return

    def bhnd(shape: Any) -> tuple[int, ...]:
        b, n, h, d = shape
        return (b, h, n, d)

    def flash_fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(bhnd(q), bhnd(k), bhnd(v))

    def flash_bwd(dout, q, k, v, *args, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(bhnd(dout), bhnd(q), bhnd(k), bhnd(v))

    register(fwd, flash_fwd)
    register(bwd, flash_bwd)


def count_flops(fn: Callable[[], None]) -> float:
    """Run `fn` once under FlopCounterMode and return the FLOPs it dispatched."""
    from torch.utils.flop_counter import FlopCounterMode

    register_formulas()
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def prime() -> None:
    """Count a tiny step once, so the ~800 modules and ~60 MB that the first FlopCounterMode run
    loads are the worker's start-up cost, not the first cell's time and memory."""
    import torch

    lin = torch.nn.Linear(8, 8)
    x = torch.randn(1, 2, 4, 8, requires_grad=True)  # (B, h, n, d_h)

    def tiny() -> None:
        y = torch.nn.functional.scaled_dot_product_attention(lin(x), x, x, is_causal=True)
        y.sum().backward()

    count_flops(tiny)
