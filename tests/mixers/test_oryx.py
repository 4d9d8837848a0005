"""Oryx (hubbench/mixers/oryx): the schedule, the tied share, the chunked forward against the
per-token reference (outputs and every gradient, float64), decode == forward across chunk
boundaries and mode switches, causality of the block and of its leaky control, state bytes and
FLOPs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from hubbench.errors import ConfigError
from hubbench.mixers.base import DecodingMixer
from hubbench.mixers.gdn import GatedDeltaNet
from hubbench.mixers.mamba2 import Mamba2
from hubbench.mixers.oryx import Oryx, OryxState, Schedule, oryx_ref
from hubbench.verify.causality import check_mixer

D = 32
# small bases that still exercise every shape case: GDN with d_v = 2 d_k; Mamba-2 with two key
# groups (each key head read by two value heads) and d_state != headdim (padded for SDPA)
BASES = {
    "gdn": {"base": "gdn", "expand_v": 2},
    "mamba2": {"base": "mamba2", "d_state": 8, "ngroups": 2},
}


def _oryx(base: str, seed: int = 0, jitter: float = 0.3, **kw) -> Oryx:
    """A float64 Oryx whose parameters are moved off their init (the query part's zero delta
    and unit rescale would hide a wrong use of them)."""
    torch.manual_seed(seed)
    opts = {"attn_fraction": 0.4, "chunk": 8, **BASES[base], **kw}
    mod = Oryx(D, 4, **opts).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(jitter * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mod


def _x(B: int, n: int, seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, n, D, dtype=torch.float64, generator=gen)


def _modes(mod: Oryx, n: int) -> list[bool]:
    return [mod.schedule.is_attention(t) for t in range(n)]


# ---------------------------------------------------------------------------------- schedule


def _spread_chunks(f: Fraction, chunks: int) -> list[int]:
    """Independent statement of spread: the attention chunks are floor(m / f), m = 0, 1, ..."""
    if f == 0:
        return []
    out, m = [], 0
    while math.floor(m / f) < chunks:
        out.append(math.floor(m / f))
        m += 1
    return out


@pytest.mark.parametrize("f", [0.0, 0.0625, 0.1, 0.25, 0.4, 1 / 3, 0.75, 1.0])
def test_spread_places_every_period_start_and_counts_ceil(f: float) -> None:
    sched = Schedule.parse("spread", f, 4)
    frac = Fraction(f).limit_denominator(10**6)
    chunks = [c for c in range(200) if sched.chunk_in_attention(c)]
    assert chunks == _spread_chunks(frac, 200)
    for M in (1, 2, 7, 16, 33, 200):  # at least one attention chunk, and exactly the fraction
        assert sum(c < M for c in chunks) == math.ceil(M * frac)


def test_spread_hand_written_cases() -> None:
    assert [c for c in range(40) if Schedule.parse("spread", 1 / 16, 64).chunk_in_attention(c)] == [
        0,
        16,
        32,
    ]
    assert [c for c in range(12) if Schedule.parse("spread", 0.4, 8).chunk_in_attention(c)] == [
        0,
        2,
        5,
        7,
        10,
    ]
    # 0.1 is read as 1/10 exactly, not the double just above it (which would put chunk 9 first)
    assert [c for c in range(31) if Schedule.parse("spread", 0.1, 8).chunk_in_attention(c)] == [
        0,
        10,
        20,
        30,
    ]
    sched = Schedule.parse("spread", 1 / 16, 64)
    assert [sched.is_attention(t) for t in (0, 63, 64, 1023, 1024, 1087, 1088)] == [
        True, True, False, False, True, True, False,
    ]  # fmt: skip


def test_first_and_prefill_policies() -> None:
    first = Schedule.parse("first:2", 0.0625, 8)
    assert [t for t in range(40) if first.is_attention(t)] == list(range(16))
    prefill = Schedule.parse("prefill:13", 0.5, 8)  # token-granular; attn_fraction unused
    assert [t for t in range(40) if prefill.is_attention(t)] == list(range(13))
    assert prefill.pieces(0, 40) == [(0, 8), (8, 13)]
    assert Schedule.parse("first:0", 1.0, 8).pieces(0, 40) == []


@pytest.mark.parametrize("policy", ["spread", "first:3", "prefill:21", "prefill:0"])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 45])
def test_pieces_are_the_attention_positions_cut_at_chunks(policy: str, n: int) -> None:
    sched = Schedule.parse(policy, 0.4, 8)
    pieces = sched.pieces(0, n)
    covered = [t for a, b in pieces for t in range(a, b)]
    assert covered == [t for t in range(n) if sched.is_attention(t)]
    assert all(a < b and a // 8 == (b - 1) // 8 for a, b in pieces)
    for cut in range(n + 1):  # a prompt split anywhere gives the same positions
        assert sched.pieces(0, cut) + sched.pieces(cut, n) == [
            (a, b) for p in pieces for a, b in [(p[0], min(p[1], cut)), (max(p[0], cut), p[1])]
            if a < b
        ]  # fmt: skip
    assert sched.attention_tokens(n) == len(covered)


@pytest.mark.parametrize(
    ("policy", "frac", "chunk"),
    [("first", 0.1, 8), ("prefill:", 0.1, 8), ("prefill:-3", 0.1, 8), ("every", 0.1, 8),
     ("spread", 1.5, 8), ("spread", -0.1, 8), ("spread", True, 8), ("spread", 0.1, 0)],
)  # fmt: skip
def test_bad_schedules_are_config_errors(policy: str, frac: float, chunk: int) -> None:
    with pytest.raises(ConfigError):
        Schedule.parse(policy, frac, chunk)


def test_bad_constructor_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown base"):
        Oryx(D, 4, base="mamba")
    with pytest.raises(ConfigError, match=r"unknown option.*d_state.*valid: d_conv, expand_v"):
        Oryx(D, 4, base="gdn", d_state=8)
    with pytest.raises(ConfigError, match="leave headdim out"):
        Oryx(D, 4, base="mamba2", headdim=8)
    with pytest.raises(ConfigError, match="unknown option"):
        Oryx(D, 4, base="gdn", causal_conv=True)
    assert Oryx(D, 4, base="mamba2", headdim=16).block.headdim == 16  # consistent: accepted


# ---------------------------------------------------------------------------------- tied share


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_tied_share_at_d256_is_at_least_090(base: str) -> None:
    mod = Oryx(256, 4, base=base)
    share = mod.tied_share()
    assert 0.9 <= share < 1.0
    total = sum(p.numel() for p in mod.parameters())
    own = sum(mod.block.recurrence_only().values()) + sum(p.numel() for p in mod.query.parameters())
    assert share == pytest.approx(1 - own / total)


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_the_mode_specific_parameters_are_what_each_mode_uses(base: str) -> None:
    """The tied share's declaration, checked by gradients: outputs of attention-mode tokens do
    not depend on the recurrence's own parameters, outputs of recurrence-mode tokens not on the
    query part, and each mode moves every shared parameter."""
    mod = _oryx(base)
    x = _x(2, 29)
    y = mod(x)
    att = torch.tensor(_modes(mod, 29))
    named = dict(mod.named_parameters())
    rec_only = {f"block.{k.split('[')[0]}" for k in mod.block.recurrence_only()}
    att_only = {f"query.{k}" for k, _ in mod.query.named_parameters()}
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    for mode_mask, not_used in ((att, rec_only), (~att, att_only)):
        loss = (y * weight)[:, mode_mask].sum()
        grads = torch.autograd.grad(loss, list(named.values()), retain_graph=True,
                                    allow_unused=True)  # fmt: skip
        for (name, p), g in zip(named.items(), grads, strict=True):
            g = torch.zeros_like(p) if g is None else g
            if name == "block.in_proj.weight":  # Mamba-2: only the dt rows are the recurrence's
                rows = mod.block.in_proj_slices["dt"]
                dt, other = g[rows], torch.cat([g[: rows.start], g[rows.stop :]])
                assert (dt.abs().max() == 0) == (not_used is rec_only), name
                assert other.abs().max() > 0, name
            elif name in not_used:
                assert g.abs().max() == 0, f"{name} moves a mode that should not use it"
            elif name not in rec_only | att_only:
                assert g.abs().max() > 0, f"shared {name} is not used by this mode"


# ---------------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_attn_fraction_zero_is_the_base_exactly(base: str) -> None:
    mod = _oryx(base, attn_fraction=0.0).eval()
    opts = {k: v for k, v in BASES[base].items() if k != "base"}
    if base == "gdn":
        ref = GatedDeltaNet(D, 4, chunk=8, **opts)
    else:
        ref = Mamba2(D, chunk=8, headdim=mod.block.headdim, **opts)
    ref.double().load_state_dict(mod.block.state_dict())
    x = _x(2, 29)
    with torch.no_grad():
        assert torch.equal(mod(x), ref(x))


CASES = {
    # name: (base, options, n, input scale)
    "gdn-spread": ("gdn", {}, 29, 1.0),
    "gdn-first": ("gdn", {"policy": "first:2"}, 21, 1.0),
    "gdn-prefill-mid-chunk": ("gdn", {"policy": "prefill:13"}, 22, 1.0),
    "gdn-all-attention": ("gdn", {"attn_fraction": 1.0}, 19, 1.0),
    "gdn-shorter-than-a-chunk": ("gdn", {"chunk": 16}, 11, 1.0),
    "gdn-large-inputs": ("gdn", {}, 27, 30.0),
    "mamba2-spread": ("mamba2", {}, 29, 1.0),
    "mamba2-prefill-mid-chunk": ("mamba2", {"policy": "prefill:13"}, 22, 1.0),
    "mamba2-all-attention": ("mamba2", {"attn_fraction": 1.0}, 19, 1.0),
    "mamba2-one-group": ("mamba2", {"ngroups": 1, "d_state": 16}, 25, 1.0),
    "mamba2-large-inputs": ("mamba2", {}, 27, 30.0),
}


def _sharp(mod: Oryx) -> None:
    """Adversarial: near-argmax softmax (temperature 60) and strong decays."""
    with torch.no_grad():
        mod.query.log_temperature.fill_(math.log(60.0))
        mod.block.A_log.add_(2.0)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_the_per_token_reference(name: str) -> None:
    base, opts, n, scale = CASES[name]
    mod = _oryx(base, **opts)
    if scale > 1:
        _sharp(mod)
    x = _x(3, n, scale=scale).requires_grad_()
    params = [x, *mod.parameters()]
    y = mod(x)
    ref = oryx_ref(mod, x, _modes(mod, n))
    rel = ((y - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-10, rel
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    got = torch.autograd.grad((y * weight).sum(), params, allow_unused=True)
    # the reference never touches the recurrence's gates when every token is in attention
    want = torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)
    names = ["x", *(k for k, _ in mod.named_parameters())]
    for k, g, w, p in zip(names, got, want, params, strict=True):
        g = torch.zeros_like(p) if g is None else g
        w = torch.zeros_like(p) if w is None else w
        err = ((g - w).abs().max() / w.abs().max().clamp_min(1e-300)).item()
        assert err <= 1e-10, f"{name}: grad of {k} off by {err:.2e}"


def test_mamba2_in_segments_matches_the_reference_the_base_and_decoding(monkeypatch) -> None:
    """Mamba-2's forward runs in segments of whole chunks carrying conv context and state: with
    segments of 2 chunks the block still matches the reference, the base (at f = 0, bitwise)
    and its own decoding."""
    monkeypatch.setattr(Mamba2, "segment_tokens", lambda self, x: 2 * self.chunk)
    mod, n = _oryx("mamba2"), 37
    x = _x(2, n).requires_grad_()
    y = mod(x)
    ref = oryx_ref(mod, x, _modes(mod, n))
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-10
    (gy,) = torch.autograd.grad(y.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), x)
    assert ((gy - gr).abs().max() / gr.abs().max()).item() <= 1e-10
    with torch.no_grad():
        y = y.detach()
        for p in (5, 16, 17, 33):
            head, state = mod.prefill(x[:, :p], n)
            rest = [mod.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([head, *rest], 1), y, rtol=0, atol=1e-12)
        base = _oryx("mamba2", attn_fraction=0.0)
        plain = Mamba2(D, chunk=8, headdim=base.block.headdim, d_state=8, ngroups=2).double()
        plain.load_state_dict(base.block.state_dict())
        assert torch.equal(base(x), plain(x))


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_the_public_sdpa_path_matches_the_reference_too(base: str, monkeypatch) -> None:
    """Where CPU's flash ops are missing (or on another device) the runs go through public
    SDPA one by one: the same outputs and gradients."""
    from hubbench.mixers.oryx import attend

    monkeypatch.setattr(attend, "_OPS", None)
    mod, n = _oryx(base), 27
    x = _x(2, n).requires_grad_()
    y = mod(x)
    assert mod.last_backend.endswith("+sdpa:flash-cpu")  # observed, here on the public call
    ref = oryx_ref(mod, x, _modes(mod, n))
    assert ((y - ref).abs().max() / ref.abs().max()).item() <= 1e-10
    out = mod.block.out_proj if base == "mamba2" else mod.block.o_proj
    params = [x, mod.query.up, mod.query.log_temperature, out.weight]
    got = torch.autograd.grad(y.square().sum(), params)
    want = torch.autograd.grad(ref.square().sum(), params)
    for g, w in zip(got, want, strict=True):
        assert ((g - w).abs().max() / w.abs().max()).item() <= 1e-10


def test_batch_rows_are_independent_sequences() -> None:
    mod = _oryx("gdn").eval()
    x = _x(3, 21)
    with torch.no_grad():
        whole = mod(x)
        for b in range(3):
            torch.testing.assert_close(mod(x[b : b + 1]), whole[b : b + 1], rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------- decoding

DECODE = {
    "gdn-spread": ("gdn", {}),
    "gdn-prefill-13": ("gdn", {"policy": "prefill:13"}),
    "mamba2-spread": ("mamba2", {}),
    "mamba2-first-1": ("mamba2", {"policy": "first:1"}),
}


@pytest.mark.parametrize("name", list(DECODE))
def test_decode_equals_forward_for_every_prompt_split(name: str) -> None:
    base, opts = DECODE[name]
    mod, n = _oryx(base, **opts).eval(), 37
    x = _x(2, n)
    with torch.no_grad():
        full = mod(x)
        state = mod.empty_state(2, 4, x)  # a small capacity: the cache grows past it
        steps = torch.cat([mod.step(x[:, t : t + 1], state) for t in range(n)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        for p in (0, 1, 7, 8, 9, 12, 13, 14, 16, 17, 23, 24, 25, 36):  # chunk and mode edges
            y, state = mod.prefill(x[:, :p], n)
            assert y.shape == (2, p, D)
            rest = [mod.step(x[:, t : t + 1], state) for t in range(p, n)]
            torch.testing.assert_close(torch.cat([y, *rest], 1), full, rtol=0, atol=1e-12)
            assert state.length == n


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_state_bytes_are_the_cache_plus_a_constant_recurrent_state(base: str) -> None:
    mod = _oryx(base).eval()
    blk = mod.block
    per_token = 8 * (blk.key_heads * blk.key_width + blk.heads * blk.value_width)  # float64
    with torch.no_grad():
        sizes = {n: mod.prefill(_x(1, n), n)[1] for n in (3, 20, 50)}
    rec = {s.base.nbytes() for s in sizes.values()}
    assert len(rec) == 1 and rec.pop() > 0
    for n, s in sizes.items():
        assert isinstance(s, OryxState) and s.kv_nbytes() == n * per_token
        assert s.nbytes() == s.kv_nbytes() + s.base.nbytes()


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_restore_returns_to_the_snapshot_every_time(base: str) -> None:
    mod, x = _oryx(base).eval(), _x(1, 30)
    with torch.no_grad():
        _, state = mod.prefill(x[:, :13], 14)
        snap = state.snapshot()
        runs = []
        for _ in range(3):
            state.restore(snap)
            runs.append(torch.cat([mod.step(x[:, t : t + 1], state) for t in range(13, 30)], 1))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_an_empty_sequence_gives_an_empty_output_and_the_empty_state(base: str) -> None:
    mod, x = _oryx(base).eval(), _x(2, 0)
    with torch.no_grad():
        assert mod(x).shape == (2, 0, D)
        y, state = mod.prefill(x, 5)
    assert y.shape == (2, 0, D) and state.length == 0 and state.kv_nbytes() == 0
    assert state.base.nbytes() == mod.empty_state(2, 5, x).base.nbytes()


def test_leaky_control_and_bad_steps_refuse_to_decode() -> None:
    with pytest.raises(ConfigError, match="causal=true"):
        Oryx(D, 4, causal=False).prefill(torch.zeros(1, 4, D))
    mod = Oryx(D, 4)
    with pytest.raises(ConfigError, match=r"one token per sequence, shape \(B, 1, 32\)"):
        mod.step(torch.zeros(1, 2, D), mod.empty_state(1, 4, torch.zeros(1, 1, D)))


def test_bf16_autocast_keeps_fp32_recurrent_state_and_bf16_cache() -> None:
    x = torch.randn(2, 20, D)
    for base in ("gdn", "mamba2"):
        mod = Oryx(D, 4, chunk=8, attn_fraction=0.5, **{k: v for k, v in BASES[base].items()
                                                       if k != "base"}, base=base)  # fmt: skip
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = mod.prefill(x)
            z = mod.step(x[:, :1], state)
            assert mod(x).dtype == y.dtype == z.dtype == torch.bfloat16
        assert state.keys.dtype == state.values.dtype == torch.bfloat16
        assert state.base.ssm.dtype == torch.float32
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_a_bf16_autocast_train_step_reaches_every_parameter(base: str) -> None:
    opts = {k: v for k, v in BASES[base].items() if k != "base"}
    mod = Oryx(D, 4, base=base, chunk=8, attn_fraction=0.5, **opts)
    assert isinstance(mod, DecodingMixer) and mod.aux_loss is None and mod.causal
    x = torch.randn(2, 21, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())


# ---------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
@pytest.mark.parametrize(("n", "chunk"), [(13, 8), (20, 8), (21, 5)])
def test_check_mixer_passes_the_block_and_catches_its_leaky_control(
    base: str, n: int, chunk: int
) -> None:
    opts = {k: v for k, v in BASES[base].items() if k != "base"}
    torch.manual_seed(0)
    good = Oryx(16, 2, base=base, chunk=chunk, attn_fraction=0.5, **opts)
    report = check_mixer(good, n=n, seeds=(0,), checks=("jacobian", "perturbation", "prefix"))
    assert report.passed, report.summary()
    torch.manual_seed(0)
    leaky = Oryx(16, 2, base=base, chunk=chunk, attn_fraction=0.5, causal=False, **opts)
    report = check_mixer(leaky, n=n, seeds=(0,), checks=("jacobian", "perturbation", "prefix"))
    assert not report.passed
    t, s = report["jacobian"].first_leak
    # the first leak: token 0 (chunk 0 runs in attention) reads token 1 of its own chunk
    assert (t, s) == (0, 1)
    assert report["perturbation"].first_leak is not None


def test_no_saved_tensor_is_n_by_n() -> None:
    """All-attention at n = 512, chunk 16: nothing kept for backward has two dimensions near n
    (the widest feature axis here is 136; the attention keeps no mask, only per-run outputs and
    log-sum-exps beside views of the keys and values)."""
    mod = Oryx(D, 4, chunk=16, attn_fraction=1.0)
    x = torch.randn(1, 512, D, requires_grad=True)
    shapes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mod(x).sum()
    assert shapes.count((1, 4, 16)) == 32  # every run's log-sum-exp: the attention is seen
    assert not [s for s in shapes if sum(dim >= 200 for dim in s) >= 2]


# ---------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("base", ["gdn", "mamba2"])
def test_flops_count_the_base_and_each_attention_token_read(base: str) -> None:
    opts = {k: v for k, v in BASES[base].items() if k != "base"}
    none = Oryx(D, 4, base=base, chunk=8, attn_fraction=0.0, **opts)
    first = Oryx(D, 4, base=base, chunk=8, policy="first:1", **opts)
    blk = first.block
    key = 3 * blk.key_heads * blk.key_width  # the attention keys' normalisation
    assert none.analytic_flops(40) == blk.analytic_flops(40) + 40 * key
    HD = blk.heads * (blk.key_width + blk.value_width)
    q = 2 * D * 16 + 2 * 16 * blk.heads * blk.key_width + 6 * blk.heads * blk.key_width
    reads = sum(2 * (t + 1) * HD for t in range(8))  # causal: token t reads t + 1 keys
    assert first.analytic_flops(40) == none.analytic_flops(40) + 8 * q + reads
    leaky = Oryx(D, 4, base=base, chunk=8, policy="first:1", causal=False, **opts)
    assert leaky.analytic_flops(40) == none.analytic_flops(40) + 8 * q + 8 * 2 * 8 * HD
    # decode: flat in recurrence mode, one more key per token in attention mode
    assert first.decode_flops(100) == first.decode_flops(10_000) == none.decode_flops(5)
    assert first.decode_flops(5) - first.decode_flops(4) == 2 * HD


def test_last_backend_says_what_ran() -> None:
    mod = Oryx(D, 4, chunk=8, attn_fraction=0.0)
    mod(torch.randn(1, 10, D))
    assert mod.last_backend == "oryx:gdn:chunked"
    mod = Oryx(D, 4, chunk=8, base="mamba2", attn_fraction=0.5)
    mod(torch.randn(1, 10, D))
    assert mod.last_backend.startswith("oryx:mamba2:ref+sdpa")
