"""MoBA: the fast path (chunked selection, tiled block attention) against the per-token loop
(outputs and every gradient, float64) on adversarial inputs (exact ties between block means,
n not a multiple of the block, more top blocks than there are, n < block, batch 2 of different
sequences), decoding against the forward, causality (and the global top-k leak it must
catch), the no-n x n promise, FLOPs and the state."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hubbench.errors import ConfigError
from hubbench.mixers.base import DecodeState, DecodingMixer
from hubbench.mixers.moba import MoBA, MoBAState, block_attention, moba_ref, select_blocks
from hubbench.mixers.moba import attend as moba_attend
from hubbench.mixers.moba import select as moba_select
from hubbench.verify.causality import check_mixer

D = 16


def _layer(block: int, top: int, *, rope: bool = True, causal: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return MoBA(D, 2, block=block, top_blocks=top, rope=rope, causal=causal).double()


def _x(B: int, n: int, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, n, D, dtype=torch.float64, generator=gen)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def _assert_matches_reference(m: MoBA, x: torch.Tensor) -> None:
    """Output and the gradients of x and every parameter, fast vs loop, relative 1e-10."""
    x = x.clone().requires_grad_()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    params = [x, *m.parameters()]
    y, y_ref = m(x), moba_ref(m, x)
    assert m.last_backend == "blocked"
    assert _rel(y, y_ref) <= 1e-10
    grads = torch.autograd.grad((y * w).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), params)
    for name, g, g_ref in zip(["x", *dict(m.named_parameters())], grads, grads_ref, strict=True):
        assert _rel(g, g_ref) <= 1e-10, name


@pytest.fixture
def small_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Selection in several query chunks and tiles of 3 queries: chunk seams and tile padding
    are exercised at test sizes."""
    monkeypatch.setattr(moba_select, "SELECT_WORK_ELEMS", 64)
    monkeypatch.setattr(moba_attend, "TILE", 3)
    monkeypatch.setattr(moba_attend, "ATTEND_WORK_ELEMS", 1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("n", "block", "top", "rope"),
    [
        (23, 4, 2, True),  # n not a multiple of the block; 5 complete blocks, 2 chosen
        (20, 4, 2, False),  # exactly five blocks
        (23, 3, 9, True),  # more top blocks than there are: every earlier block
        (3, 8, 2, True),  # n smaller than one block: own block only
        (1, 4, 3, True),  # a single token
        (13, 1, 3, True),  # block 1: each key its own block
        (17, 4, 0, False),  # top 0: block-local causal attention
    ],
)
def test_fast_path_matches_loop_outputs_and_gradients(
    n: int, block: int, top: int, rope: bool, causal: bool, small_work: None
) -> None:
    # batch 2, different sequences: a tile or a selection that mixed batch rows would show here
    _assert_matches_reference(_layer(block, top, rope=rope, causal=causal), _x(2, n))


def test_fast_path_matches_loop_with_default_work_sizes() -> None:
    _assert_matches_reference(_layer(5, 2), _x(2, 37, scale=3.0))


def test_chunks_of_several_blocks_and_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # own part: batch 2 x 2 heads x block 4 = 16 scores per query, so chunks of 12 queries
    # (3 blocks; n 27 has 7, the last chunk holds one); selected part: runs of 24 tiles of 2
    monkeypatch.setattr(moba_attend, "ATTEND_WORK_ELEMS", 12 * 16)
    monkeypatch.setattr(moba_attend, "TILE", 2)
    for causal in (True, False):
        _assert_matches_reference(_layer(4, 2, causal=causal), _x(2, 27))


def _tied_layer() -> MoBA:
    """Identity projections (no rope): q = k = v = x, so integer inputs make every key, block
    mean and score exact, and ties between block means are exact in every path."""
    m = MoBA(D, 2, block=4, top_blocks=1, rope=False).double()
    with torch.no_grad():
        m.qkv.weight.copy_(torch.eye(D, dtype=torch.float64).repeat(3, 1))
    return m


def _tied_input() -> torch.Tensor:
    """Blocks 0, 1 and 3 have the same mean but different tokens (so which one a query reads
    changes its output); block 2 and the tail are other integers. Sequence 1 has a zero token
    (a zero query: every score 0, all blocks tied)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 3, (2, 23, D), generator=gen).double()
    delta = torch.randint(-2, 3, (4, D), generator=gen).double()
    delta -= delta.mean(0)  # sums to zero over the block (multiples of 1/4: still exact)
    for s in range(2):
        x[s, 4:8] = x[s, 0:4] + delta
        x[s, 12:16] = x[s, 0:4] - delta.flip(0)
    x[1, 17] = 0.0
    return x


def test_exact_ties_between_block_means_go_to_the_lower_block() -> None:
    x = _tied_input()
    k = x.view(2, 23, 2, D // 2).transpose(1, 2)  # (B, h, n, d_h): keys are x, head-split
    means = k[:, :, :16].reshape(2, 2, 4, 4, D // 2).mean(3)
    assert torch.equal(means[:, :, 0], means[:, :, 1]) and torch.equal(
        means[:, :, 0], means[:, :, 3]
    )
    assert not torch.equal(x[:, 0:4], x[:, 4:8])
    sel = select_blocks(k, k, 4, 1)  # (B, h, n, 1)
    # queries of block 2 have candidates 0 and 1, tied: block 0 every time
    assert (sel[:, :, 8:12, 0] == 0).all()
    # the zero query (sequence 1, token 17): all four candidates score 0, block 0 wins
    assert (sel[1, :, 17, 0] == 0).all()
    # choosing the later tied block instead would change the output: the rule matters
    other = torch.where(sel == 0, torch.ones_like(sel), sel)
    q = k.clone()
    assert not torch.allclose(block_attention(q, k, k, sel, 4), block_attention(q, k, k, other, 4))


def test_exact_ties_fast_path_reference_and_decode_agree(small_work: None) -> None:
    m, x = _tied_layer(), _tied_input()
    _assert_matches_reference(m, x)
    m.eval()
    with torch.no_grad():
        full = m(x)
        state = m.empty_state(2, 23, x)
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(23)], 1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "block", "top"), [(29, 4, 2), (29, 3, 5), (7, 8, 3), (30, 5, 1)])
def test_token_by_token_and_prefill_then_decode_match_the_forward(
    n: int, block: int, top: int
) -> None:
    m, x = _layer(block, top).eval(), _x(2, n)
    with torch.no_grad():
        full = m(x)
        state = m.empty_state(2, 4, x)  # a small capacity: the cache and the means grow
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(n)], 1)
        assert m.last_backend == "kv-cache"
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in sorted({0, 1, block - 1, block, block + 1, 2 * block + 3, n - 1}):
            if p >= n:
                continue
            y, state = m.prefill(x[:, :p], n)
            assert y.shape == (2, p, D)
            rest = [m.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


def test_state_bytes_and_snapshot_restore() -> None:
    m, x = _layer(4, 2).eval(), _x(3, 20)
    kv = 2 * D * 8 * 3  # keys and values of one token, float64, batch 3
    mean = D * 8 * 3  # one block's mean keys
    with torch.no_grad():
        _, state = m.prefill(x[:, :3])
        assert state.nbytes() == 3 * kv
        _, state = m.prefill(x[:, :9], 20)
        assert state.nbytes() == 9 * kv + 2 * mean
        snap = state.snapshot()
        first = [m.step(x[:, t : t + 1], state) for t in range(9, 14)]  # completes block 2
        state.restore(snap)
        again = [m.step(x[:, t : t + 1], state) for t in range(9, 14)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("n", "block", "top"), [(23, 4, 2), (26, 5, 1), (20, 3, 9)])
def test_causal_moba_passes_every_causality_check(n: int, block: int, top: int) -> None:
    report = check_mixer(_layer(block, top), n=n, chunk=block, seeds=(0, 1))
    assert report.passed, report.summary()


def test_leaky_global_top_k_fails_with_its_first_leaking_pair() -> None:
    block = 4
    report = check_mixer(_layer(block, 2, causal=False), n=23, chunk=block, seeds=(0,))
    assert not report.passed
    for name in ("jacobian", "perturbation", "prefix"):
        assert not report[name].passed, name
    t, s = report["jacobian"].first_leak
    assert t == 0 and s >= block  # token 0 already reads a key of a later block
    with pytest.raises(ConfigError, match="causal=true"):
        _layer(block, 2, causal=False).prefill(_x(1, 3))


class _Shapes(TorchDispatchMode):
    """Records the largest tensor any op returns."""

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
    n, block, top, heads = 4096, 32, 3, 2
    torch.manual_seed(0)
    m = MoBA(D, heads, block=block, top_blocks=top)
    x = torch.randn(1, n, D, requires_grad=True)
    with _Shapes() as spy:
        m(x).sum().backward()
    # block scores (heads x n x n / block) or keys per query (heads x n x (top + 1) x block),
    # twice for tile padding; n x n would be 16.8M
    assert spy.largest <= 2 * heads * n * max(n // block, (top + 1) * block) < n * n / 4


def _visible(n: int, block: int, top: int) -> tuple[int, int]:
    """(candidate blocks, visible keys) summed over the queries, from the definition."""
    cand = keys = 0
    for t in range(n):
        c = t // block
        cand += c
        keys += t - c * block + 1 + min(top, c) * block
    return cand, keys


@pytest.mark.parametrize(("n", "block", "top"), [(1, 4, 2), (23, 4, 2), (40, 8, 9), (9, 1, 3)])
def test_flops_count_what_is_used_and_decode_sums_to_the_forward(
    n: int, block: int, top: int
) -> None:
    m = _layer(block, top)
    cand, keys = _visible(n, block, top)
    means = (n // block) * block * D
    assert m.analytic_flops(n) == 8 * n * D * D + means + 2 * D * cand + 4 * D * keys
    assert sum(m.decode_flops(t) for t in range(n)) == m.analytic_flops(n)


def test_is_a_decoding_mixer_with_its_flags() -> None:
    m = MoBA(D, 2, block=4)
    assert isinstance(m, DecodingMixer)
    assert m.causal is True and m.last_backend is None and m.aux_loss is None
    assert (m.block, m.top_blocks) == (4, 3) and MoBA(D, 2).block == 64
    assert not MoBA(D, 2, causal=False).causal
    assert isinstance(m.empty_state(2, 8, torch.zeros(1)), (DecodeState, MoBAState))


def test_bf16_autocast_computes_in_bf16() -> None:
    torch.manual_seed(0)
    m, x = MoBA(D, 2, block=4, top_blocks=2), torch.randn(2, 21, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        state = m.empty_state(2, 21, x)
    assert y.dtype == torch.bfloat16 and state.cache.k.dtype == torch.bfloat16
    assert state.means.dtype == torch.float32  # block means (the gate) kept in fp32
    assert torch.isfinite(y).all()


def test_the_gate_stays_fp32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 2, 200, 8, generator=gen).bfloat16() for _ in range(2))
    want = select_blocks(q, k, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = select_blocks(q, k, 4, 3)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block": 0}, "block must be an integer >= 1"),
        ({"top_blocks": -1}, "top_blocks must be an integer >= 0"),
        ({"block": 2.0}, "block"),
        ({"n_heads": 3}, "divisible"),
        ({"n_heads": 16}, "even head width"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MoBA(D, **{"n_heads": 2, **kwargs})
