"""NSA: the blocked forward against the per-token reference (outputs, every gradient, the
selected blocks) on adversarial inputs (exact score ties, ragged n, n below one compressed
block, more top blocks than exist, several chunks), decoding against the forward, causality
(and the leaky control, caught through the compressed branch and through selection alone),
FLOPs against an independent count, no n x n tensor, autocast and config errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hubbench.errors import ConfigError
from hubbench.mixers.base import DecodingMixer
from hubbench.mixers.nsa import NSA, NSAState, blocked, layer, nsa_ref, nsa_ref_selection
from hubbench.verify.causality import check_mixer

D = 16
SMALL = {"cmp_block": 4, "cmp_stride": 2, "block": 8, "top_blocks": 2, "window": 8}


def _make(seed: int = 0, **kw) -> NSA:
    torch.manual_seed(seed)
    return NSA(D, 2, **{**SMALL, **kw}).double()


def _x(B: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor | None, b: torch.Tensor | None, floor: float = 0.0) -> float:
    """max |a - b| / max(max |b|, floor). The floor is for gradients that are zero by symmetry
    (a bias added to every compressed key without rope shifts no softmax): rounding noise on
    both sides, ~1e-17, with no relative error to speak of."""
    a = torch.zeros(()) if a is None else a.detach()
    b = torch.zeros(()) if b is None else b.detach()
    if not b.numel():
        return 0.0
    return float((a - b).abs().max()) / max(float(b.abs().max()), floor, 1e-300)


def _assert_matches_reference(m: NSA, x: torch.Tensor) -> None:
    """Outputs and the gradients of the input and every parameter, float64, rel <= 1e-10."""
    x = x.clone().requires_grad_(True)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    names, leaves = zip(*[("x", x), *m.named_parameters()], strict=True)
    y, ref = m(x), nsa_ref(m, x)
    assert _rel(y, ref) <= 1e-10, f"outputs differ by {_rel(y, ref):.2e}"
    got = torch.autograd.grad((y * weight).sum(), leaves, allow_unused=True)
    want = torch.autograd.grad((ref * weight).sum(), leaves, allow_unused=True)
    floor = 1e-3 * max(float(r.abs().max()) for r in want if r is not None and r.numel())
    for name, g, r in zip(names, got, want, strict=True):
        err = _rel(g, r, floor)
        assert err <= 1e-10, f"gradient of {name} differs by {err:.2e}"
    sel = m._forward(x)[1]["sel"]
    fast = [[sorted(j for j in row.tolist() if j >= 0) for row in seq] for seq in sel]
    assert fast == nsa_ref_selection(m, x)


CASES = {
    "ragged n": ({}, 37),  # not a multiple of stride, cmp_block, block, the window unit
    "n below cmp_block": ({}, 3),  # no compressed token at all
    "n below block": ({}, 7),
    "top above available": ({"top_blocks": 10}, 29),
    "three selected": ({"top_blocks": 3}, 45),
    "stride 1, no rope": (
        {"cmp_block": 3, "cmp_stride": 1, "block": 6, "top_blocks": 3, "window": 5, "rope": False},
        31,
    ),
    "overlap 4x": ({"cmp_block": 8, "cmp_stride": 2, "block": 4, "top_blocks": 3}, 33),
    "leaky control": ({"causal": False, "top_blocks": 3}, 35),
}


@pytest.mark.parametrize("case", list(CASES))
def test_blocked_forward_matches_the_per_token_reference(case: str) -> None:
    kw, n = CASES[case]
    _assert_matches_reference(_make(**kw), _x(2, n))  # two different sequences


def test_matches_the_reference_across_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny chunks and window blocks: every chunk, window-unit and prefix boundary is crossed
    monkeypatch.setattr(blocked, "CHUNK_ELEMS", 200)
    monkeypatch.setattr(blocked, "PREFIX_ROWS", 8)
    monkeypatch.setattr(layer, "WINDOW_QBLOCK", 4)
    monkeypatch.setattr(layer, "CMP_QBLOCK", 4)
    _assert_matches_reference(_make(top_blocks=3, window=6), _x(2, 41))


def _selected(m: NSA, x: torch.Tensor) -> list[list[list[int]]]:
    sel = m._forward(x)[1]["sel"]
    return [[sorted(j for j in row.tolist() if j >= 0) for row in seq] for seq in sel]


def test_exact_score_ties_go_to_the_lower_block() -> None:
    # q = 0: every visible compressed token gets the same probability, so every selection
    # block that compressed blocks cover alike scores exactly the same (block i-1, only partly
    # covered, less). The ties must go to block 1, then 2, on every path.
    m = _make(top_blocks=4)
    with torch.no_grad():
        m.qkv.weight[:D] = 0
    x = _x(2, 53)
    want = [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]] + [[0, 1, 2, i] for i in range(4, 7)]
    assert _selected(m, x) == [want, want] == nsa_ref_selection(m, x)
    _assert_matches_reference(m, x)


def test_periodic_input_ties_between_identical_blocks() -> None:
    # rope off and x periodic with the block: the compressed tokens of equal phase are equal,
    # each block's first query is the same, so interior blocks tie exactly
    m = _make(top_blocks=3, rope=False)
    period = _x(1, 8)
    x = torch.cat([period.repeat(1, 6, 1), _x(1, 48, seed=3)])
    chosen = _selected(m, x)
    assert all(row == [0, 1, i] for i, row in enumerate(chosen[0]) if i >= 3)
    _assert_matches_reference(m, x)


def test_gradients_reach_every_parameter() -> None:
    m, x = _make(top_blocks=3), _x(2, 40).requires_grad_(True)
    m(x).square().mean().backward()
    for name, p in [*m.named_parameters(), ("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# -- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"top_blocks": 10}, {"top_blocks": 3, "rope": False}])
def test_token_by_token_and_prefill_then_decode_match_the_forward(kw: dict) -> None:
    n = 37
    m, x = _make(**kw).eval(), _x(2, n)
    with torch.no_grad():
        full = m(x)
        state = m.empty_state(2, n, x)
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(n)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 36):  # stride, block boundaries
            y, state = m.prefill(x[:, :p], n if p % 2 else 0)  # capacities: exact and growing
            rest = [m.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


def test_decode_matches_the_forward_on_exact_ties() -> None:
    m, x = _make(top_blocks=4).eval(), _x(2, 40)
    with torch.no_grad():
        m.qkv.weight[:D] = 0
        full = m(x)
        state = m.empty_state(2, 0, x)
        steps = torch.cat([m.step(x[:, t : t + 1], state) for t in range(40)], 1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


def test_empty_prompt_state_and_snapshot() -> None:
    m, x = _make().eval(), _x(2, 30)
    with torch.no_grad():
        y, state = m.prefill(x[:, :0], 30)
        assert y.shape == (2, 0, D) and isinstance(state, NSAState) and state.nbytes() > 0
        for t in range(13):
            m.step(x[:, t : t + 1], state)
        before = state.nbytes()
        snap = state.snapshot()
        runs = []
        for _ in range(3):
            state.restore(snap)
            runs.append(torch.cat([m.step(x[:, t : t + 1], state) for t in range(13, 30)], 1))
        assert state.nbytes() > before  # a KV cache: grows with the context
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    torch.testing.assert_close(runs[0], m(x)[:, 13:].detach(), rtol=0, atol=1e-12)


def test_protocol_flags_and_refusals() -> None:
    m = NSA(D, 2)
    assert isinstance(m, DecodingMixer) and m.causal and m.aux_loss is None
    assert m.last_backend is None
    m(torch.randn(1, 5, D))
    assert m.last_backend == "nsa:blocked"
    with pytest.raises(ConfigError, match="causal=true"):
        NSA(D, 2, causal=False).prefill(torch.zeros(1, 4, D))
    with pytest.raises(ConfigError, match=r"one token per sequence"):
        m.step(torch.zeros(1, 2, D), m.empty_state(1, 4, torch.zeros(1, 1, D)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cmp_stride": 3}, "must divide"),
        ({"block": 6, "cmp_stride": 4, "cmp_block": 8}, "must divide"),
        ({"top_blocks": 0}, "top_blocks must be a positive integer"),
        ({"window": True}, "window must be a positive integer"),
    ],
)
def test_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NSA(D, 2, **kw)
    with pytest.raises(ConfigError, match="divisible"):
        NSA(D, 3)


# -- causality ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [9, 26])  # within a block; across blocks, strides and windows
def test_check_mixer_passes(n: int) -> None:
    report = check_mixer(_make(top_blocks=3), n=n, chunk=8)
    assert report.passed, report.summary()


def test_the_leaky_control_fails_with_its_first_leaking_pair() -> None:
    report = check_mixer(_make(causal=False), n=20, seeds=(0,))
    assert not report.passed
    # compressed block 0 = tokens 0..3 is visible to t = 0 in the leaky control
    assert report["jacobian"].first_leak == (0, 1)
    assert report["perturbation"].first_leak[0] == 0 and not report["prefix"].passed


def test_the_leaky_control_also_leaks_through_selection_alone() -> None:
    # the compressed branch's gate closed (sigmoid(-1e4) == 0 exactly in float64): the only
    # way the future gets in is which blocks are selected, invisible to the Jacobian. Block 3
    # (t = 24) is the first with a choice (own 3, first 0, one of 1 and 2); its first query
    # sees compressed blocks that started by t = 24 and reach t = 27.
    m = _make(causal=False, top_blocks=3)
    with torch.no_grad():
        m.gate.bias[: m.n_heads] = -1e4
    report = check_mixer(m, n=32, times=range(31), checks=("jacobian", "perturbation"))
    assert report["jacobian"].passed
    assert report["perturbation"].first_leak[0] == 24
    causal = _make(top_blocks=3)
    causal.load_state_dict(m.state_dict())
    assert check_mixer(causal, n=32, times=range(31), checks=("perturbation",)).passed


# -- cost --------------------------------------------------------------------------------------


def _keys_by_definition(m: NSA, seq: int) -> int:
    """Keys all queries read, counted from the definitions (not the layer's formulas)."""
    l, s, b = m.cmp_block, m.cmp_stride, m.block
    starts = range(0, seq - l + 1, s)
    total = 0
    for t in range(seq):
        total += sum(1 for c in starts if (c + l - 1 if m.causal else c) <= t)
        i = t // b
        chosen = min(m.top_blocks, i + 1)  # blocks read: own (partly, up to t) + chosen - 1
        total += (chosen - 1) * b + (t - i * b + 1)
        total += min(m.window, t + 1)
    return total


@pytest.mark.parametrize("kw", [{}, {"top_blocks": 10}, {"causal": False}, {"window": 3}])
def test_flops_count_the_keys_each_branch_reads(kw: dict) -> None:
    m = _make(**kw)
    d, h, dh, l = D, 2, D // 2, m.cmp_block
    for seq in (1, 3, 8, 29, 64):
        nc = max(0, (seq - l) // m.cmp_stride + 1)
        fixed = 2 * seq * d * (4 * d + 3 * h) + 6 * seq * d + nc * h * 4 * (l * dh * dh + dh * dh)
        keys = _keys_by_definition(m, seq)
        seen = [c + l - 1 if m.causal else c for c in range(0, seq - l + 1, m.cmp_stride)]
        first = [sum(1 for f in seen if f <= t) for t in range(0, seq, m.block)]
        assert m.analytic_flops(seq) == fixed + 4 * d * keys + 2 * d * sum(first)
        if m.causal:  # one decoded token at a time adds up to the forward
            assert sum(m.decode_flops(t) for t in range(seq)) == m.analytic_flops(seq)


class _LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_grows_as_n_squared(monkeypatch: pytest.MonkeyPatch) -> None:
    # defaults (window 512, 16 blocks of 64) at n = 4096: every tensor of forward and backward
    # stays far below n^2 / 16 elements (the chunks hold at most CHUNK_ELEMS scores)
    monkeypatch.setattr(blocked, "CHUNK_ELEMS", 1 << 18)
    n = 4096
    torch.manual_seed(0)
    m = NSA(16, 2)
    x = torch.randn(1, n, 16, requires_grad=True)
    with _LargestTensor() as spy:
        m(x).sum().backward()
    assert spy.largest <= max(blocked.CHUNK_ELEMS, 64 * n) < n * n // 16


def test_bf16_autocast_runs_and_stays_close() -> None:
    torch.manual_seed(0)
    m, x = NSA(32, 2, **SMALL), torch.randn(2, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), m(x), rtol=0.1, atol=0.05)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = m.prefill(x)
    assert state.cache.k.dtype == state.tail.dtype == torch.bfloat16


def test_fp32_ranking_keeps_small_distinct_scores_apart() -> None:
    """rank_key rounds to significant bits, not to an absolute grid: on a 2^-16 grid 0.0040010
    and 0.0040050 tied and the lower block won (review of issue 32's NSA)."""
    from hubbench.mixers.ranking import rank_key

    s = torch.tensor([0.0040010, 0.0040050, 0.0040050], dtype=torch.float32)
    key = rank_key(s.clone())
    assert key[1] > key[0] and key[1] == key[2]  # distinct stay apart, equal stay tied
    assert float(rank_key(torch.tensor([1e-30], dtype=torch.float32))) > 0  # tiny, not zero
