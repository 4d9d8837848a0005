"""Mamba-2 (SSD): the chunked core and the block against their per-token references (outputs and
every gradient, float64), decode against the forward, causality and its leaky control, FLOPs,
options, and the fused kernel's wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hubbench.errors import ConfigError, UnavailableError
from hubbench.mixers.base import DecodingMixer
from hubbench.mixers.mamba2 import (
    INSTALL_HINT,
    Mamba2,
    Mamba2State,
    mamba2_ref,
    ssd_chunked,
    ssd_ref,
    ssd_step,
)
from hubbench.mixers.mamba2 import block as m2_block
from hubbench.verify.causality import check_mixer

CHUNK = 8
LENGTHS = [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
REL = 1e-10
F64 = torch.float64


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def _assert_rel(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = REL) -> None:
    assert got.shape == want.shape, what
    err = _rel(got, want)
    assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"


def _ssd_inputs(
    b: int, n: int, H: int, P: int, G: int, N: int, seed: int = 0, dt_scale: float = 1.0,
    a_scale: float = 3.0, x_scale: float = 1.0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=F64) * scale).requires_grad_()

    return {
        "x": rand(b, n, H, P, scale=x_scale),
        "dt": (torch.rand(b, n, H, generator=gen, dtype=F64) * dt_scale).requires_grad_(),
        "A": (-torch.rand(H, generator=gen, dtype=F64) * a_scale - 0.05).requires_grad_(),
        "B": rand(b, n, G, N),
        "C": rand(b, n, G, N),
        "h0": rand(b, H, P, N),
        "D": rand(H),
    }


def _ssd_both(inp: dict[str, torch.Tensor], chunk: int, use_h0: bool = True):
    h0 = inp["h0"] if use_h0 else None
    y, last = ssd_chunked(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], chunk, h0, D=inp["D"])
    y_ref, last_ref = ssd_ref(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], h0)
    y_ref = y_ref + inp["x"] * inp["D"][:, None]
    return (y, last), (y_ref, last_ref)


def _check_ssd(inp: dict[str, torch.Tensor], chunk: int, use_h0: bool = True) -> None:
    (y, last), (y_ref, last_ref) = _ssd_both(inp, chunk, use_h0)
    _assert_rel(y, y_ref, "y")
    _assert_rel(last, last_ref, "final state")
    gen = torch.Generator().manual_seed(11)
    wy = torch.randn(y.shape, generator=gen, dtype=F64)
    wl = torch.randn(last.shape, generator=gen, dtype=F64)
    names = [k for k in inp if use_h0 or k != "h0"]
    leaves = [inp[k] for k in names]
    got = torch.autograd.grad((y * wy).sum() + (last * wl).sum(), leaves)
    want = torch.autograd.grad((y_ref * wy).sum() + (last_ref * wl).sum(), leaves)
    for name, g, g_ref in zip(names, got, want, strict=True):
        _assert_rel(g, g_ref, f"d{name}")


# ---------------------------------------------------------------- the SSD core


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("G", [1, 2])
def test_chunked_ssd_matches_token_loop_outputs_state_and_grads(n: int, G: int) -> None:
    _check_ssd(_ssd_inputs(2, n, 4, 3, G, 5, seed=n), CHUNK)


@pytest.mark.parametrize(
    ("case", "kwargs", "chunk"),
    [
        ("strong decay", {"dt_scale": 5.0, "a_scale": 16.0}, CHUNK),  # exp(-80) per token
        ("almost no decay", {"dt_scale": 1e-6, "a_scale": 1e-3}, CHUNK),  # long memory
        ("large inputs", {"x_scale": 1e3}, CHUNK),
        ("chunk of one token", {}, 1),
        ("chunk longer than n", {}, 64),
        ("chunk not dividing n", {}, 5),
    ],
)
def test_chunked_ssd_adversarial_cases(case: str, kwargs: dict, chunk: int) -> None:
    _check_ssd(_ssd_inputs(2, 3 * CHUNK + 5, 4, 3, 2, 5, seed=3, **kwargs), chunk)


def test_chunked_ssd_without_initial_state_and_sequences_differ() -> None:
    inp = _ssd_inputs(3, 2 * CHUNK + 3, 2, 4, 1, 3, seed=5)
    _check_ssd(inp, CHUNK, use_h0=False)
    (y, _), _ = _ssd_both(inp, CHUNK, use_h0=False)
    alone, _ = ssd_chunked(*(inp[k][1:2] for k in ("x", "dt")), inp["A"],
                           *(inp[k][1:2] for k in ("B", "C")), CHUNK, D=inp["D"])  # fmt: skip
    torch.testing.assert_close(alone, y[1:2], rtol=0, atol=1e-13)  # batch rows are independent


@pytest.mark.parametrize("n", [4 * CHUNK, 4 * CHUNK + 3])  # unpadded, padded
def test_chunked_ssd_takes_inputs_in_any_memory_layout(n: int) -> None:
    # a caller (the Oryx block) may hand over permuted views; with no padding the chunk layout
    # keeps their strides, and reshaping them as views failed
    base = {k: v.detach() for k, v in _ssd_inputs(2, n, 4, 3, 2, 5, seed=6).items()}
    strided = {
        "x": base["x"].transpose(1, 2).contiguous().transpose(1, 2),  # heads outermost
        "dt": base["dt"].transpose(1, 2).contiguous().transpose(1, 2),
        "B": base["B"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
        "C": base["C"].permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1),
    }
    inp = {**base, **strided}
    assert not any(t.is_contiguous() for t in strided.values())
    _check_ssd({k: v.requires_grad_() for k, v in inp.items()}, CHUNK)


@pytest.mark.parametrize("used", ["y", "final state"])
def test_chunked_ssd_gradients_when_one_output_is_unused(used: str) -> None:
    # the backward then gets zeros for the other output: each path must stand on its own
    inp = _ssd_inputs(2, 2 * CHUNK + 3, 4, 3, 2, 5, seed=4)
    (y, last), (y_ref, last_ref) = _ssd_both(inp, CHUNK)
    out, out_ref = (y, y_ref) if used == "y" else (last, last_ref)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = torch.autograd.grad((out * w).sum(), list(inp.values()), allow_unused=True)
    want = torch.autograd.grad((out_ref * w).sum(), list(inp.values()), allow_unused=True)
    for name, g, g_ref in zip(inp, got, want, strict=True):
        if g_ref is None:  # D does not reach the final state
            assert g is None or g.abs().max() == 0, name
        else:
            _assert_rel(g, g_ref, f"d{name}")


def test_chunked_ssd_stays_finite_in_fp32_with_strong_decay() -> None:
    # long chunks of exp(dt A) down to exp(-160): a form that divided decays would overflow
    inp = {k: v.detach().float() for k, v in _ssd_inputs(1, 300, 2, 4, 1, 8, seed=1).items()}
    inp["dt"] = inp["dt"] * 10
    inp["A"] = -torch.tensor([16.0, 0.01])
    y, last = ssd_chunked(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 256)
    y_ref, _ = ssd_ref(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"])
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    # cs_i - cs_j of an fp32 cumsum reaching ~1e4 keeps ~1e-3 absolute (as mamba-ssm's kernels)
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=5e-3)


def test_ssd_step_continues_the_chunked_state() -> None:
    inp = {k: v.detach() for k, v in _ssd_inputs(2, 2 * CHUNK + 3, 4, 3, 2, 5, seed=9).items()}
    y, _ = ssd_chunked(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], CHUNK, inp["h0"],
                       D=inp["D"])  # fmt: skip
    p = CHUNK + 1
    _, state = ssd_chunked(*(inp[k][:, :p] for k in ("x", "dt")), inp["A"],
                           *(inp[k][:, :p] for k in ("B", "C")), CHUNK, inp["h0"])  # fmt: skip
    for t in range(p, y.shape[1]):
        yt = ssd_step(state, inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t],
                      inp["C"][:, t], inp["D"])  # fmt: skip
        torch.testing.assert_close(yt, y[:, t], rtol=0, atol=1e-12)


def test_ssd_shape_errors_are_config_errors() -> None:
    inp = {k: v.detach() for k, v in _ssd_inputs(1, 10, 4, 3, 2, 5).items()}
    with pytest.raises(ConfigError, match="ngroups dividing 4 heads"):
        ssd_chunked(inp["x"], inp["dt"], inp["A"], torch.zeros(1, 10, 3, 5), inp["C"], 4)
    with pytest.raises(ConfigError, match="dt has shape"):
        ssd_chunked(inp["x"], inp["dt"][:, :5], inp["A"], inp["B"], inp["C"], 4)
    with pytest.raises(ConfigError, match="chunk must be >= 1"):
        ssd_chunked(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 0)


# ---------------------------------------------------------------- the block


def _block(dtype: torch.dtype = F64, **kw) -> Mamba2:
    torch.manual_seed(0)
    base = {"d_state": 4, "headdim": 8, "chunk": CHUNK}
    block = Mamba2(16, **{**base, **kw}).to(dtype)
    with torch.no_grad():  # away from init's ones and zeros so that every term is exercised
        block.norm.weight.normal_(1.0, 0.3)
        block.D.normal_(1.0, 0.5)
        block.conv1d.bias.normal_(0.0, 0.3)
    return block


@pytest.fixture(params=["segments of 1 chunk", "segments of 2 chunks", "one segment"])
def segments(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The forward works a sequence in segments of whole chunks, carrying the conv window and
    the SSD state: every block test runs with one-chunk, two-chunk and whole-sequence segments."""
    per_token = {"segments of 1 chunk": 1, "segments of 2 chunks": 2, "one segment": 1 << 20}
    elems = 2 * 128 * CHUNK * per_token[request.param]  # batch 2, in_proj width < 128
    monkeypatch.setattr(m2_block, "SEGMENT_ELEMS", elems)
    return request.param


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "d_conv": 1}])
def test_block_output_and_every_gradient_match_the_token_loop(
    n: int, kw: dict, segments: str
) -> None:
    block = _block(**kw)
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(2, n, 16, generator=gen, dtype=F64).requires_grad_()
    y, y_ref = block(x), mamba2_ref(block, x)
    assert block.last_backend == "mamba2:ref"
    _assert_rel(y, y_ref, "y")
    w = torch.randn(y.shape, generator=gen, dtype=F64)
    names = ["x", *(name for name, _ in block.named_parameters())]
    leaves = [x, *block.parameters()]
    got = torch.autograd.grad((y * w).sum(), leaves)
    want = torch.autograd.grad((y_ref * w).sum(), leaves)
    for name, g, g_ref in zip(names, got, want, strict=True):
        _assert_rel(g, g_ref, f"d{name}")


def test_gradients_reach_every_parameter() -> None:
    block = _block()
    x = torch.randn(2, 3 * CHUNK + 5, 16, dtype=F64, requires_grad=True)
    block(x).square().mean().backward()
    for name, p in [*block.named_parameters(), ("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_satisfies_the_mixer_protocols_and_attributes() -> None:
    block = Mamba2(32, headdim=16, d_state=8)
    assert isinstance(block, DecodingMixer)
    assert block.causal is True and block.last_backend is None and block.aux_loss is None
    assert Mamba2(32, headdim=16, causal=False).causal is False


def test_defaults_and_init_follow_mamba_ssm() -> None:
    block = Mamba2(128)
    assert (block.d_state, block.headdim, block.expand, block.d_conv) == (64, 64, 2, 4)
    assert (block.chunk, block.ngroups, block.impl, block.nheads) == (64, 1, "ref", 4)
    assert block.in_proj.weight.shape == (2 * 256 + 2 * 64 + 4, 128)
    assert block.conv1d.weight.shape == (256 + 2 * 64, 1, 4)
    A = torch.exp(block.A_log.detach())
    assert A.min() >= 1 and A.max() <= 16
    dt = F.softplus(block.dt_bias.detach())
    assert dt.min() >= m2_block.DT_MIN * 0.999 and dt.max() <= m2_block.DT_MAX * 1.001
    torch.testing.assert_close(block.D.detach(), torch.ones(4))
    torch.testing.assert_close(block.norm.weight.detach(), torch.ones(256))
    names = {name for name, _ in block.named_parameters()}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                     "norm.weight", "out_proj.weight"}  # fmt: skip  # mamba-ssm's Mamba2 names


def test_in_proj_slices_name_the_rows_the_stages_read() -> None:
    block = _block(ngroups=2)
    sl = block.in_proj_slices
    assert list(sl) == ["z", "x", "B", "C", "dt"]
    assert sl["z"].start == 0 and sl["dt"].stop == block.in_proj.out_features
    assert all(sl[a].stop == sl[b].start for a, b in zip(list(sl)[:-1], list(sl)[1:], strict=True))
    x = torch.randn(1, 5, 16, dtype=F64)
    z, xBC, dt = block.split_in_proj(block.in_proj(x))
    W = block.in_proj.weight
    torch.testing.assert_close(z, x @ W[sl["z"]].T)
    torch.testing.assert_close(dt, x @ W[sl["dt"]].T)
    torch.testing.assert_close(xBC[..., -block.ngroups * block.d_state :], x @ W[sl["C"]].T)


def test_bf16_autocast_runs_and_stays_close_to_fp32() -> None:
    block = _block(torch.float32)
    x = torch.randn(2, 3 * CHUNK + 5, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y32 = block(x)
    torch.testing.assert_close(y.float(), y32, rtol=0.1, atol=0.05 * y32.abs().max().item())
    (g,) = torch.autograd.grad(y.float().square().sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d_model": 0}, "d_model must be a positive integer"),
        ({"d_model": 16, "d_state": 0}, "d_state"),
        ({"d_model": 16, "headdim": 7}, "not divisible by headdim 7"),
        ({"d_model": 16, "headdim": 8, "ngroups": 3}, "ngroups 3 does not divide the 4 heads"),
        ({"d_model": 16, "headdim": 8, "chunk": 0}, "chunk"),
        ({"d_model": 16, "headdim": 8, "d_conv": True}, "d_conv"),
        ({"d_model": 16, "headdim": 8, "expand": 1.5}, "expand"),
        ({"d_model": 16, "headdim": 8, "impl": "cuda"}, "valid: ref, fused"),
        ({"d_model": 16, "headdim": 8, "causal": 0}, "causal must be true or false"),
    ],
)
def test_bad_config_is_a_config_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Mamba2(**kwargs)


def test_constructor_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Mamba2(16, 4)  # type: ignore[misc]


# ---------------------------------------------------------------- no n x n anywhere


def test_nothing_saved_for_backward_grows_as_n_squared() -> None:
    block = _block(torch.float32)
    n = 1024  # n^2 / 8 = 131072 elements; the widest per-token tensor is the in-projection's
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    x = torch.randn(1, n, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    y.sum().backward()
    widest = max(block.nheads * CHUNK, block.in_proj.out_features)  # 76 per token here
    assert sizes and max(sizes) <= n * widest < n * n // 8


# ---------------------------------------------------------------- decode


def _x(B: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, n, 16, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, {"ngroups": 2, "d_conv": 1}])
def test_token_by_token_and_prefill_then_steps_match_the_forward(kw: dict, segments: str) -> None:
    block, n = _block(**kw).eval(), 3 * CHUNK + 5
    x = _x(2, n)
    with torch.no_grad():
        full = block(x)
        state = block.empty_state(2, n, x)
        steps = torch.cat([block.step(x[:, t : t + 1], state) for t in range(n)], 1)
        assert block.last_backend == "mamba2:step"
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (0, 1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, n - 1):
            y, state = block.prefill(x[:, :p], n)
            assert y.shape == (2, p, 16)
            rest = [block.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)


def test_one_sequence_decodes_the_same_alone_and_in_a_batch() -> None:
    block, x = _block().eval(), _x(3, 29)
    with torch.no_grad():
        _, both = block.prefill(x[:, :11])
        _, alone = block.prefill(x[:1, :11])
        other = x.clone()
        other[1:, 11:] = _x(2, 18, seed=7)
        for t in range(11, 29):
            batched = block.step(other[:, t : t + 1], both)
            single = block.step(x[:1, t : t + 1], alone)
            torch.testing.assert_close(batched[:1], single, rtol=0, atol=1e-12)


def test_state_shapes_bytes_and_constant_size() -> None:
    block = _block(torch.float32, ngroups=2)
    _, state = block.prefill(torch.randn(2, 10, 16))
    assert isinstance(state, Mamba2State)
    conv_dim = 32 + 2 * 2 * 4
    assert state.conv.shape == (2, conv_dim, 3) and state.ssm.shape == (2, 4, 8, 4)
    assert state.nbytes() == 4 * (2 * conv_dim * 3 + 2 * 4 * 8 * 4)  # the whole batch
    sizes = {block.prefill(torch.randn(1, n, 16))[1].nbytes() for n in (1, 9, 200)}
    assert len(sizes) == 1
    empty = block.empty_state(1, 500, torch.zeros(1, 1, 16))
    assert empty.nbytes() in sizes  # capacity does not matter: nothing grows


def test_restore_returns_to_the_snapshot_every_time() -> None:
    block, x = _block().eval(), _x(1, 30)
    with torch.no_grad():
        _, state = block.prefill(x[:, :13])
        snap = state.snapshot()
        runs = []
        for _ in range(3):
            state.restore(snap)
            runs.append(torch.cat([block.step(x[:, t : t + 1], state) for t in range(13, 30)], 1))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_states_keep_the_ssm_in_fp32_under_bf16_autocast() -> None:
    block, x = _block(torch.float32), torch.randn(2, 20, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, st = block.prefill(x)
        empty = block.empty_state(2, 0, x)
        y = block.step(x[:, :1], st)
    assert st.conv.dtype == empty.conv.dtype == torch.bfloat16
    assert st.ssm.dtype == empty.ssm.dtype == torch.float32
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_a_step_takes_one_token_and_the_leaky_control_does_not_decode() -> None:
    block = _block(torch.float32)
    state = block.empty_state(1, 0, torch.zeros(1, 1, 16))
    with pytest.raises(ConfigError, match="one token per sequence"):
        block.step(torch.zeros(1, 2, 16), state)
    with pytest.raises(ConfigError, match="causal=true"):
        _block(torch.float32, causal=False).prefill(torch.zeros(1, 4, 16))


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("n", [CHUNK + 3, 2 * CHUNK + 2])
def test_check_mixer_passes_the_causal_block(n: int) -> None:
    report = check_mixer(_block(), n=n, seeds=(0, 1))
    assert report.passed, report.summary()


@pytest.mark.parametrize("n", [CHUNK + 3, 2 * CHUNK + 2])
def test_check_mixer_catches_the_leaky_control_inside_a_chunk(n: int) -> None:
    report = check_mixer(_block(causal=False), n=n, seeds=(0,))
    assert not report.passed
    t, s = report["jacobian"].first_leak
    assert s > t and t // CHUNK == s // CHUNK  # the leak is the unmasked intra-chunk term
    assert t == 0  # the first token already reads the rest of its chunk
    assert not report["prefix"].passed and not report["perturbation"].passed


def test_the_leak_stays_inside_the_chunk() -> None:
    # the state handed between chunks is the causal one: a token never reads a later chunk
    block = _block(causal=False).eval()
    x = torch.randn(1, 3 * CHUNK, 16, dtype=F64, requires_grad=True)
    y = block(x)
    (g,) = torch.autograd.grad(y[0, CHUNK + 2].sum(), x)
    assert g[0, CHUNK + 3 : 2 * CHUNK].abs().sum() > 0  # later tokens of its own chunk
    assert g[0, 2 * CHUNK :].abs().sum() == 0  # nothing from the next chunk


# ---------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("seq", [1, 37, 64, 200, 16 * 12 + 5, 16 * 13 + 5])
def test_analytic_flops_cover_the_counted_matmuls(
    seq: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # segments of 12 chunks: at 16 * 12 + 5 the 5-token tail is a segment (and a chunk) of its
    # own, at 16 * 13 + 5 it is padded to a chunk inside a 2-chunk segment
    monkeypatch.setattr(m2_block, "SEGMENT_ELEMS", 296 * 16 * 12)
    block = Mamba2(64, headdim=16, d_state=16, chunk=16)
    assert block.in_proj.out_features == 296 and block.segment_tokens(torch.empty(1, 9, 0)) == 192
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(1, seq, 64))
    counted = counter.get_total_flops()  # the matmuls as they ran (padding included)
    analytic = block.analytic_flops(seq)
    assert counted <= analytic <= 1.25 * counted, (counted, analytic)


@pytest.mark.parametrize("tail", [5, 16 + 5])
def test_analytic_flops_count_the_last_chunk_as_it_runs(
    tail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 tokens after 12 chunks: a segment of their own, one 5-token chunk (not padded to 16);
    # 21 tokens after 12 chunks: a full chunk and a padded one in the last segment
    monkeypatch.setattr(m2_block, "SEGMENT_ELEMS", 296 * 16 * 12)
    block = Mamba2(64, headdim=16, d_state=16, chunk=16)

    def counted(seq: int) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            block(torch.randn(1, seq, 64))
        return counter.get_total_flops()

    base = 16 * 12
    grown = block.analytic_flops(base + tail) - block.analytic_flops(base)
    measured = counted(base + tail) - counted(base)
    assert measured <= grown <= 1.25 * measured, (measured, grown)


def test_decode_flops_are_constant_and_cover_the_step() -> None:
    block = Mamba2(64, headdim=16, d_state=16, chunk=16)
    assert block.decode_flops(10) == block.decode_flops(100_000) > 0
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        state = block.empty_state(1, 0, torch.zeros(1, 1, 64))
        block.step(torch.randn(1, 1, 64), state)
    assert counter.get_total_flops() <= block.decode_flops(0)
    # linear in n past one chunk, as a chunked scan is
    per_chunk = block.analytic_flops(32) - block.analytic_flops(16)
    assert block.analytic_flops(16 * 100) == pytest.approx(
        block.analytic_flops(16) + 99 * per_chunk
    )


# ---------------------------------------------------------------- the fused kernel


def _chunk_scan_stand_in(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
    dt_softplus=False, return_final_states=False,
):  # fmt: skip
    """mamba_chunk_scan_combined's contract, in our own ops (dt bias and softplus inside)."""
    assert z is None
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    y, last = ssd_chunked(x, dt, A.to(x.dtype), B, C, chunk_size, initial_states, D=D)
    return (y, last) if return_final_states else y


def test_fused_without_mamba_ssm_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m2_block, "mamba_chunk_scan_combined", None)
    with pytest.raises(UnavailableError, match=r"pip install 'hubbench\[mamba\]'"):
        Mamba2(16, headdim=8, impl="fused")
    assert "CUDA" in INSTALL_HINT


def test_fused_on_cpu_is_unavailable_and_has_no_leaky_control(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(m2_block, "mamba_chunk_scan_combined", _chunk_scan_stand_in)
    with pytest.raises(UnavailableError, match="CUDA only"):
        Mamba2(16, headdim=8, impl="fused")(torch.randn(1, 8, 16))
    with pytest.raises(ConfigError, match="leaky control"):
        Mamba2(16, headdim=8, impl="fused", causal=False)


def test_fused_wiring_with_a_stand_in_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # the stand-in shares mamba_chunk_scan_combined's signature: this checks the fused path's
    # arguments (A sign, dt bias and softplus inside, D, final state) on CPU
    monkeypatch.setattr(m2_block, "mamba_chunk_scan_combined", _chunk_scan_stand_in)
    monkeypatch.setattr(m2_block, "SEGMENT_ELEMS", 2 * 128 * CHUNK)  # one chunk per segment
    ref = _block(ngroups=2)
    fused = _block(ngroups=2, impl="fused")
    fused.load_state_dict(ref.state_dict())
    x = _x(2, 3 * CHUNK + 5)
    y, last = fused._forward(x)
    assert fused.last_backend == "mamba2:fused" and fused.segment_tokens(x) == x.shape[1]
    y_ref, last_ref = ref._forward(x)
    assert ref.segment_tokens(x) < x.shape[1]  # several segments here, one there
    # the fused path hands the kernel A in fp32, as mamba-ssm does: ~1e-7, not a wiring error
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last.ssm, last_ref.ssm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last.conv, last_ref.conv, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(
    m2_block.mamba_chunk_scan_combined is None,
    reason="needs mamba-ssm: pip install 'hubbench[mamba]'",
)
def test_fused_block_matches_ref_on_gpu() -> None:
    torch.manual_seed(0)
    ref = Mamba2(128, headdim=32, d_state=32, chunk=64).cuda()
    fused = Mamba2(128, headdim=32, d_state=32, chunk=64, impl="fused").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 300, 128, device="cuda")
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    assert fused.last_backend == "mamba2:fused"
    torch.testing.assert_close(yf, yr, rtol=2e-3, atol=2e-3)
    yr.square().mean().backward()
    yf.square().mean().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=5e-3, atol=5e-3)
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters(), strict=True):
        scale = pr.grad.abs().max().item()
        torch.testing.assert_close(pf.grad, pr.grad, rtol=5e-3, atol=5e-3 * scale, msg=name)
    _, st_ref = ref.prefill(x)
    _, st_fused = fused.prefill(x)
    torch.testing.assert_close(st_fused.ssm, st_ref.ssm, rtol=2e-3, atol=2e-3)
    assert math.isfinite(fused.analytic_flops(300))
