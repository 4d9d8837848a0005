"""The gate on synthetic samples: A/A passes, a planted 15% slowdown fails, bad input is exit 2."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, grid, make_run

from hubbench.errors import ReportError
from hubbench.plan import GateRule
from hubbench.report.gate import (
    gate_baseline,
    gate_ratios,
    to_markdown,
    to_rich,
)
from hubbench.report.load import check_schema
from hubbench.report.summary import write_summary


def _run(run_id="a", seed=1, **kw):
    return check_schema(make_run(grid(seqs=(1024, 4096)), run_id=run_id, seed=seed, **kw), run_id)


def _verdicts(result):
    return {c.name: c.verdict for c in result.checks}


@pytest.mark.parametrize("seed", range(5))
def test_aa_passes(seed):
    result = gate_baseline(_run(seed=seed), _run("b", seed=seed + 100), max_regression=0.05)
    assert result.passed, to_markdown(result)
    assert set(_verdicts(result).values()) == {"pass"}


@pytest.mark.parametrize("seed", range(5))
def test_planted_slowdown_fails_only_where_planted(seed):
    slow = _run("b", seed=seed + 100, slowdown={"hub-gpt": 0.15})
    result = gate_baseline(_run(seed=seed), slow, max_regression=0.05)
    assert not result.passed
    assert {c.name for c in result.failed} == {"hub-gpt n=1k", "hub-gpt n=4k"}


def test_small_slowdown_within_threshold_passes():
    result = gate_baseline(_run(), _run("b", seed=7, slowdown={"hub-gpt": 0.02}))
    assert result.passed


def test_lower_is_better_metric():
    slow = _run("b", seed=3, slowdown={"jamba": 0.15})
    result = gate_baseline(_run(), slow, metric="time_median_s", max_regression=0.05)
    assert {c.name for c in result.failed} == {
        "jamba attention=naive n=1k", "jamba attention=naive n=4k",
        "jamba attention=sdpa n=1k", "jamba attention=sdpa n=4k",
    }  # fmt: skip
    assert result.failed[0].max == pytest.approx(1.05) and result.failed[0].min is None


def test_wide_interval_is_inconclusive_not_a_failure():
    # 4 noisy samples: the point is 10% down but the CI reaches past the threshold
    base = _run(samples=4, noise=0.15, seed=11)
    cand = _run("b", samples=4, noise=0.15, seed=12, slowdown={"hub-gpt": 0.10})
    result = gate_baseline(base, cand, max_regression=0.05)
    verdicts = set(_verdicts(result).values())
    assert "regression" not in verdicts and "inconclusive" in verdicts


def test_cell_that_stopped_running_is_a_regression():
    cand = _run("b", seed=2, status={("transformer", "naive", 4096): "oom"})
    result = gate_baseline(_run(), cand)
    assert [c.name for c in result.failed] == ["transformer attention=naive n=4k"]
    assert "ok → oom" in result.failed[0].note


def test_a_candidate_that_lacks_baseline_cells_is_refused_unless_allowed():
    base = _run()
    cand = check_schema(make_run(grid(seqs=(1024,)), run_id="b", seed=2), "b")
    with pytest.raises(ReportError, match=r"lacks 6 of 12 baseline cells .*--allow-missing"):
        gate_baseline(base, cand)
    result = gate_baseline(base, cand, allow_missing=True)
    assert result.passed and sum(c.verdict == "missing" for c in result.checks) == 6


def test_unusable_inputs():
    base = _run()
    other = check_schema(make_run(grid(seqs=(1024,), batch=2), run_id="b"), "b")
    with pytest.raises(ReportError, match=r"no matching cells.*batch: A has 8, B has 2"):
        gate_baseline(base, other)
    dead = check_schema(
        make_run([cell("hub-gpt", 1024)], status={("hub-gpt", "sdpa", 1024): "error"}), "d"
    )
    with pytest.raises(ReportError, match="no ok cells"):
        gate_baseline(base, dead)
    with pytest.raises(ReportError, match="unknown metric 'speed'"):
        gate_baseline(base, base, metric="speed")
    one_sample = _run("c", samples=1)
    with pytest.raises(ReportError, match="no check has 3\\+ per-step samples"):
        gate_baseline(one_sample, one_sample)


RULE = GateRule(
    name="hub-gpt over transformer/sdpa at 4k",
    metric="tokens_per_s",
    numerator={"variant": "hub-gpt", "seq": 4096},
    denominator={"variant": "transformer", "attention": "sdpa", "seq": 4096},
    min=0.8,
)


def test_ratio_rules_pass_and_fail():
    run = _run()
    assert gate_ratios(run, [RULE], "throughput").passed
    strict = GateRule(**{**RULE.__dict__, "min": 1.5})
    result = gate_ratios(run, [strict], "throughput")
    assert not result.passed and result.checks[0].ci.high < 1.5
    capped = GateRule(**{**RULE.__dict__, "min": None, "max": 0.5})
    assert not gate_ratios(run, [capped], "throughput").passed


def test_ratio_rule_problems_are_unusable_input():
    run = _run()
    none = GateRule(**{**RULE.__dict__, "numerator": {"variant": "hub-gpt", "seq": 999}})
    with pytest.raises(ReportError, match="no cell matches its numerator"):
        gate_ratios(run, [none], "throughput")
    several = GateRule(**{**RULE.__dict__, "denominator": {"variant": "transformer", "seq": 4096}})
    with pytest.raises(ReportError, match="matches 2 cells; add attention"):
        gate_ratios(run, [several], "throughput")
    unknown = GateRule(**{**RULE.__dict__, "numerator": {"variant": "hub-gpt", "hubz": 8}})
    with pytest.raises(ReportError, match=r"unknown field.*hubz"):
        gate_ratios(run, [unknown], "throughput")
    with pytest.raises(ReportError, match="declares no"):
        gate_ratios(run, [], "throughput")
    failed = _run(status={("transformer", "sdpa", 4096): "oom"})
    with pytest.raises(ReportError, match="denominator cell is oom"):
        gate_ratios(failed, [RULE], "throughput")


def test_summary_is_written_and_appended_to_github(tmp_path, monkeypatch):
    step = tmp_path / "step_summary.md"
    step.write_text("earlier\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = gate_baseline(_run(), _run("b", seed=2, slowdown={"hub-gpt": 0.15}))
    md = to_markdown(result)
    write_summary(md, tmp_path / "gate.md")
    assert (tmp_path / "gate.md").read_text() == md
    assert step.read_text().startswith("earlier\n### hubbench gate (baseline): ❌ 2 regression(s)")
    assert "| hub-gpt n=4k |" in md and "≥ 0.95×" in md
    assert to_rich(result).row_count == len(result.checks)


def test_cell_that_failed_in_the_baseline_is_not_compared():
    base = _run(status={("transformer", "naive", 4096): "oom"})
    result = gate_baseline(base, _run("b", seed=2))
    check = next(c for c in result.checks if c.name == "transformer attention=naive n=4k")
    assert result.passed and check.verdict == "missing" and "baseline oom → ok" in check.note


def test_runs_from_different_environments_are_refused_unless_allowed():
    candidate = _run("b", seed=7)
    candidate["torch_version"] = "2.99.0"
    with pytest.raises(ReportError, match=r"different environments \(torch_version: A has 2\.13"):
        gate_baseline(_run(), candidate)
    allowed = gate_baseline(_run(), candidate, allow_env_mismatch=True)
    assert allowed.passed and any("torch_version" in n for n in allowed.notes)
    assert "torch_version" in to_markdown(allowed)


def test_the_noise_floor_widens_a_tighter_max_regression():
    slow = _run("b", seed=9, slowdown={"hub-gpt": 0.03}, noise=0.005)
    tight = gate_baseline(_run(noise=0.005), slow, max_regression=0.01, min_effect=0.0)
    assert {c.name for c in tight.failed} == {"hub-gpt n=1k", "hub-gpt n=4k"}
    floored = gate_baseline(_run(noise=0.005), slow, max_regression=0.01, min_effect=0.05)
    assert floored.passed and "5% drop (the larger of --max-regression 1%" in floored.threshold


def test_in_run_ratios_pair_the_rounds_of_a_pass():
    """Both sides of a ratio rule saw the same passes: pairing keeps the drift out of the CI."""
    from hubbench.report.ratios import rounds_of
    from hubbench.stats import ratio_ci

    run = _run(rounds=5, drift=0.08, noise=0.01)
    check = gate_ratios(run, [RULE], "throughput").checks[0]
    assert check.ci.paired and check.ci.rounds == (5, 5)
    num = run[(run["variant"] == "hub-gpt") & (run["seq"] == 4096)].iloc[0]
    den = run[(run["variant"] == "transformer") & (run["attention"] == "sdpa")
              & (run["seq"] == 4096)].iloc[0]  # fmt: skip
    unpaired = ratio_ci(num["tokens_per_s"], den["tokens_per_s"], rounds_of(num), rounds_of(den),
                        -1, paired=False)  # fmt: skip
    assert check.ci.high / check.ci.low < (unpaired.high / unpaired.low) ** 0.5


def test_a_partial_candidate_cell_is_not_a_regression():
    cand = _run("b", seed=3)
    cand.loc[0, "status"] = "partial"
    cand.loc[0, "message"] = "2 of 5 rounds measured; --resume measures the rest"
    with pytest.raises(ReportError, match=r"lacks 1 of 12 baseline cells"):
        gate_baseline(_run(), cand)
    result = gate_baseline(_run(), cand, allow_missing=True)
    assert result.passed and "in full: 2 of 5 rounds" in to_markdown(result)


def test_thread_counts_and_hosts_across_machines():
    """Another machine may pick another thread count: the runs still join; gate refuses that
    unless allowed, while a different host name alone (CI runners) is only noted."""
    from hubbench.report.compare import compare_runs

    base, cand = _run(), _run("b", seed=4)
    base["threads"], cand["threads"] = 8, 16
    cmp = compare_runs(base, cand)
    assert any("threads: A has 8, B has 16" in w for w in cmp.warnings)
    with pytest.raises(ReportError, match="threads: A has 8, B has 16"):
        gate_baseline(base, cand)
    assert gate_baseline(base, cand, allow_env_mismatch=True).passed
    cand["threads"], cand["host"] = 8, "runner-2"
    result = gate_baseline(base, cand)
    assert result.passed and any("host" in n for n in result.notes)


def test_ratio_checks_show_the_ideal_beside_the_measured_ratio():
    """hub-gpt / transformer-sdpa at 4096: the synthetic ceilings make the ideal 1 + 4096/4096 =
    2x; it is shown in both renderings and never changes the verdict."""
    run = _run()
    result = gate_ratios(run, [RULE], "throughput")
    (check,) = result.checks
    assert check.ci.ideal == pytest.approx(2.0)
    md = to_markdown(result)
    assert "| ideal |" in md and "| 2.000× |" in md
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(to_rich(result))
    assert "2.000×" in console.export_text()
    run["speed_of_light_s"] = float("nan")
    bare = gate_ratios(run, [RULE], "throughput")
    assert bare.checks[0].ci.ideal is None and bare.passed == result.passed
