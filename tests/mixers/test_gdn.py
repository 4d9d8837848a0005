"""Gated DeltaNet: the chunked core against the per-token reference (outputs and gradients,
float64), the layer against its plain reference, decoding against the forward, causality of the
mixer and of its leaky control, the optional fla kernel, FLOPs and memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.base import DecodeState, DecodingMixer
from hubbench.mixers.gdn import (
    INSTALL_HINT,
    GatedDeltaNet,
    GDNState,
    gated_delta_chunked,
    gated_delta_ref,
    gated_delta_step,
    gated_deltanet_ref,
)
from hubbench.mixers.gdn import chunked as gdn_chunked
from hubbench.mixers.gdn import conv as gdn_conv
from hubbench.mixers.gdn import layer as gdn_layer
from hubbench.mixers.gdn import norm as gdn_norm
from hubbench.mixers.gdn.conv import short_conv_silu
from hubbench.verify.causality import check_mixer

F64 = torch.float64
REL = 1e-10
CHUNK = 16
LENGTHS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NEEDS_FLA = pytest.mark.skipif(
    gdn_layer.chunk_gated_delta_rule is None,
    reason="needs flash-linear-attention: pip install flash-linear-attention",
)


def _assert_rel(
    got: torch.Tensor, want: torch.Tensor, what: str, rel: float = REL, floor: float = 1e-30
) -> None:
    """max |got - want| <= rel * max(max |want|, floor), both finite."""
    assert torch.isfinite(got).all() and torch.isfinite(want).all(), what
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rel * max(scale, floor), f"{what}: error {err:.3e} vs scale {scale:.3e}"


def _core_inputs(
    B: int, n: int, h: int = 3, d_k: int = 6, d_v: int = 5, seed: int = 0, dtype=F64,
    g_scale: float = 1.0, beta: torch.Tensor | None = None, initial: bool = True,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Leaves for the core: unit-norm keys (as the layer makes them), every sequence different."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    inputs = {
        "q": rand(B, n, h, d_k) / math.sqrt(d_k),
        "k": F.normalize(rand(B, n, h, d_k), dim=-1),
        "v": rand(B, n, h, d_v),
        "g": -g_scale * torch.rand(B, n, h, generator=gen, dtype=dtype) * 2,
        "beta": torch.rand(B, n, h, generator=gen, dtype=dtype) if beta is None else beta,
    }
    if initial:
        inputs["initial_state"] = rand(B, h, d_k, d_v)
    return {k: t.clone().requires_grad_() for k, t in inputs.items()}


def _grads(outs: tuple[torch.Tensor, ...], leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    return torch.autograd.grad(loss, leaves)


def _compare_core(
    inputs: dict[str, torch.Tensor], chunk: int, rel: float = REL, floor: float = 1e-30
) -> None:
    leaves = list(inputs.values())
    got = gated_delta_chunked(**inputs, chunk=chunk)
    want = gated_delta_ref(**inputs)
    for name, a, b in zip(("o", "final state"), got, want, strict=True):
        _assert_rel(a, b, name, rel, floor)
    for name, a, b in zip(inputs, _grads(got, leaves), _grads(want, leaves), strict=True):
        _assert_rel(a, b, f"d{name}", rel, floor)


# ---------------------------------------------------------------- the core


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("initial", [True, False])
def test_chunked_core_matches_the_token_loop_float64(n: int, initial: bool) -> None:
    _compare_core(_core_inputs(2, n, seed=n, initial=initial), CHUNK)


def test_chunked_core_at_the_default_chunk_with_d_v_wider_than_d_k() -> None:
    _compare_core(_core_inputs(2, 3 * 64 + 5, h=2, d_k=4, d_v=8, seed=3), 64)


@pytest.mark.parametrize("normalise", [True, False])
def test_chunked_core_normalises_and_scales_q_and_k_itself(normalise: bool) -> None:
    # raw q, k of any length (one near zero): the core's in-cache L2 norm and its backward
    # against normalising with plain autograd before the token loop
    inputs = _core_inputs(2, 2 * CHUNK + 5, seed=8)
    with torch.no_grad():
        inputs["q"].mul_(7.0)
        inputs["k"].mul_(torch.rand(inputs["k"].shape[:-1], dtype=F64).unsqueeze(-1) * 3)
        inputs["k"][0, 3, 1] = 1e-4
    leaves = list(inputs.values())
    scale = 0.3
    got = gated_delta_chunked(**inputs, chunk=CHUNK, l2_normalise_qk=normalise, scale=scale)

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) if normalise else t

    ref_in = {**inputs, "q": unit(inputs["q"]) * scale, "k": unit(inputs["k"])}
    want = gated_delta_ref(**ref_in)
    for a, b in zip(got, want, strict=True):
        _assert_rel(a, b, "output")
    for name, a, b in zip(inputs, _grads(got, leaves), _grads(want, leaves), strict=True):
        _assert_rel(a, b, f"d{name}")


@pytest.mark.parametrize("chunks_per_group", [1, 2])
def test_chunk_groups_carry_the_state_and_its_gradient(
    monkeypatch: pytest.MonkeyPatch, chunks_per_group: int
) -> None:
    # The core works its chunks in cache-sized groups; at test sizes one group holds them all,
    # so shrink the groups: 1 chunk each, and 2 each with a 1-chunk remainder (5 chunks).
    B, h = 2, 3
    monkeypatch.setattr(gdn_chunked, "GROUP_ELEMS", chunks_per_group * B * h * CHUNK * CHUNK)
    _compare_core(_core_inputs(B, 4 * CHUNK + 5, h=h, seed=12), CHUNK)


@pytest.mark.parametrize("block_elems", [1, 2 * 7 * 3, 1 << 18])
@pytest.mark.parametrize("width", [1, 3, 4])
def test_short_conv_matches_torch_conv1d_across_token_blocks(
    monkeypatch: pytest.MonkeyPatch, block_elems: int, width: int
) -> None:
    # blocks of 4 tokens (the floor is the conv width), 3 tokens, and the whole sequence
    monkeypatch.setattr(gdn_conv, "BLOCK_ELEMS", block_elems)
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(2, 23, 7, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(width, 7, generator=gen, dtype=F64, requires_grad=True)
    got = short_conv_silu(x, w)
    conv = F.conv1d(x.transpose(1, 2), w.T.unsqueeze(1), padding=width - 1, groups=7)
    want = F.silu(conv[..., : x.shape[1]]).transpose(1, 2)
    _assert_rel(got, want, "y")
    for name, a, b in zip("xw", _grads((got,), [x, w]), _grads((want,), [x, w]), strict=True):
        _assert_rel(a, b, f"d{name}")


def test_sequences_of_a_batch_stay_apart() -> None:
    inputs = _core_inputs(3, 2 * CHUNK + 3, seed=5, initial=False)
    both, _ = gated_delta_chunked(**inputs, chunk=CHUNK)
    alone, _ = gated_delta_chunked(**{k: t[1:2] for k, t in inputs.items()}, chunk=CHUNK)
    torch.testing.assert_close(both[1:2], alone, rtol=0, atol=1e-14)


@pytest.mark.parametrize("g_scale", [50.0, 1e3, 1e5])
def test_strong_decays_stay_finite_and_exact(g_scale: float) -> None:
    # g down to -2e5 per token: cumulative log-decays of -1e7 inside a chunk. A chunked form
    # that divided decays (exp(+gam)) would overflow to inf and give nan gradients here. At
    # -1e5 the true dg is ~1e-67 and ours a rounding residue of the O(1) terms that cancel in
    # it (1e-16): errors are judged against a scale of at least 1, that of the other gradients.
    _compare_core(_core_inputs(2, 2 * CHUNK + 7, seed=11, g_scale=g_scale), CHUNK, floor=1.0)


def test_strong_decays_in_float32_stay_finite() -> None:
    inputs = _core_inputs(2, 100, seed=2, dtype=torch.float32, g_scale=200.0)
    o, last = gated_delta_chunked(**inputs, chunk=64)
    grads = _grads((o, last), list(inputs.values()))
    assert torch.isfinite(o).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(gr).all() for gr in grads)
    ref, _ = gated_delta_ref(**inputs)
    torch.testing.assert_close(o, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("edge", ["zero", "one", "mixed"])
def test_beta_near_zero_and_one(edge: str) -> None:
    B, n, h = 2, 2 * CHUNK + 5, 3
    gen = torch.Generator().manual_seed(4)
    near = {"zero": torch.full((B, n, h), 1e-12, dtype=F64),
            "one": torch.full((B, n, h), 1 - 1e-12, dtype=F64)}  # fmt: skip
    mixed = torch.where(torch.rand(B, n, h, generator=gen) < 0.5, near["zero"], near["one"])
    beta = mixed if edge == "mixed" else near[edge]
    _compare_core(_core_inputs(B, n, seed=4, beta=beta), CHUNK)


def test_beta_one_without_decay_overwrites_the_key() -> None:
    # The delta rule's meaning: with beta = 1, alpha = 1 and a unit key, the state then recalls
    # exactly the value just written for that key, whatever was stored before.
    inputs = {k: t.detach() for k, t in _core_inputs(1, 9, seed=6, initial=True).items()}
    inputs["beta"] = torch.ones_like(inputs["beta"])
    inputs["g"] = torch.zeros_like(inputs["g"])
    _, last = gated_delta_chunked(**inputs, chunk=4)
    recalled = (inputs["k"][:, -1].unsqueeze(-2) @ last).squeeze(-2)  # (B, h, d_v)
    torch.testing.assert_close(recalled, inputs["v"][:, -1], rtol=0, atol=1e-12)


def test_one_step_at_a_time_matches_the_chunked_core() -> None:
    inputs = {k: t.detach() for k, t in _core_inputs(2, 2 * CHUNK + 3, seed=9).items()}
    o, last = gated_delta_chunked(**inputs, chunk=CHUNK)
    state = inputs["initial_state"].clone()
    steps = [gated_delta_step(*(inputs[k][:, t] for k in ("q", "k", "v", "g", "beta")), state)
             for t in range(inputs["q"].shape[1])]  # fmt: skip
    torch.testing.assert_close(torch.stack(steps, 1), o, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, last, rtol=0, atol=1e-12)


def test_core_shape_and_chunk_errors() -> None:
    inputs = {k: t.detach() for k, t in _core_inputs(1, 5, initial=False).items()}
    with pytest.raises(ConfigError, match="beta must be"):
        gated_delta_chunked(**{**inputs, "beta": inputs["beta"][:, :3]})
    with pytest.raises(ConfigError, match="chunk must be a positive integer"):
        gated_delta_chunked(**inputs, chunk=0)


# ---------------------------------------------------------------- the layer


def _layer(dtype: torch.dtype = F64, **kw) -> GatedDeltaNet:
    torch.manual_seed(0)
    kw = {"chunk": CHUNK, **kw}
    return GatedDeltaNet(16, 2, **kw).to(dtype)


@pytest.mark.parametrize("n", LENGTHS)
def test_layer_output_and_every_gradient_match_the_reference(n: int) -> None:
    layer = _layer(expand_v=2)
    x = torch.randn(2, n, 16, dtype=F64, generator=torch.Generator().manual_seed(n))
    x.requires_grad_()
    params = [x, *layer.parameters()]
    names = ["x", *(name for name, _ in layer.named_parameters())]
    y, y_ref = layer(x), gated_deltanet_ref(layer, x)
    _assert_rel(y, y_ref, "y")
    for name, a, b in zip(names, _grads((y,), params), _grads((y_ref,), params), strict=True):
        _assert_rel(a, b, f"d{name}")
    assert {"A_log", "dt_bias", "a_proj.weight", "b_proj.weight"} <= set(names)


def test_layer_matches_the_reference_with_small_blocks_and_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the conv, the output norm and the core each work in cache-sized pieces; at test sizes one
    # piece is the whole sequence, so shrink them all (3, 5 and 1-chunk pieces)
    monkeypatch.setattr(gdn_conv, "BLOCK_ELEMS", 2 * 3 * 48)
    monkeypatch.setattr(gdn_norm, "BLOCK_ELEMS", 2 * 5 * 16)
    monkeypatch.setattr(gdn_chunked, "GROUP_ELEMS", 1)
    test_layer_output_and_every_gradient_match_the_reference(3 * CHUNK + 5)


def test_layer_matches_the_reference_with_fast_decays_and_d_conv_1() -> None:
    layer = _layer(d_conv=1)
    with torch.no_grad():
        layer.A_log.fill_(math.log(300.0))  # g around -300 * softplus(.): state wiped per token
        layer.dt_bias.fill_(2.0)
    x = torch.randn(2, 2 * CHUNK + 1, 16, dtype=F64, requires_grad=True)
    y, y_ref = layer(x), gated_deltanet_ref(layer, x)
    _assert_rel(y, y_ref, "y")
    params = [x, layer.A_log, layer.dt_bias]
    for a, b in zip(_grads((y,), params), _grads((y_ref,), params), strict=True):
        _assert_rel(a, b, "grad")


def test_layer_is_a_decoding_mixer_and_records_what_ran() -> None:
    layer = _layer(torch.float32)
    assert isinstance(layer, DecodingMixer)
    assert layer.causal is True and layer.last_backend is None and layer.aux_loss is None
    x = torch.randn(3, 21, 16)
    assert layer(x).shape == x.shape and layer.last_backend == "gdn:chunked"
    y, state = layer.prefill(x)
    assert isinstance(state, (DecodeState, GDNState)) and y.shape == x.shape
    assert layer.step(x[:, :1], state).shape == (3, 1, 16) and layer.last_backend == "gdn:step"
    assert (layer.head_dim_k, layer.head_dim_v) == (8, 8)
    assert _layer(expand_v=3).head_dim_v == 24


def test_defaults_follow_fla() -> None:
    layer = GatedDeltaNet(64, 4)
    assert (layer.chunk, layer.d_conv, layer.expand_v, layer.impl) == (64, 4, 1, "ref")
    assert layer.q_conv1d.weight.shape == (64, 1, 4) and layer.q_conv1d.bias is None
    A = layer.A_log.detach().exp()
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(layer.dt_bias.detach())
    assert ((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay


def test_bf16_autocast_runs_and_keeps_the_state_in_fp32() -> None:
    layer = _layer(torch.float32)
    x = torch.randn(2, 40, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        _, state = layer.prefill(x.detach())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert state.ssm.dtype == torch.float32 and state.conv.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=0.1, atol=0.05)
    (g,) = torch.autograd.grad(y.float().square().sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0, "n_heads": 1}, "d_model must be a positive integer"),
        ({"d_model": 16, "n_heads": 3}, "divisible by n_heads"),
        ({"d_model": 16, "n_heads": True}, "n_heads"),
        ({"d_model": 16, "n_heads": 2, "chunk": 0}, "chunk"),
        ({"d_model": 16, "n_heads": 2, "d_conv": 0}, "d_conv"),
        ({"d_model": 16, "n_heads": 2, "expand_v": 1.5}, "expand_v"),
        ({"d_model": 16, "n_heads": 2, "impl": "cuda"}, "valid: ref, fla"),
        ({"d_model": 16, "n_heads": 2, "causal": "yes"}, "causal must be"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GatedDeltaNet(**kwargs)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("chunk", [CHUNK, 5])
def test_decode_token_by_token_and_after_prefills_equals_the_forward(chunk: int) -> None:
    n = 3 * CHUNK + 5
    layer = _layer(chunk=chunk).eval()
    x = torch.randn(2, n, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = layer(x)
        state = layer.empty_state(2, n, x)
        steps = torch.cat([layer.step(x[:, t : t + 1], state) for t in range(n)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (1, 2, chunk - 1, chunk, chunk + 1, 2 * chunk + 3, n - 1):
            y, state = layer.prefill(x[:, :p], n)
            rest = [layer.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


def test_empty_prompt_prefill_gives_the_empty_state() -> None:
    layer = _layer().eval()
    x = torch.randn(2, 9, 16, dtype=F64)
    with torch.no_grad():
        y, state = layer.prefill(x[:, :0])
        assert y.shape == (2, 0, 16)
        empty = layer.empty_state(2, 0, x)
        assert torch.equal(state.conv, empty.conv) and torch.equal(state.ssm, empty.ssm)
        steps = torch.cat([layer.step(x[:, t : t + 1], state) for t in range(9)], 1)
    torch.testing.assert_close(steps, layer(x), rtol=0, atol=1e-12)


def test_an_empty_sequence_forwards_and_backwards() -> None:
    layer = _layer(torch.float32)
    x = torch.randn(2, 0, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 0, 16) and layer.last_backend == "gdn:chunked"
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_state_bytes_snapshot_and_restore() -> None:
    layer = _layer(torch.float32, expand_v=2)
    x = torch.randn(3, 30, 16)
    with torch.no_grad():
        _, state = layer.prefill(x[:, :20])
        conv = 3 * (4 - 1) * (2 * 16 + 32) * 4  # q, k, v channels of the last 3 inputs
        ssm = 3 * 2 * 8 * 16 * 4  # (B, heads, d_k, d_v) in fp32
        assert state.nbytes() == conv + ssm
        snap = state.snapshot()
        runs = []
        for _ in range(3):  # a restore that aliased the snapshot would go wrong the 2nd time
            state.restore(snap)
            runs.append(torch.cat([layer.step(x[:, t : t + 1], state) for t in range(20, 30)], 1))
        assert state.nbytes() == conv + ssm  # constant in context
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_a_step_takes_one_token_and_the_leaky_control_does_not_decode() -> None:
    layer = _layer(torch.float32)
    state = layer.empty_state(1, 0, torch.zeros(1, 1, 16))
    with pytest.raises(ConfigError, match=r"one token per sequence"):
        layer.step(torch.zeros(1, 2, 16), state)
    with pytest.raises(ConfigError, match="causal=true"):
        _layer(torch.float32, causal=False).prefill(torch.zeros(1, 4, 16))


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("n", [CHUNK + 3, 2 * CHUNK + 2])
def test_check_mixer_passes_the_causal_layer(n: int) -> None:
    report = check_mixer(_layer(), n=n, seeds=(0, 1))
    assert report.passed, report.summary()


def test_check_mixer_catches_the_leaky_control_inside_a_chunk() -> None:
    report = check_mixer(_layer(causal=False), n=CHUNK + 3, seeds=(0,))
    assert not report.passed
    t, s = report["jacobian"].first_leak
    assert s > t and t // CHUNK == s // CHUNK  # the leak is the unmasked intra-chunk term
    assert t == 0  # the very first token already reads the rest of its chunk
    assert not report["prefix"].passed and not report["perturbation"].passed


# ---------------------------------------------------------------- fla


def test_fla_without_the_package_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gdn_layer, "chunk_gated_delta_rule", None)
    with pytest.raises(UnavailableError, match="pip install flash-linear-attention"):
        GatedDeltaNet(16, 2, impl="fla")
    assert "CUDA" in INSTALL_HINT


def _fla_stand_in(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
    """fla's chunk_gated_delta_rule contract (B, T, H, *) in plain torch, from the reference."""
    o, last = gated_delta_ref(q * scale, k, v, g, beta, initial_state)
    return o, (last if output_final_state else None)


def test_fla_on_cpu_is_unavailable_and_its_wiring_matches_ref(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gdn_layer, "chunk_gated_delta_rule", _fla_stand_in)
    fla = _layer(impl="fla")
    with pytest.raises(UnavailableError, match="CUDA only"):
        fla(torch.randn(1, 8, 16, dtype=F64))
    with pytest.raises(ConfigError, match="impl 'ref' only"):
        _layer(impl="fla", causal=False)
    x = torch.randn(2, 2 * CHUNK + 1, 16, dtype=F64)
    feats = fla._features(x, normalise=True)
    ours, _ = gated_delta_chunked(feats.q, feats.k, feats.v, feats.g, feats.beta, CHUNK)
    _assert_rel(fla._core_fla(feats), ours, "o")


@pytest.mark.gpu
@NEEDS_CUDA
@NEEDS_FLA
def test_fla_kernel_matches_ours_on_gpu() -> None:
    # fla's kernel takes bf16 (g in fp32); ours runs fp32 on the same bf16-rounded values
    inputs = _core_inputs(2, 300, h=4, d_k=64, d_v=64, dtype=torch.float32, initial=False)
    bf16 = {k: (t if k == "g" else t.bfloat16()).detach().cuda().requires_grad_()
            for k, t in inputs.items()}  # fmt: skip
    fp32 = {k: t.detach().float().requires_grad_() for k, t in bf16.items()}
    theirs, _ = gdn_layer.chunk_gated_delta_rule(**bf16, scale=1.0)
    ours, _ = gated_delta_chunked(**fp32, chunk=64)
    _assert_rel(theirs.float(), ours, "o", rel=3e-2)
    got = _grads((theirs.float(),), list(bf16.values()))
    for name, a, b in zip(bf16, got, _grads((ours,), list(fp32.values())), strict=True):
        _assert_rel(a.float(), b, f"d{name}", rel=5e-2)
    torch.manual_seed(0)
    ref = GatedDeltaNet(256, 4).cuda()
    layer = GatedDeltaNet(256, 4, impl="fla").cuda()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 300, 256, device="cuda")
    with pytest.raises(UnavailableError, match="bf16"):
        layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, y_ref = layer(x), ref(x)
    assert layer.last_backend == "gdn:fla" and ref.last_backend == "gdn:chunked"
    _assert_rel(y.float(), y_ref.float(), "layer output", rel=5e-2)


# ---------------------------------------------------------------- FLOPs and memory


def test_analytic_flops_cover_the_counted_matmuls_and_grow_linearly() -> None:
    layer = GatedDeltaNet(64, 2, chunk=16)
    x = torch.randn(1, 128, 64)
    with FlopCounterMode(display=False) as counter:
        layer(x)
    counted = counter.get_total_flops()  # matmuls only (no solve, no elementwise)
    ours = layer.analytic_flops(128)
    assert counted <= ours <= 1.6 * counted, (counted, ours)
    assert layer.analytic_flops(4096) == pytest.approx(32 * layer.analytic_flops(128), rel=1e-9)
    assert layer.decode_flops(10) == layer.decode_flops(100_000) > 0
    assert layer.analytic_flops(0) == 0.0


def test_no_saved_tensor_is_quadratic_in_n() -> None:
    layer = GatedDeltaNet(16, 2, chunk=64)
    n = 1024
    x = torch.randn(1, n, 16, requires_grad=True)
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert max(sizes) < n * n / 4, max(sizes)  # per-chunk (C x C) blocks only
