"""The causality checks themselves: they pass causal maps, catch each kind of leak (including
one autograd cannot see), report where, and `hubbench verify causal` turns them into exit codes."""

from __future__ import annotations

import pytest
import torch
from leaky_hubrouter import LeakyGlobalTopK
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.errors import HubbenchError
from hubbench.mixers.hubrouter import HubRouter
from hubbench.verify.causality import (
    CausalityError,
    check_causality,
    check_mixer,
    claims_causal,
    data_eps,
    default_times,
    make_inputs,
    prepared,
)


def causal_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x).cumsum(1)


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1).cumsum(1).flip(1)


def selection_leak(x: torch.Tensor) -> torch.Tensor:
    """Gates every output by whether the LAST token is positive: zero gradient into the future
    (a step function), but the value depends on it, like a leak through top-k indices."""
    gate = (x[:, -1:, :1] > 0).to(x.dtype)  # (B, 1, 1)
    return x * gate + x.cumsum(1)


def test_causal_map_passes_every_check() -> None:
    report = check_causality(causal_cumsum, d=3, n=12, seeds=(0, 1))
    assert report.passed, report.summary()
    assert [r.name for r in report.results] == ["jacobian", "perturbation", "prefix", "batch"]
    assert all(r.max_leak <= 1e-12 and r.first_leak is None and r.cases for r in report.results)


def test_anticausal_map_fails_with_first_pair() -> None:
    report = check_causality(reverse_cumsum, d=2, n=10, seeds=(0,))
    assert not report["jacobian"].passed
    assert report["jacobian"].first_leak == (0, 1)
    assert not report["perturbation"].passed and not report["prefix"].passed
    assert report["batch"].passed
    assert report["perturbation"].max_leak > 1.0  # the large perturbations show


def test_shift_reports_the_true_source_position() -> None:
    def look_ahead_two(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x[:, 2:], torch.zeros_like(x[:, :2])), 1)

    report = check_causality(look_ahead_two, d=2, n=8, seeds=(0,), checks=("jacobian",))
    assert report["jacobian"].first_leak == (0, 2)


def test_selection_leak_is_invisible_to_the_jacobian_but_caught_by_values() -> None:
    report = check_causality(selection_leak, d=2, n=10, seeds=(0, 1, 2))
    assert report["jacobian"].passed
    assert not report["perturbation"].passed
    assert not report["prefix"].passed


def test_batch_mixing_is_caught() -> None:
    report = check_causality(lambda x: x + x.mean(0, keepdim=True), d=2, n=6, seeds=(0,))
    assert report["perturbation"].passed and report["prefix"].passed
    assert not report["batch"].passed
    assert report["batch"].describe_leak() == "t=0, other sequence"


def test_nan_output_counts_as_a_leak() -> None:
    def nan_after_change(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.abs() > 50, torch.nan, 0.0).cumsum(1).flip(1)

    report = check_causality(nan_after_change, d=2, n=8, seeds=(0,), checks=("perturbation",))
    assert not report.passed


def test_default_times_cover_chunk_boundaries() -> None:
    assert {7, 8, 9, 15, 16, 17} <= set(default_times(30, chunk=8))
    assert all(0 <= t <= 28 for t in default_times(30, chunk=8))
    assert default_times(2) == [0]


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(HubbenchError, match="unknown check"):
        check_causality(causal_cumsum, d=2, n=8, checks=("speed",))
    with pytest.raises(HubbenchError, match="outside"):
        check_causality(causal_cumsum, d=2, n=8, times=(7,))
    with pytest.raises(HubbenchError, match=">= 2"):
        check_causality(causal_cumsum, d=2, n=1)


def test_check_mixer_leaves_the_callers_module_alone() -> None:
    m = HubRouter(16, 2, hubs=2, topk=2, chunk=4)
    m.train()
    report = check_mixer(m, n=12, seeds=(0,))
    assert report.passed
    assert m.training and m.in_proj.weight.dtype == torch.float32


def test_claims_causal() -> None:
    assert claims_causal(HubRouter(16, 2))
    assert not claims_causal(HubRouter(16, 2, causal=False))
    assert claims_causal(LeakyGlobalTopK(16, 2))  # it claims to be; the checks disagree


# --- the CLI ---------------------------------------------------------------------------------

runner = CliRunner()


def test_verify_causal_passes_and_prints_a_table() -> None:
    result = runner.invoke(app, ["verify", "causal", "transformer", "hub-gpt", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.count("causal: PASS") == 2
    for check in ("jac", "pert", "prefix", "batch", "verdict"):
        assert check in result.output


def test_verify_non_causal_config_is_expected_to_leak() -> None:
    result = runner.invoke(
        app, ["verify", "causal", "hub-gpt", "--seeds", "1", "--set", "causal=false"]
    )
    assert result.exit_code == 0, result.output
    assert "hub-gpt: control caught" in result.output
    assert "0 <- 1" in result.output


def test_verify_exits_1_when_a_causal_claim_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    from hubbench import models

    real = models.build

    def leaky_build(variant: str, config: object):
        model = real(variant, config)
        torch.manual_seed(0)
        for block in model.blocks:
            if block.kind == "hubrouter":
                cfg = model.config
                block.mixer = LeakyGlobalTopK(
                    cfg.d_model, cfg.n_heads, hubs=cfg.hubs, topk=cfg.topk, chunk=cfg.chunk
                )
        return model

    monkeypatch.setattr(models, "build", leaky_build)
    result = runner.invoke(app, ["verify", "causal", "hub-gpt", "--seeds", "2"])
    assert result.exit_code == CausalityError.exit_code == 1, result.output
    assert "LEAKS THE FUTURE" in result.output
    assert "leak the future: hub-gpt (perturbation" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "chunk"], "expected key=v1,v2"),
        (["--set", "chunk=4,8"], "takes one value here"),
        (["--set", "nope=1"], "not a config field"),
        (["--seq", "2"], "--seq must lie in [3, 4096]"),
        (["--seq", "100000"], "--seq must lie in [3, 4096] (got 100000)"),
    ],
)
def test_verify_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", "causal", "hub-gpt", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0


def test_verify_unknown_variant() -> None:
    result = runner.invoke(app, ["verify", "causal", "gpt5"])
    assert result.exit_code == 2
    assert "unknown variant" in result.output


# --- the probes' building blocks (issue 33) ---------------------------------------------------


def test_repeated_and_constant_inputs_repeat_exactly_and_differ_per_sequence() -> None:
    gen = torch.Generator().manual_seed(0)
    x = make_inputs("repeated", 2, 30, 4, gen)
    assert len(torch.unique(x[0], dim=0)) == 3  # a palette of 3 vectors
    assert not torch.equal(x[0], x[1])
    c = make_inputs("constant", 2, 5, 4, gen)
    assert (c == c[:, :1]).all() and not torch.equal(c[0, 0], c[1, 0])


def test_a_leak_only_on_repeated_tokens_needs_repeated_inputs() -> None:
    def counts_later_twins(x: torch.Tensor) -> torch.Tensor:
        same = (x[:, :, None] == x[:, None]).all(-1).triu(1)  # (B, n, n), s > t
        return x.cumsum(1) + same.sum(-1, keepdim=True).to(x.dtype)

    assert check_causality(counts_later_twins, d=3, n=16, seeds=(0,)).passed
    report = check_causality(counts_later_twins, d=3, n=16, seeds=(0,), inputs="repeated")
    assert not report["perturbation"].passed and not report["prefix"].passed


def test_non_finite_outputs_are_unusable_not_a_leak() -> None:
    report = check_causality(lambda x: x.cumsum(1) / 0.0, d=2, n=8, seeds=(0,))
    assert report.unusable is not None and "t=0" in report.unusable
    assert not report.passed and report.summary().startswith("unusable:")
    assert report.results and all(r.passed for r in report.results)  # no leak was claimed


def test_the_data_precision_follows_the_data_not_constants() -> None:
    table = torch.arange(4.0)  # fp32, but no data flows through it

    def fp64_with_fp32_constant(x: torch.Tensor) -> torch.Tensor:
        return x * table.double().sum()

    x = torch.randn(1, 4, 2, dtype=torch.float64)
    assert data_eps(fp64_with_fp32_constant, x)[1] == torch.finfo(torch.float64).eps
    assert data_eps(lambda x: x.float().double(), x)[1] == torch.finfo(torch.float32).eps


def test_train_mode_keeps_batch_statistics_and_turns_dropout_off() -> None:
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3))
    m = prepared(model, train=True)
    assert m.training and m[1].training and not m[0].training
    assert m[1].weight.dtype == torch.float64 and model[1].weight.dtype == torch.float32


def test_default_times_cover_every_size() -> None:
    assert {3, 4, 5, 7, 8, 9, 15, 16, 17} <= set(default_times(40, [8, 4]))
