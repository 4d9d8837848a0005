"""FLOPs as FlopCounterMode counts them, with the formulas hubbench.measure.flops adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hubbench.measure.flops import count_flops


def test_cpu_sdpa_is_counted_like_naive_attention() -> None:
    q = torch.randn(1, 2, 128, 16)  # (B, h, n, d_h)
    sdpa = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    naive = count_flops(lambda: torch.softmax(q @ q.transpose(-2, -1), -1) @ q)
    expected = 4 * 1 * 2 * 128 * 128 * 16  # QK^T and PV, full n x n: causality ignored
    assert sdpa == naive == expected


def test_cpu_sdpa_backward_is_counted() -> None:
    q = torch.randn(1, 2, 64, 16, requires_grad=True)

    def fwd_bwd() -> None:
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()

    forward = 4 * 2 * 64 * 64 * 16
    assert count_flops(fwd_bwd) == pytest.approx(forward * 3.5)  # torch: backward = 2.5 x fwd
