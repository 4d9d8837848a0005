"""HubRouter: agreement with a per-token loop reference, gradients, regulariser, config errors,
edge cases (ragged n, k >= tokens, M = 1, dtypes) and causality, including the broken variants
that must fail the perturbation check."""

from __future__ import annotations

import pytest
import torch
from leaky_hubrouter import LeakyGlobalTopK

from hubbench.errors import ConfigError
from hubbench.mixers.hubrouter import (
    HubRouter,
    expand_members,
    hubrouter_ref,
    ortho_loss,
    prefix_combine,
    prefix_combine_blocked,
)
from hubbench.mixers.hubrouter import council as hub_council
from hubbench.verify.causality import check_mixer


def _make(seed: int = 0, **kw) -> HubRouter:
    torch.manual_seed(seed)
    args = {"d_model": 16, "n_heads": 2, "hubs": 4, "topk": 3, "neighbours": 1, "chunk": 8}
    args.update(kw)
    return HubRouter(**args).double()


@pytest.mark.parametrize(
    "kw",
    [
        {},  # causal, r = 1, n not a multiple of C
        {"causal": False},
        {"neighbours": 0},
        {"neighbours": 3, "topk": 2},
        {"topk": 50},  # k above every count of available tokens
        {"hubs": 1},
        {"chunk": 1},
        {"chunk": 64},  # one chunk: the local window is all there is
        {"rope": True},
        {"rope": True, "causal": False},
    ],
)
@pytest.mark.parametrize("council", ["packed", "split", "masked"])
def test_matches_loop_reference(kw: dict, council: str) -> None:
    m = _make(**kw, council=council).eval()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), hubrouter_ref(m, x), rtol=1e-10, atol=1e-10)
    if m.causal:
        assert m.last_backend == f"hubrouter:causal:{council}-council"


@pytest.mark.parametrize(
    "kw, n",
    [
        ({}, 19),  # chunk 0 has no member: its rows take the local window alone
        ({"topk": 50}, 27),  # more member slots than tokens (k' above the past): most invalid
        ({"rope": True}, 24),
        ({"chunk": 32}, 19),  # n <= C: no member slots at all
        ({"neighbours": 0, "hubs": 1}, 33),
        ({"ties": True}, 37),  # every token repeated: member scores tie exactly
    ],
)
# all chunks at once; one chunk at a time; three (packed; the last slice shorter)
@pytest.mark.parametrize("slices", ["all", "one", "three"])
@pytest.mark.parametrize("council", ["packed", "split"])
def test_fast_councils_gradients_equal_the_masked_council(
    kw: dict, n: int, slices: str, council: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packed council (batched GEMMs, probabilities kept) and the log-sum-exp split against
    the dense-mask council: same outputs and every gradient, whether the members are gathered
    for all chunks at once or slice by slice."""
    monkeypatch.setattr(hub_council, "SLICE_ELEMENTS", 1 if slices == "one" else 1 << 20)
    rows = {"all": 1 << 20, "one": 1, "three": 3 * kw.get("chunk", 8)}[slices]
    monkeypatch.setattr(hub_council, "PACKED_ROWS", rows)
    kw = dict(kw)
    x = torch.randn(2, n, 16, dtype=torch.float64)
    if kw.pop("ties", False):
        x = x[:, :4].repeat(1, -(-n // 4), 1)[:, :n].contiguous()  # tokens 0-3, over and over
    grads = {}
    for impl in (council, "masked"):
        m = _make(**kw, council=impl)
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        grads[impl] = [y.detach(), xi.grad] + [p.grad for p in m.parameters()]
        assert m.last_backend == f"hubrouter:causal:{impl}-council"
    for a, b in zip(grads[council], grads["masked"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fast_councils_in_float32_and_bfloat16_autocast() -> None:
    """Outputs and input gradients against the masked council, in fp32 and under bf16
    autocast; without autograd (a fwd cell) the packed council gives the same output."""
    x = torch.randn(2, 70, 16)
    outs, grads = {}, {}
    for council in ("packed", "split", "masked"):
        torch.manual_seed(0)
        m = HubRouter(16, 2, hubs=4, topk=3, chunk=8, council=council)
        for label, dtype in (("", None), ("-bf16", torch.bfloat16)):
            xi = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                y = m(xi)
            y.float().backward(torch.cos(torch.arange(y.numel())).view(y.shape))
            outs[council + label], grads[council + label] = y.detach().float(), xi.grad
        with torch.no_grad():
            torch.testing.assert_close(m(x), outs[council], rtol=0, atol=0)
    for council in ("packed", "split"):
        for got in (outs, grads):
            torch.testing.assert_close(got[council], got["masked"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[council + "-bf16"], got["masked"], rtol=0.05, atol=0.05)


def test_fast_councils_save_no_dense_mask() -> None:
    """What autograd keeps for backward: no tensor of the masked path's (B nc, 1, C, k' + C)
    mask shape for either fast council; the split one keeps fewer bytes than the masked one,
    the packed one keeps its (B, h, nc, C, k' + C) probabilities (its speed's price)."""
    saved_bytes: dict[str, int] = {}
    shapes: dict[str, set] = {}
    B, n, C, k, h = 2, 256, 16, 8, 4
    for council in ("packed", "split", "masked"):
        torch.manual_seed(0)
        m = HubRouter(32, h, hubs=4, topk=k, chunk=C, council=council)
        seen: dict[int, int] = {}
        got: set = set()

        def pack(t: torch.Tensor, seen=seen, got=got) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            got.add(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(torch.randn(B, n, 32, requires_grad=True)).sum().backward()
        saved_bytes[council], shapes[council] = sum(seen.values()), got
    mask_shape = (B * n // C, 1, C, 2 * k + C)
    assert mask_shape in shapes["masked"]
    assert mask_shape not in shapes["split"] and mask_shape not in shapes["packed"]
    assert (B, h, n // C, C, 2 * k + C) in shapes["packed"]
    assert saved_bytes["split"] < saved_bytes["masked"]


def test_unknown_council_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="council must be one of"):
        HubRouter(16, 2, council="dense")


def test_shapes_backend_and_profiler_stages() -> None:
    m = HubRouter(32, 4, hubs=4, topk=4, chunk=8)
    x = torch.randn(3, 21, 32)
    with torch.profiler.profile() as prof:
        y = m(x)
    assert y.shape == x.shape
    assert m.last_backend == "hubrouter:causal:packed-council"  # auto on CPU, fp32
    names = {e.key for e in prof.key_averages()}
    assert {"hub.encode", "hub.decode", "hub.select", "hub.council"} <= names
    nc = HubRouter(32, 4, causal=False)
    nc(x)
    assert nc.last_backend == "hubrouter:bidirectional"


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_reach_every_parameter(causal: bool) -> None:
    m = _make(causal=causal, ortho_weight=0.0)
    x = torch.randn(2, 27, 16, dtype=torch.float64, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    assert x.grad.abs().max() > 0


def test_score_head_gets_gradient_through_member_values() -> None:
    # with the fingerprint part removed, the token score column still learns from the council
    m = _make()
    x = torch.randn(1, 24, 16, dtype=torch.float64)
    m(x).sum().backward()
    assert m.in_proj.weight.grad[4 * 16].abs().max() > 0
    assert m.score_fp.weight.grad.abs().max() > 0


def test_ortho_regulariser() -> None:
    m = HubRouter(16, 2, hubs=4, ortho_weight=0.5)  # hubs start orthonormal
    assert m.ortho_loss().item() == pytest.approx(0.0, abs=1e-10)
    m(torch.randn(1, 8, 16))
    assert m.aux_loss is not None and m.aux_loss.item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        m.hub_embed[1] = m.hub_embed[0] + 0.1 * m.hub_embed[2]
    assert m.ortho_loss().item() > 0.5
    m(torch.randn(1, 8, 16))
    assert m.aux_loss.item() == pytest.approx(0.5 * m.ortho_loss().item())
    # scale of a row does not matter (rows are normalised), only directions
    e = torch.eye(3, 5) * torch.tensor([[2.0], [0.3], [7.0]])
    assert ortho_loss(e).item() == pytest.approx(0.0, abs=1e-12)
    m.ortho_loss().backward()
    assert m.hub_embed.grad.abs().max() > 0


def test_no_aux_loss_when_weight_is_zero() -> None:
    m = HubRouter(16, 2)
    m(torch.randn(1, 8, 16))
    assert m.aux_loss is None


def test_deterministic_under_fixed_seed() -> None:
    x = torch.randn(2, 40, 16, dtype=torch.float64)
    a, b = _make(seed=3), _make(seed=3)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.allclose(a(x), _make(seed=4)(x))


def test_routing_is_per_sequence() -> None:
    # duplicating a sequence into a batch with very different neighbours changes nothing
    m = _make().eval()
    x = torch.randn(1, 30, 16, dtype=torch.float64)
    other = 50 * torch.randn(3, 30, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(torch.cat((x, other)))[:1], m(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("field", "kw"),
    [
        ("hubs", {"hubs": 0}),
        ("topk", {"topk": 0}),
        ("chunk", {"chunk": 0}),
        ("neighbours", {"neighbours": -1}),
        ("n_heads", {"n_heads": 3}),
        ("ortho", {"ortho_weight": -1.0}),
    ],
)
def test_bad_config_is_a_clear_error(field: str, kw: dict) -> None:
    args = {"d_model": 16, "n_heads": 2}
    args.update(kw)
    with pytest.raises(ConfigError, match=field) as info:
        HubRouter(**args)
    assert "\n" not in str(info.value)


def test_expand_members_dedupes_and_clips() -> None:
    pos = torch.tensor([[[3, 4, 9]]])
    valid = torch.tensor([[[True, True, True]]])
    p, ok = expand_members(pos, valid, 1, torch.tensor([[[10]]]))
    assert sorted(p[ok].tolist()) == [3, 4, 5, 9]  # 4 once; 10 clipped


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cast_params(dtype: torch.dtype) -> None:
    m = _make().to(dtype)
    x = torch.randn(2, 21, 16, dtype=dtype, requires_grad=True)
    y = m(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bf16_autocast_close_to_fp32() -> None:
    m = _make().float()
    x = torch.randn(2, 21, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    ref = m(x)
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


# --- causality -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"neighbours": 2, "topk": 5},
        {"topk": 40},  # k >= available tokens
        {"hubs": 1},
        {"rope": True},
        {"council": "masked"},  # the default runs the packed council on CPU
        {"council": "masked", "rope": True, "neighbours": 2},
        {"council": "split"},
        {"council": "split", "rope": True, "neighbours": 2},
    ],
)
def test_causal_hubrouter_passes_all_checks(kw: dict) -> None:
    # n = 27: not a multiple of C = 8; times include C-1, C, C+1, 2C-1, 2C, 2C+1
    report = check_mixer(_make(**kw), n=27, seeds=(0, 1))
    assert report.passed, report.summary()
    assert {7, 8, 9, 15, 16, 17} <= set(report.times)


class _NeighboursClippedAtN(HubRouter):
    """Broken on purpose: right neighbours clipped at n, not at the reading chunk's start."""

    def _neighbour_limit(self, n, nc, C, s):  # type: ignore[override]
        return torch.full((1, 1, 1), n)


def _promote_last_of_chunk0(m: HubRouter) -> tuple[HubRouter, torch.Tensor]:
    """Scores driven by feature 0 and x[:, C-1, 0] huge: position C-1 is always a member."""
    with torch.no_grad():
        m.in_proj.weight[4 * m.d_model].zero_()
        m.in_proj.weight[4 * m.d_model, 0] = 1.0
        m.score_fp.weight.zero_()
    x = torch.randn(1, 20, m.d_model, dtype=torch.float64)
    x[:, m.chunk - 1, 0] = 50.0
    return m.eval(), x


def _moves_output_at_C(m: HubRouter, x: torch.Tensor) -> float:
    """Change inputs C+1.. (C+1 is the 2nd right neighbour of member C-1); output at C moved?"""
    C = m.chunk
    with torch.no_grad():
        xp = x.clone()
        xp[:, C + 1 :] = 10 * torch.randn_like(xp[:, C + 1 :])
        return float((m(xp)[:, : C + 1] - m(x)[:, : C + 1]).abs().max())


def test_right_neighbour_crossing_t_is_dropped() -> None:
    m, x = _promote_last_of_chunk0(_make(neighbours=2, topk=1, chunk=8))
    assert _moves_output_at_C(m, x) == 0.0
    assert check_mixer(m, n=20, seeds=(0,), times=(7, 8, 9)).passed


def test_neighbour_clipping_bug_is_caught() -> None:
    torch.manual_seed(0)
    bad = _NeighboursClippedAtN(16, 2, hubs=4, topk=1, neighbours=2, chunk=8).double()
    bad, x = _promote_last_of_chunk0(bad)
    assert _moves_output_at_C(bad, x) > 1e-6


def test_non_causal_hubrouter_fails_perturbation() -> None:
    report = check_mixer(_make(causal=False), n=24, seeds=(0,), checks=("perturbation",))
    assert not report.passed
    assert report["perturbation"].first_leak is not None
    assert report["perturbation"].max_leak > 1e-3


def test_global_topk_with_masked_council_fails_perturbation_but_not_jacobian() -> None:
    torch.manual_seed(0)
    leaky = LeakyGlobalTopK(16, 2, hubs=4, topk=3, neighbours=1, chunk=8).double()
    report = check_mixer(leaky, n=32, seeds=(0, 1), checks=("jacobian", "perturbation"))
    # the leak goes through WHICH tokens are selected: invisible to autograd, caught by values
    assert report["jacobian"].passed
    assert not report["perturbation"].passed
    t, s = report["perturbation"].first_leak
    assert s is not None and t < s


def test_batch_independence_check_catches_batch_wide_topk() -> None:
    class BatchWide(HubRouter):
        def _select(self, s, n, nc, C):  # type: ignore[override]
            shared = s.amax(0, keepdim=True).expand_as(s)  # routing depends on the whole batch
            return super()._select(shared, n, nc, C)

    torch.manual_seed(0)
    bad = BatchWide(16, 2, hubs=4, topk=2, chunk=8).double()
    report = check_mixer(bad, n=24, seeds=(0,), checks=("batch",))
    assert not report.passed


def test_analytic_flops_scale_linearly_and_match_a_hand_count() -> None:
    m = HubRouter(256, 4, hubs=8, topk=64, neighbours=1, chunk=64)
    f1, f2 = m.analytic_flops(4096), m.analytic_flops(8192)
    assert f2 / f1 == pytest.approx(2.0, rel=1e-3)
    d = 256
    per_token_proj = 2 * d * (4 * d + 1 + 32) + 2 * d * d
    per_token_council = 4 * (128 + 32.5) * d
    assert f1 / 4096 == pytest.approx(per_token_proj + per_token_council, rel=0.1)


@pytest.mark.parametrize("length", [1, 7, 16, 17, 50])
def test_blocked_prefix_combine_matches_the_doubling_scan(length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    m = 5 * torch.randn(2, length, 6, generator=gen, dtype=torch.float64)
    l = torch.rand(2, length, 6, generator=gen, dtype=torch.float64)
    o = torch.randn(2, length, 6, 3, generator=gen, dtype=torch.float64)
    ma, la, oa = prefix_combine(m, l, o)
    mb, lb, ob = prefix_combine_blocked(m, l, o, block=4)
    torch.testing.assert_close(oa / la.unsqueeze(-1), ob / lb.unsqueeze(-1))
    torch.testing.assert_close(la * ma.exp(), lb * mb.exp())
    # and against the plain definition: entry c is the softmax-weighted mean over 0..c
    c = length - 1
    w = torch.softmax(m[:, : c + 1] + l[:, : c + 1].log(), dim=1)  # (2, c + 1, 6)
    ref = (w.unsqueeze(-1) * o[:, : c + 1] / l[:, : c + 1].unsqueeze(-1)).sum(1)
    torch.testing.assert_close(ob[:, c] / lb[:, c].unsqueeze(-1), ref)


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_analytic_flops_count_the_member_slots_that_run(chunks: int) -> None:
    """Member slots as the counter sees them run: the analytic count moves with topk exactly as
    the counted FLOPs do. At n <= C (one chunk) chunk 0 has no earlier chunk to draw members
    from, `_members` allocates no slot and topk changes nothing (the count had min(k, n) (1 + r)
    phantom slots before: +58% at n = C for the ci settings)."""
    from hubbench.measure.flops import count_flops

    d, C = 64, 32
    x = torch.randn(1, chunks * C, d)
    counted, analytic = [], []
    for topk in (16, 1):
        m = HubRouter(d, 2, hubs=4, topk=topk, neighbours=1, chunk=C)
        counted.append(count_flops(lambda m=m: m(x)))
        analytic.append(m.analytic_flops(chunks * C))
    assert analytic[0] - analytic[1] == counted[0] - counted[1]
    assert (counted[0] == counted[1]) == (chunks == 1)


def test_the_score_head_learns_nothing_when_the_sequence_fits_one_chunk() -> None:
    """The score reaches the output only through the members' sigmoid gates; at n <= C there
    are no members, so the score head (score_fp and the score row of in_proj) gets an exactly
    zero gradient. One token past the chunk, it gets one."""
    torch.manual_seed(0)
    C = 8
    m = HubRouter(16, 2, hubs=4, topk=4, chunk=C).double()
    for n, learns in ((C, False), (C - 3, False), (C + 1, True)):
        m.zero_grad()
        m(torch.randn(2, n, 16, dtype=torch.float64)).square().sum().backward()
        score_row = m.in_proj.weight.grad[4 * 16]
        grads = (m.score_fp.weight.grad.abs().sum(), score_row.abs().sum())
        assert all((g > 0) == learns for g in grads), (n, grads)
