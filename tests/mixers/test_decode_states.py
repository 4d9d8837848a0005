"""Each mixer's incremental path (prefill, step) against its parallel forward, and its state.

float64, eval mode: every position, chunk boundaries (C-1, C, C+1), lengths that are not a
multiple of C, prompts longer than Mamba's scan chunk, and batch independence.
"""

from __future__ import annotations

import pytest
import torch

from hubbench.errors import ConfigError
from hubbench.mixers.attention import Attention, KVCache
from hubbench.mixers.hubrouter import HubRouter, HubState
from hubbench.mixers.mamba import Mamba, MambaState

D = 16


def _hub(**kw) -> HubRouter:
    base = {"hubs": 4, "topk": 4, "neighbours": 1, "chunk": 8, "rope": True}
    return HubRouter(D, 2, **{**base, **kw})


MIXERS = {
    "attention-sdpa": lambda: Attention(D, 2, rope=True),
    "attention-naive": lambda: Attention(D, 2, backend="naive", rope=False),
    "mamba": lambda: Mamba(D, d_state=4, d_conv=4),
    "mamba-conv1": lambda: Mamba(D, d_state=4, d_conv=1),
    "hub": _hub,
    "hub-r2-c5": lambda: _hub(topk=3, neighbours=2, chunk=5, rope=False),
    "hub-r0": lambda: _hub(neighbours=0),
    "hub-k-over-c": lambda: _hub(topk=12, neighbours=3, chunk=4),
}


def _prepared(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MIXERS[name]().double().eval()


def _x(B: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MIXERS))
def test_token_by_token_and_prefill_then_decode_match_the_forward(name: str) -> None:
    n = 29  # not a multiple of any chunk below
    mod, x = _prepared(name), _x(2, n)
    with torch.no_grad():
        full = mod(x)
        state = mod.empty_state(2, n, x)
        steps = torch.cat([mod.step(x[:, t : t + 1], state) for t in range(n)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (1, 4, 5, 7, 8, 9, 17, 28):  # boundaries of chunks 4, 5 and 8
            y, state = mod.prefill(x[:, :p], n)
            rest = [mod.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(MIXERS))
def test_an_empty_prompt_prefills_to_a_state_that_decodes_as_the_forward(name: str) -> None:
    mod, x = _prepared(name), _x(2, 13)
    with torch.no_grad():
        full = mod(x)
        y, state = mod.prefill(x[:, :0], 13)
        assert y.shape == (2, 0, D)
        steps = torch.cat([mod.step(x[:, t : t + 1], state) for t in range(13)], 1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)


def test_mamba_prefill_longer_than_a_scan_chunk_carries_the_state() -> None:
    mod, x = _prepared("mamba"), _x(1, 150)  # the scan runs in chunks of 64 tokens
    with torch.no_grad():
        full = mod(x)
        y, state = mod.prefill(x[:, :131], 150)
        rest = [mod.step(x[:, t : t + 1], state) for t in range(131, 150)]
    torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["attention-sdpa", "mamba", "hub"])
def test_one_sequence_decodes_the_same_alone_and_in_a_batch(name: str) -> None:
    mod, x = _prepared(name), _x(3, 29)
    with torch.no_grad():
        _, both = mod.prefill(x[:, :11], 29)
        _, alone = mod.prefill(x[:1, :11], 29)
        other = x.clone()
        other[1:, 11:] = _x(2, 18, seed=7)  # the other sequences change after the prompt
        for t in range(11, 29):
            batched = mod.step(other[:, t : t + 1], both)
            single = mod.step(x[:1, t : t + 1], alone)
            torch.testing.assert_close(batched[:1], single, rtol=0, atol=1e-12)


def test_state_types_shapes_and_dtypes() -> None:
    x = torch.zeros(2, 10, D)
    attn, mamba, hub = Attention(D, 2), Mamba(D, d_state=4, d_conv=4), _hub()
    _, kv = attn.prefill(x, 12)
    assert isinstance(kv, KVCache) and kv.length == 10 and kv.k.shape == (2, 2, 12, D // 2)
    _, ms = mamba.prefill(x)
    assert isinstance(ms, MambaState)
    assert ms.conv.shape == (2, 2 * D, 3) and ms.ssm.shape == (2, 2 * D, 4)
    assert ms.conv.dtype == torch.float32 and ms.ssm.dtype == torch.float32
    _, hs = hub.prefill(x)
    assert isinstance(hs, HubState) and hs.pos == 10
    assert hs.slot_k.shape == (2, 4 * 2, D) and hs.buf_k.shape == (2, 8, D)
    assert hs.m.shape == (2, 2 * 4) and hs.o.shape == (2, 2 * 4, D // 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, hb = hub.prefill(x.bfloat16())
    assert hb.m.dtype == torch.float32  # hub statistics stay in fp32 under bf16


def test_kv_cache_grows_linearly_and_past_its_capacity() -> None:
    attn, x = Attention(D, 2).eval(), torch.randn(1, 40, D)
    with torch.no_grad():
        _, cache = attn.prefill(x[:, :10], capacity=10)
        per_token = cache.nbytes() // 10
        for t in range(10, 40):  # beyond the preallocated 10: grows by doubling
            attn.step(x[:, t : t + 1], cache)
    assert cache.length == 40 and cache.nbytes() == 40 * per_token
    assert per_token == 2 * D * 4  # keys and values, fp32


@pytest.mark.parametrize("name", ["mamba", "hub"])
def test_recurrent_states_do_not_grow_with_context(name: str) -> None:
    mod = _prepared(name)
    sizes = []
    with torch.no_grad():
        for n in (9, 40, 200):
            sizes.append(mod.prefill(_x(1, n), n)[1].nbytes())
    assert len(set(sizes)) == 1 and sizes[0] > 0


@pytest.mark.parametrize("name", ["attention-sdpa", "mamba", "hub"])
def test_restore_returns_to_the_snapshot_every_time(name: str) -> None:
    mod, x = _prepared(name), _x(1, 30)
    with torch.no_grad():
        _, state = mod.prefill(x[:, :13], 30)
        snap = state.snapshot()
        runs = []
        for _ in range(3):  # a restore that aliased the snapshot would go wrong on the 2nd one
            state.restore(snap)
            runs.append(torch.cat([mod.step(x[:, t : t + 1], state) for t in range(13, 30)], 1))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_states_hold_the_compute_dtype_under_autocast() -> None:
    x = torch.randn(2, 20, D)
    attn, mamba, hub = Attention(D, 2), Mamba(D, d_state=4), _hub()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, kv = attn.prefill(x, 24)
        _, ms = mamba.prefill(x)
        _, hs = hub.prefill(x)
        before = hs.nbytes()
        for t in range(12):  # past a chunk boundary
            hub.step(x[:, t : t + 1], hs)
            attn.step(x[:, t : t + 1], kv)
    assert kv.k.dtype == kv.v.dtype == torch.bfloat16  # not an fp32 cache cast every step
    assert ms.conv.dtype == torch.bfloat16 and ms.ssm.dtype == torch.float32
    assert {hs.slot_k.dtype, hs.slot_v.dtype, hs.buf_k.dtype, hs.buf_v.dtype} == {torch.bfloat16}
    assert hs.m.dtype == hs.buf_s.dtype == torch.float32
    assert hs.nbytes() == before  # the same bytes, whatever the chunk boundaries did


def test_a_step_takes_one_token() -> None:
    with pytest.raises(ConfigError, match=r"one token per sequence, shape \(B, 1, 16\)"):
        _hub().step(torch.zeros(1, 2, D), _hub().empty_state(1, 4, torch.zeros(1, 1, D)))


def test_non_causal_mixers_refuse_to_decode() -> None:
    with pytest.raises(ConfigError, match="causal=true"):
        _hub(causal=False).prefill(torch.zeros(1, 4, D))
    with pytest.raises(ConfigError, match="causal=true"):
        Attention(D, 2, causal=False).prefill(torch.zeros(1, 4, D))


def test_decode_flops_are_constant_for_hubs_and_grow_for_attention() -> None:
    hub, attn = _hub(), Attention(D, 2)
    assert hub.decode_flops(100) == hub.decode_flops(10_000) > 0
    grown = attn.decode_flops(2_000) - attn.decode_flops(1_000)
    assert grown == 2 * 2 * 1_000 * D  # QK^T and AV over 1000 more keys
