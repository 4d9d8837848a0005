"""The report's headline: its ratios are the gate's (and compare's) for the same two cells."""

from __future__ import annotations

import re

import pytest
from synthetic_runs import grid, make_run, write_run
from typer.testing import CliRunner

from hubbench import schema
from hubbench.cli import app
from hubbench.plan import GateRule
from hubbench.report import format as fmt
from hubbench.report.gate import gate_ratios
from hubbench.report.headline import headline, ratio_lines, table
from hubbench.report.html import build_html
from hubbench.report.ratios import metric_ratio

SEQS = (1024, 4096, 16384)


@pytest.fixture(scope="module")
def run():
    failed = {("transformer", "naive", 16384): "oom"}
    return make_run(grid(seqs=SEQS), rounds=4, drift=0.02, status=failed)


def _row(rows, kind):
    return getattr(next(r for r in rows if r.hub == "hub-gpt"), kind)


def test_headline_ratios_equal_the_ratio_gates_for_the_same_cells(run):
    optimised = _row(headline(run), "optimised")
    assert optimised.baseline == "transformer · sdpa:flash"
    assert [p.seq for p in optimised.points] == list(SEQS)
    for point in optimised.points:
        rule = GateRule(
            name=f"n={point.seq}",
            metric="tokens_per_s",
            numerator={"variant": "hub-gpt", "seq": point.seq},
            denominator={"variant": "transformer", "attention": "sdpa", "seq": point.seq},
            min=0.5,
        )
        (check,) = gate_ratios(run, [rule], "throughput").checks
        assert point.ci == check.ci  # every field: point, interval, samples, pairing
        assert point.ci.bootstrapped and point.ci.paired
        hub = run[(run["variant"] == "hub-gpt") & (run["seq"] == point.seq)].iloc[0]
        base = run[(run["variant"] == "transformer") & (run["attention"] == "sdpa")
                   & (run["seq"] == point.seq)].iloc[0]  # fmt: skip
        assert point.ci == metric_ratio(schema.metric("tokens_per_s"), hub, base)
        assert point.ci.point == hub["tokens_per_s"] / base["tokens_per_s"]


def test_headline_best_crossover_losses_and_gaps(run):
    native = _row(headline(run), "native")
    optimised = _row(headline(run), "optimised")
    assert native.baseline == "transformer · naive"
    assert [p.seq for p in native.points] == [1024, 4096]  # the baseline ran out of memory at 16k
    assert native.not_compared == ("n=16k: baseline oom",)
    assert optimised.best is not None and optimised.best.seq == 16384  # linear beats quadratic
    assert optimised.best.ci.point == max(p.ci.point for p in optimised.points)
    assert optimised.loses == (1024, 4096)  # the synthetic hub is slower at small n
    assert optimised.crossover is not None and optimised.crossover.kind == "cross"
    assert 4096 < optimised.crossover.n < 16384
    jamba = next(r for r in headline(run) if r.hub == "hub-jamba")
    assert jamba.native.baseline == "jamba · naive"


def test_the_optimised_baseline_is_the_fastest_that_ran(run):
    """A slower optimised backend next to sdpa (here: a flash row 30% slower) is not chosen."""
    import pandas as pd

    extra = make_run(grid(("transformer",), SEQS), run_id="r0000001", rounds=4,
                     slowdown={"transformer": 0.3})  # fmt: skip
    extra = extra[extra["attention"] == "sdpa"].assign(attention="flash",
                                                       backend_attention="flash")  # fmt: skip
    both = pd.concat([run, extra], ignore_index=True)
    assert _row(headline(both), "optimised").baseline == "transformer · sdpa:flash"
    faster = make_run(grid(("transformer",), SEQS), run_id="r0000001", rounds=4,
                      slowdown={"transformer": -0.3})  # fmt: skip
    faster = faster[faster["attention"] == "sdpa"].assign(attention="flash",
                                                          backend_attention="flash")  # fmt: skip
    both = pd.concat([run, faster], ignore_index=True)
    assert _row(headline(both), "optimised").baseline == "transformer · flash"


@pytest.mark.slow  # 1.3-2.5 s on this box: the page draws every figure of the run
def test_the_report_opens_with_the_headline(run):
    page = build_html(run)
    assert page.index("<h2>Headline</h2>") < page.index("<h2>Figures</h2>")
    section = page[page.index("<h2>Headline</h2>") : page.index("<h2>Figures</h2>")]
    best = _row(headline(run), "optimised").best
    assert fmt.ratio(best.ci) in section
    lines = re.findall(r"<tr>(.*?)</tr>", section)
    assert len(lines) == 1 + 4  # header; hub-gpt and hub-jamba against native and optimised
    assert "optimised: transformer · sdpa:flash" in section and "baseline oom" in section


def test_a_run_without_a_hub_says_so():
    page = build_html(make_run(grid(("transformer",), (1024, 4096))))
    assert "No hub variant ran next to its baseline" in page


@pytest.mark.slow  # 1.3-2.5 s on this box: the page draws every figure of the run
def test_report_prints_the_headline(results_dir, tmp_path, run):
    write_run(run, results_dir)
    result = CliRunner().invoke(
        app, ["report", "latest", "--out", str(tmp_path / "r.html"), "--results-dir",
              str(results_dir)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    best = _row(headline(run), "optimised").best
    assert "headline" in result.output and fmt.ratio(best.ci) in result.output


def test_every_headline_ratio_carries_its_ideal(run):
    """The synthetic ceiling is linear for the hub and has a quadratic term (1 + n/4096) for the
    baseline, so the ideal tokens/s ratio at n is 1 + n/4096, whatever was measured."""
    rows = headline(run)
    optimised = _row(rows, "optimised")
    for point in optimised.points:
        assert point.ci.ideal == pytest.approx(1 + point.seq / 4096)
    best = optimised.best
    lines = ratio_lines(rows)
    expected = (
        f"hub-gpt / transformer · sdpa:flash at n={fmt.fmt_seq(best.seq)}: "
        f"{fmt.times(best.ci.point)} measured, {fmt.times(1 + best.seq / 4096)} ideal"
    )
    assert expected in lines
    _, cells = table(rows)
    assert fmt.times(1 + best.seq / 4096) in next(c for c in cells if "sdpa" in c[1])


def test_the_ideal_is_left_out_where_a_cell_has_no_speed_of_light():
    df = make_run(grid(seqs=SEQS))
    df.loc[df["variant"] == "transformer", "speed_of_light_s"] = None
    rows = headline(df)
    optimised = _row(rows, "optimised")
    assert all(p.ci.ideal is None for p in optimised.points)
    gpt = [line for line in ratio_lines(rows) if line.startswith("hub-gpt / transformer")]
    assert len(gpt) == 2 and all(line.endswith(" measured") for line in gpt)
    assert fmt.ideal(optimised.best.ci) == "-"
