"""The multi-head frame that swa and moba share (hubbench.mixers.heads): split, rotary, merge,
checked against a complex-number rotation written here, and the checks both mixers now make."""

from __future__ import annotations

import pytest
import torch

from hubbench.errors import ConfigError
from hubbench.mixers.heads import RotaryHeads
from hubbench.mixers.moba import MoBA
from hubbench.mixers.swa import SlidingWindow

D, H = 24, 3  # head width 8


def _frame(rope: bool = True) -> RotaryHeads:
    torch.manual_seed(0)
    m = RotaryHeads()
    m._init_heads("test", D, H, rope)
    return m.double()


def _rotate_complex(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Channel i and i + d_h/2 as one complex number, turned by pos * 10000^(-i / (d_h/2))."""
    half = t.shape[-1] // 2
    z = torch.complex(t[..., :half], t[..., half:])
    freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    z = z * torch.polar(torch.ones_like(freq), pos.double()[:, None] * freq)
    return torch.cat((z.real, z.imag), dim=-1)


@pytest.mark.parametrize("rope", [True, False])
def test_heads_match_per_head_projections(rope: bool) -> None:
    m = _frame(rope)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    start = 5
    q, k, v = m._heads(x, start)
    assert q.shape == (2, H, 7, D // H)
    w = m.qkv.weight
    pos = torch.arange(start, start + 7)
    for j in range(H):
        rows = slice(j * (D // H), (j + 1) * (D // H))
        want_q = x @ w[:D][rows].T
        want_k = x @ w[D : 2 * D][rows].T
        if rope:
            want_q, want_k = _rotate_complex(want_q, pos), _rotate_complex(want_k, pos)
        torch.testing.assert_close(q[:, j], want_q, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(k[:, j], want_k, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(v[:, j], x @ w[2 * D :][rows].T)


def test_a_later_start_rotates_as_the_whole_sequence_did() -> None:
    """What decode relies on: the heads of x[:, s:] at start s are those of x at their places."""
    m = _frame()
    x = torch.randn(1, 9, D, dtype=torch.float64)
    whole = m._heads(x, 0)
    tail = m._heads(x[:, 4:], 4)
    for a, b in zip(whole, tail, strict=True):
        torch.testing.assert_close(a[:, :, 4:], b)


def test_merge_inverts_the_split_before_the_output_projection() -> None:
    m = _frame(rope=False)
    with torch.no_grad():
        m.out.weight.copy_(torch.eye(D, dtype=torch.float64))
    x = torch.randn(2, 5, D, dtype=torch.float64)
    _, _, v = m._heads(x, 0)
    torch.testing.assert_close(m._merge(v), x @ m.qkv.weight[2 * D :].T)


@pytest.mark.parametrize("mixer", [SlidingWindow, MoBA])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"n_heads": True}, "n_heads must be a positive integer"),
        ({"n_heads": 5}, "divisible"),
        ({"n_heads": 24}, "even head width"),
    ],
)
def test_both_mixers_check_their_heads(mixer: type, kwargs: dict, match: str) -> None:
    name = "swa" if mixer is SlidingWindow else "moba"
    with pytest.raises(ConfigError, match=f"^{name}: .*{match}"):
        mixer(**{"d_model": D, "n_heads": H, **kwargs})
    assert mixer(D, 24, rope=False).d_head == 1  # odd widths are fine without rotary
