"""Sliding-window attention: the blocked forward against the per-token loop (outputs and every
gradient, float64), decoding against the forward, causality (and the band bug it must catch),
the no-n x n promise, FLOPs and the state's bytes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hubbench.errors import ConfigError
from hubbench.mixers.base import DecodeState, DecodingMixer
from hubbench.mixers.swa import SlidingWindow, WindowState, swa_ref
from hubbench.verify.causality import check_mixer

D = 16


def _layer(window: int, *, heads: int = 2, rope: bool = True, causal: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return SlidingWindow(D, heads, window=window, rope=rope, causal=causal).double()


def _x(B: int, n: int, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, n, D, dtype=torch.float64, generator=gen)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def _assert_matches_reference(m: SlidingWindow, x: torch.Tensor) -> None:
    """Output and the gradients of x and every parameter, blocked vs loop, relative 1e-10."""
    x = x.clone().requires_grad_()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    params = [x, *m.parameters()]
    y, y_ref = m(x), swa_ref(m, x)
    # a sequence the window covers runs as plain causal attention (no padding to a window)
    assert m.last_backend == ("sdpa" if x.shape[1] <= m.window else "blocked-sdpa")
    assert _rel(y, y_ref) <= 1e-10
    grads = torch.autograd.grad((y * w).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), params)
    for name, g, g_ref in zip(["x", *dict(m.named_parameters())], grads, grads_ref, strict=True):
        assert _rel(g, g_ref) <= 1e-10, name


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("n", "window", "rope"),
    [
        (23, 5, True),  # n not a multiple of the window, several blocks
        (20, 5, False),  # exactly four blocks
        (3, 8, True),  # n smaller than one window
        (9, 9, True),  # one whole block
        (1, 4, True),  # a single token
        (11, 1, True),  # every token sees only itself
        (17, 40, False),  # window longer than the sequence: full causal attention
    ],
)
def test_blocked_matches_loop_outputs_and_gradients(
    n: int, window: int, rope: bool, causal: bool
) -> None:
    # batch 2, different sequences: a block that mixed batch rows would show here
    _assert_matches_reference(_layer(window, rope=rope, causal=causal), _x(2, n))


def test_blocked_matches_loop_on_adversarial_inputs() -> None:
    m = _layer(4)
    x = _x(2, 19, scale=30.0)  # large scores: the softmax saturates to one key
    x[1, 8:12] = x[1, 4:8]  # repeated tokens: identical keys at different positions
    x[0, 5] = 0.0  # a zero query and key
    _assert_matches_reference(m, x)


def test_window_longer_than_the_sequence_is_causal_attention() -> None:
    from hubbench.mixers.attention import Attention

    m = _layer(64)
    full = Attention(D, 2, rope=True, backend="naive").double()
    full.load_state_dict(m.state_dict())
    x = _x(2, 30)
    torch.testing.assert_close(m(x), full(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "window"), [(29, 5), (29, 8), (7, 16)])
def test_token_by_token_and_prefill_then_decode_match_the_forward(n: int, window: int) -> None:
    m, x = _layer(window).eval(), _x(2, n)
    with torch.no_grad():
        full = m(x)
        state = m.empty_state(2, n, x)
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(n)], 1)
        assert m.last_backend == "ring"
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (0, 1, window - 1, window, window + 1, 2 * window + 3, n - 1):
            if p >= n:
                continue
            y, state = m.prefill(x[:, :p], n)
            assert y.shape == (2, p, D)
            rest = [m.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


def test_state_bytes_stop_growing_at_the_window_and_snapshot_restores() -> None:
    m, x = _layer(4).eval(), _x(3, 20)
    per_token = 2 * 2 * (D // 2) * 8 * 3  # k and v, heads x d_h float64, batch 3
    with torch.no_grad():
        _, state = m.prefill(x[:, :2])
        assert state.nbytes() == 2 * per_token
        _, state = m.prefill(x[:, :4])
        assert state.nbytes() == 4 * per_token
        _, state = m.prefill(x[:, :17])
        assert state.nbytes() == 4 * per_token  # the ring: constant from the window on
        snap = state.snapshot()
        first = m.step(x[:, 17:18], state)
        m.step(x[:, 18:19], state)
        state.restore(snap)
        torch.testing.assert_close(m.step(x[:, 17:18], state), first, rtol=0, atol=0)


@pytest.mark.parametrize(("n", "window"), [(23, 5), (32, 8), (6, 8)])
def test_causal_window_passes_every_causality_check(n: int, window: int) -> None:
    report = check_mixer(_layer(window), n=n, chunk=window, seeds=(0, 1))
    assert report.passed, report.summary()


def test_leaky_band_fails_with_its_first_leaking_pair() -> None:
    window = 5
    report = check_mixer(_layer(window, causal=False), n=23, chunk=window, seeds=(0,))
    assert not report.passed
    for name in ("jacobian", "perturbation", "prefix"):
        assert not report[name].passed, name
    # token 0 already reads token 1 (the band reaches window - 1 keys ahead)
    assert report["jacobian"].first_leak == (0, 1)
    with pytest.raises(ConfigError, match="causal=true"):
        _layer(window, causal=False).prefill(_x(1, 3))


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_grows_like_n_squared() -> None:
    n, window, heads = 1000, 16, 2
    m = SlidingWindow(D, heads, window=window)
    x = torch.randn(1, n, D, requires_grad=True)
    with _Shapes() as spy:
        m(x).sum().backward()
    # scores: heads x n x 2 window (plus padding to a whole block); n x n would be 1e6
    assert spy.largest <= heads * (n + window) * 2 * window < n * n


def test_flops_count_the_visible_keys() -> None:
    for causal in (True, False):
        m = _layer(5, causal=causal)
        for n in (1, 4, 5, 6, 23):
            t, s = torch.arange(n).view(-1, 1), torch.arange(n)
            band = (t - s).abs() < 5 if not causal else (s <= t) & (s > t - 5)
            assert m.visible_keys(n) == int(band.sum())
            proj = 2 * n * D * 4 * D
            assert m.analytic_flops(n) == proj + 4 * D * int(band.sum())
    m = _layer(5)
    assert m.decode_flops(0) == 8 * D * D + 4 * D * 1
    assert m.decode_flops(100) == m.decode_flops(4) == 8 * D * D + 4 * D * 5


def test_is_a_decoding_mixer_with_its_flags() -> None:
    m = SlidingWindow(D, 2, window=4)
    assert isinstance(m, DecodingMixer)
    assert m.causal is True and m.last_backend is None and m.aux_loss is None
    assert not SlidingWindow(D, 2, causal=False).causal
    assert isinstance(m.empty_state(2, 8, torch.zeros(1)), (DecodeState, WindowState))


def test_bf16_autocast_computes_in_bf16() -> None:
    torch.manual_seed(0)
    m, x = SlidingWindow(D, 2, window=4), torch.randn(2, 13, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        state = m.empty_state(2, 13, x)
    assert y.dtype == torch.bfloat16 and state.k.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window must be a positive integer"),
        ({"window": 2.5}, "window"),
        ({"n_heads": 3}, "divisible"),
        ({"n_heads": 16}, "even head width"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SlidingWindow(D, **{"n_heads": 2, **kwargs})
