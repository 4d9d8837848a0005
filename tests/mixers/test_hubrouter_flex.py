"""The FlexAttention council (`council="flex"`) against the loop reference and the masked
council: outputs and every gradient in float64, the block tables against the mask they stand
for, and causality. On CPU FlexAttention runs its dense eager reference. The tests marked gpu
run the compiled kernel on the device named by HUBBENCH_TEST_DEVICE (else CUDA when there is
one, else they skip): `HUBBENCH_TEST_DEVICE=cuda pytest -q tests/mixers/test_hubrouter_flex.py`
(benchmarks/device_check.py runs exactly that); `HUBBENCH_TEST_DEVICE=cpu` runs them eagerly
here, as a smoke test of the tests."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn.attention import flex_attention as fa

from hubbench.mixers.hubrouter import HubRouter, hubrouter_ref
from hubbench.mixers.hubrouter import flex as hub_flex
from hubbench.mixers.hubrouter.council import masked_council
from hubbench.verify.causality import check_mixer


def _make(seed: int = 0, **kw) -> HubRouter:
    torch.manual_seed(seed)
    args = {"d_model": 16, "n_heads": 2, "hubs": 4, "topk": 3, "neighbours": 1, "chunk": 8}
    args.update(kw)
    return HubRouter(**args).double()


def _tied_input(B: int, n: int, d: int) -> torch.Tensor:
    """Rows drawn from 3 distinct tokens: equal tokens in a chunk score exactly alike, so the
    top-k breaks ties on every chunk (by position, as rank_key specifies)."""
    base = torch.randn(3, d, dtype=torch.float64)
    return base[torch.randint(0, 3, (B, n))]


@pytest.mark.parametrize(
    "kw, n, B",
    [
        ({}, 19, 2),  # n not a multiple of C; chunk 0 has no member
        ({"topk": 50}, 27, 1),  # k' beyond the past: early chunks' slots mostly invalid
        ({"rope": True}, 24, 2),
        ({"chunk": 32}, 19, 2),  # n <= C: no member slots, the local window alone
        ({"neighbours": 3, "topk": 2, "hubs": 1}, 33, 2),
        ({"neighbours": 0, "chunk": 1}, 9, 1),  # one-token chunks
    ],
)
def test_flex_matches_loop_reference(kw: dict, n: int, B: int) -> None:
    m = _make(**kw, council="flex").eval()
    for x in (torch.randn(B, n, 16, dtype=torch.float64), _tied_input(B, n, 16)):
        with torch.no_grad():
            torch.testing.assert_close(m(x), hubrouter_ref(m, x), rtol=1e-10, atol=1e-10)
    assert m.last_backend == "hubrouter:causal:flex-council"


@pytest.mark.parametrize(
    "kw, n, tied",
    [
        ({}, 19, False),
        ({}, 40, True),  # exact score ties
        ({"topk": 50}, 27, False),  # more member slots than tokens: most invalid
        ({"rope": True}, 24, False),
        ({"rope": True, "topk": 6}, 35, True),
        ({"chunk": 32}, 19, False),  # n <= C: the score head's gradient is exactly zero
        ({"neighbours": 0, "hubs": 1}, 33, False),
    ],
)
def test_flex_gradients_equal_the_masked_council(kw: dict, n: int, tied: bool) -> None:
    """Same outputs and every gradient (input and parameters: q, k, v and the score head
    reach them all) as the dense-mask council, B = 2, float64."""
    torch.manual_seed(1)
    x = _tied_input(2, n, 16) if tied else torch.randn(2, n, 16, dtype=torch.float64)
    grads = {}
    for council in ("flex", "masked"):
        m = _make(**kw, council=council)
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        grads[council] = [y.detach(), xi.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(grads["flex"], grads["masked"], strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _council_inputs(B: int, nc: int, C: int, km: int, d: int, seed: int):
    """Random q, k, v, s and members whose validity covers every block case: chunk 0 all
    invalid, chunk 1 all valid, the rest random (some slots repeat a position)."""
    g = torch.Generator().manual_seed(seed)
    n_pad = nc * C
    q, k, v = (torch.randn(B, n_pad, d, generator=g, dtype=torch.float64) for _ in range(3))
    s = torch.randn(B, n_pad, generator=g, dtype=torch.float64)
    mpos = torch.randint(0, n_pad, (B, nc, km), generator=g)
    mvalid = torch.rand(B, nc, km, generator=g) < 0.5
    mvalid[:, 0] = False
    if nc > 1:
        mvalid[:, 1] = True
    return q, k, v, s, (mpos, mvalid)


@pytest.mark.parametrize(
    "C, km, block",
    [
        (8, 8, 4),  # two member blocks, two query blocks (C > block)
        (6, 5, 4),  # C and k' not multiples of the block: padded slots, a short last block
        (8, 12, 16),  # one block holds every member slot
        (8, 0, 4),  # no member slots (n <= C)
        (5, 7, 128),  # the CUDA block size
    ],
)
def test_flex_council_equals_masked_council_directly(C: int, km: int, block: int) -> None:
    """The council functions alone, outputs and gradients w.r.t. q, k, v and s, for block
    sizes that make member blocks skipped, full and partial."""
    B, nc, h, d = 2, 4, 2, 8
    ins = _council_inputs(B, nc, C, km, d, seed=C + km)
    leaves = [t.clone().requires_grad_(True) for t in ins[:4]]
    outs = {}
    for name in ("flex", "masked"):
        xs = [t.detach().clone().requires_grad_(True) for t in leaves]
        if name == "flex":
            y = hub_flex.flex_council(*xs, ins[4], h, block=block)
        else:
            y = masked_council(*xs, ins[4], h, causal=True)
        dy = torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
        outs[name] = [y.detach(), *torch.autograd.grad(y, xs, dy)]
    for a, b in zip(outs["flex"], outs["masked"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _effective_mask(bm: fa.BlockMask, G: int, Q: int, KV: int) -> torch.Tensor:
    """What a block-sparse kernel computes: full blocks visible, partial blocks through
    mask_mod, unlisted blocks skipped (G, Q, KV)."""
    bq, bk = bm.BLOCK_SIZE
    qi = torch.arange(Q).view(Q, 1)
    ki = torch.arange(KV).view(1, KV)
    out = torch.zeros(G, Q, KV, dtype=torch.bool)
    for g in range(G):
        dense = bm.mask_mod(torch.tensor(g), torch.tensor(0), qi, ki)
        for i in range(bm.kv_num_blocks.shape[-1]):
            rows = slice(i * bq, (i + 1) * bq)
            for num, ids, full in (
                (bm.kv_num_blocks, bm.kv_indices, False),
                (bm.full_kv_num_blocks, bm.full_kv_indices, True),
            ):
                for j in ids[g, 0, i, : int(num[g, 0, i])].tolist():
                    cols = slice(j * bk, (j + 1) * bk)
                    out[g, rows, cols] = True if full else dense[rows, cols]
    return out


@pytest.mark.parametrize("C, K, block", [(8, 8, 4), (6, 8, 4), (4, 16, 4), (8, 0, 4)])
def test_block_tables_mean_the_mask_and_skip_empty_blocks(C: int, K: int, block: int) -> None:
    """The tables reproduce the mask exactly: no full block holds a masked entry, no skipped
    block a visible one, and a block of all-invalid member slots is not listed at all."""
    g = torch.Generator().manual_seed(0)
    G = 5
    valid = torch.rand(G, K, generator=g) < 0.5
    if K:
        valid[0], valid[1] = False, True  # all skipped / all full
        valid[2, :block] = False  # one empty block beside mixed ones
    bm = hub_flex.council_block_mask(valid, C, block)
    qi, ki = torch.arange(C).view(C, 1), torch.arange(K + C).view(1, K + C)
    want = torch.stack(
        [
            torch.where(ki < K, valid[r].index_select(0, ki.clamp(max=max(K - 1, 0)).view(-1))
                        .view(1, -1) if K else False, ki - K <= qi)
            for r in range(G)
        ]
    )  # fmt: skip
    assert torch.equal(_effective_mask(bm, G, C, K + C), want)
    for r in range(G):  # a block listed as partial and full would be visited twice
        for i in range(bm.kv_num_blocks.shape[-1]):
            part = bm.kv_indices[r, 0, i, : int(bm.kv_num_blocks[r, 0, i])].tolist()
            full = bm.full_kv_indices[r, 0, i, : int(bm.full_kv_num_blocks[r, 0, i])].tolist()
            assert not set(part) & set(full)
    if K:
        listed = [bm.kv_indices[0, 0, i, : int(bm.kv_num_blocks[0, 0, i])].tolist()
                  for i in range(bm.kv_num_blocks.shape[-1])]  # fmt: skip
        assert all(j >= K // block for row in listed for j in row)  # row 0: no member block
        assert int(bm.full_kv_num_blocks[1, 0, 0]) >= K // block  # row 1: members all full


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_our_eager_call_is_the_public_flex_attention() -> None:
    """Without gradients the public entry runs on CPU: the direct call gives the same bits."""
    G, h, C, K, d = 3, 2, 8, 8, 4
    q = torch.randn(G, h, C, d, dtype=torch.float64)
    k, v = (torch.randn(G, h, K + C, d, dtype=torch.float64) for _ in range(2))
    bm = hub_flex.council_block_mask(torch.rand(G, K) < 0.5, C, 4)
    assert torch.equal(hub_flex._attend(q, k, v, bm), fa.flex_attention(q, k, v, block_mask=bm))


def test_the_compiled_kernel_never_falls_back_to_eager_under_its_name(monkeypatch) -> None:
    """Past dynamo's recompile limit torch.compile runs the function eagerly (a warning only):
    on CUDA that is FlexAttention's whole score matrix timed as flex-council. The compiled call
    runs with a raised limit and an error past it, which names the way out."""
    import torch._dynamo

    seen = {}

    def fake_compiled(*args, **kwargs):
        cfg = torch._dynamo.config
        seen["limit"], seen["fail"] = cfg.recompile_limit, cfg.fail_on_recompile_limit_hit
        raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile_limit reached")

    monkeypatch.setattr(hub_flex, "_compiled", lambda: fake_compiled)
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match=r"refusing to run it eagerly.*council=masked"):
        hub_flex._run_compiled(q, q, q, block_mask=None)
    assert seen == {"limit": hub_flex.RECOMPILE_LIMIT, "fail": True}
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False  # restored afterwards
    # inside an outer torch.compile the call is traced as it is: a config patch there would
    # break the outer graph at every council
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    seen.clear()
    monkeypatch.setattr(hub_flex, "_compiled", lambda: lambda *a, **k: seen.setdefault("plain", 1))
    assert hub_flex._run_compiled(q, q, q, block_mask=None) == 1 and "limit" not in seen


def test_flex_keeps_no_dense_mask_for_backward() -> None:
    """Autograd saves no tensor of the masked path's (B nc, 1, C, k' + C) mask shape, nor a
    per-head one."""
    B, n, C, k, h = 2, 128, 16, 8, 4
    torch.manual_seed(0)
    m = HubRouter(32, h, hubs=4, topk=k, chunk=C, council="flex")
    shapes: set = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.add(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(torch.randn(B, n, 32, requires_grad=True)).sum().backward()
    G = B * n // C
    slots = -(-2 * k // hub_flex.CPU_BLOCK) * hub_flex.CPU_BLOCK + C
    assert not {(G, 1, C, slots), (G, h, C, slots)} & shapes


def test_flex_in_float32_and_bfloat16_autocast() -> None:
    x = torch.randn(2, 70, 16)
    outs = {}
    for council in ("flex", "masked"):
        torch.manual_seed(0)
        m = HubRouter(16, 2, hubs=4, topk=3, chunk=8, council=council)
        outs[council] = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[council + "-bf16"] = m(x).float()
    torch.testing.assert_close(outs["flex"], outs["masked"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs["flex-bf16"], outs["masked"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kw", [{}, {"rope": True, "neighbours": 2}, {"topk": 40}])
def test_flex_hubrouter_passes_the_causality_checks(kw: dict) -> None:
    report = check_mixer(_make(**kw, council="flex"), n=27, seeds=(0, 1))
    assert report.passed, report.summary()
    assert {7, 8, 9, 15, 16, 17} <= set(report.times)


def test_auto_stays_packed_on_cpu_and_flex_is_not_fused_here() -> None:
    m = _make()
    m(torch.randn(1, 20, 16, dtype=torch.float64))
    assert m.last_backend == "hubrouter:causal:packed-council"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # half precision: the split council
        m.float()(torch.randn(1, 20, 16))
    assert m.last_backend == "hubrouter:causal:split-council"
    assert not hub_flex.flex_council_available(torch.zeros(1))


DEVICE_ENV = "HUBBENCH_TEST_DEVICE"


def _device() -> str:
    dev = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "")
    if not dev:
        pytest.skip(f"needs a CUDA device (or {DEVICE_ENV}=<device>)")
    return dev


def _run_on(dev: str, council: str, kw: dict, x: torch.Tensor, autocast: bool) -> list:
    """Output, input gradient and every parameter gradient of a float32 layer on `dev`."""
    torch.manual_seed(0)
    m = HubRouter(64, 4, hubs=8, **kw, council=council).to(dev)
    xi = x.to(dev).requires_grad_(True)
    with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16, enabled=autocast):
        y = m(xi)
    dy = torch.cos(torch.arange(y.numel(), device=dev, dtype=torch.float32)).view_as(y)
    y.float().backward(dy)
    assert m.last_backend == f"hubrouter:causal:{council}-council"
    return [t.detach().float().cpu() for t in (y, xi.grad, *(p.grad for p in m.parameters()))]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "kw, n, tied",
    [
        ({"topk": 5, "chunk": 16}, 301, True),  # Q_LEN 16 < the 128 block; ties; n % C != 0
        ({"topk": 64, "chunk": 64, "rope": True}, 1000, False),  # the benchmark's shape
    ],
)
def test_flex_on_the_device_matches_the_masked_council(kw: dict, n: int, tied: bool) -> None:
    """The compiled kernel (on CUDA) against the masked council on the same device, float32:
    output and every gradient within 1e-4 of the largest value; bf16 autocast within 5e-2."""
    dev = _device()
    torch.manual_seed(2)
    x = (_tied_input(2, n, 64) if tied else torch.randn(2, n, 64, dtype=torch.float64)).float()
    for autocast, rel in ((False, 1e-4), (True, 5e-2)):
        got = _run_on(dev, "flex", kw, x, autocast)
        want = _run_on(dev, "masked", kw, x, False)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=rel, atol=rel * max(b.abs().max().item(), 1.0))


@pytest.mark.gpu
def test_auto_picks_flex_on_cuda() -> None:
    dev = _device()
    if torch.device(dev).type != "cuda":
        pytest.skip("auto picks flex on CUDA only")
    m = HubRouter(64, 4, hubs=8, topk=5, chunk=16).to(dev)
    m(torch.randn(1, 40, 64, device=dev))
    assert m.last_backend == "hubrouter:causal:flex-council"
