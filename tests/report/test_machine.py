"""The baseline gate when the machine changed between the runs (issue 29): a slower
machine, seen by the noise sentinel, makes a check inconclusive, never a failure; a real
slowdown on an unchanged machine still fails; on a changed machine it cannot be told apart."""

from __future__ import annotations

import re

import pytest
from synthetic_runs import grid, make_run, write_run
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.report.gate import gate_baseline, to_markdown
from hubbench.report.load import check_schema
from hubbench.report.machine import FLOOR, machine_change

SENTINEL = 0.012  # seconds, the sentinel's median on the synthetic machine
HUB = {"hub-gpt n=1k", "hub-gpt n=4k"}


def _run(run_id="a", seed=1, **kw):
    kw = {"rounds": 5, "drift": 0.02, "sentinel": SENTINEL, **kw}
    return check_schema(make_run(grid(seqs=(1024, 4096)), run_id=run_id, seed=seed, **kw), run_id)


def _by_verdict(result, verdict):
    return {c.name for c in result.checks if c.verdict == verdict}


@pytest.mark.parametrize("seed", range(4))
def test_quiet_aa_sees_no_change(seed):
    machine = machine_change(_run(seed=seed), _run("b", seed=seed + 50))
    assert not machine.changed and machine.tolerance >= FLOOR
    assert machine.ci.low < 1 < machine.ci.high


def test_aa_on_a_machine_one_and_a_half_times_slower_is_inconclusive_not_a_failure():
    base, slow = _run(), _run("b", seed=51, machine=1.5)
    result = gate_baseline(base, slow)
    assert result.passed and result.held == len(result.checks)
    assert _by_verdict(result, "inconclusive") == {c.name for c in result.checks}
    note = re.compile(r"the machine was 1\.(4[5-9]|5[0-5])× slower in the candidate run")
    assert all(note.fullmatch(c.note) for c in result.checks), result.checks[0].note
    md = to_markdown(result)
    assert md.startswith(f"### hubbench gate (baseline): ⚠️ {result.held} inconclusive: the mach")
    assert "Machine changed: the noise sentinel took 1." in md and "gate --ratios" in md
    # the same runs without a sentinel: the gate fails them all, which is the bug fixed here
    blind = gate_baseline(_run(sentinel=None), _run("b", seed=51, machine=1.5, sentinel=None))
    assert len(blind.failed) == len(blind.checks)


def test_a_real_slowdown_on_an_unchanged_machine_still_fails_naming_it():
    result = gate_baseline(_run(), _run("b", seed=52, slowdown={"hub-gpt": 0.25}))
    assert not result.machine.changed and result.held == 0
    assert {c.name for c in result.failed} == HUB


def test_a_real_slowdown_on_a_slower_machine_cannot_be_told_apart():
    """What the same-run A/B (issue 29 part 1) is for: the baseline gate says inconclusive."""
    result = gate_baseline(_run(), _run("b", seed=53, machine=1.5, slowdown={"hub-gpt": 0.25}))
    assert result.passed and _by_verdict(result, "inconclusive") >= HUB


def test_a_faster_machine_holds_nothing_back():
    result = gate_baseline(_run(), _run("b", seed=54, machine=0.6, slowdown={"hub-gpt": 1.0}))
    assert result.machine.changed and not result.machine.slower and result.held == 0
    assert {c.name for c in result.failed} == HUB
    assert "0.60× the baseline's time" in to_markdown(result)


def test_a_slowdown_on_a_faster_machine_is_inconclusive_never_a_pass():
    """Measured (benchmarks/gate_under_load.py, this stop): a baseline recorded while the box was
    loaded, a candidate with hub-gpt 25% slower on the quiet box 1.7x faster: every check
    passed. The faster machine explains a pass as a slower one explains a failure."""
    result = gate_baseline(_run(), _run("b", seed=60, machine=0.6, slowdown={"hub-gpt": 0.25}))
    assert result.machine.faster and result.passed and result.masked == len(result.checks)
    assert _by_verdict(result, "pass") == set()
    note = re.compile(r"the machine was 1\.[67]\d× faster in the candidate run: a slowdown could "
                      r"hide behind it")  # fmt: skip
    assert all(note.fullmatch(c.note) for c in result.checks), result.checks[0].note
    assert to_markdown(result).startswith("### hubbench gate (baseline): ⚠️ 12 inconclusive")


def test_a_cell_that_stopped_running_fails_on_any_machine():
    slow = _run("b", seed=55, machine=1.5, status={("transformer", "naive", 4096): "oom"})
    result = gate_baseline(_run(), slow)
    assert [c.name for c in result.failed] == ["transformer attention=naive n=4k"]


def test_other_thread_counts_are_a_changed_machine():
    base, cand = _run(), _run("b", seed=56, machine=1.5)
    cand["threads"] = 8
    result = gate_baseline(base, cand, allow_env_mismatch=True)
    assert result.passed and result.machine.factor is None
    assert result.checks[0].note.startswith("the machine changed in the candidate run (threads")


def test_cli_exits_0_on_a_slower_machine_and_1_on_a_real_slowdown(tmp_path):
    results = tmp_path / "results"
    a = write_run(_run("aaaa0001"), results, "20250101T0000Z")
    b = write_run(_run("bbbb0002", seed=57, machine=1.5), results, "20250102T0000Z")
    c = write_run(_run("cccc0003", seed=58, slowdown={"hub-gpt": 0.25}), results, "20250103T0000Z")
    runner = CliRunner()

    def gate(candidate):
        return runner.invoke(app, ["gate", "--baseline", str(a), "--candidate", str(candidate),
                                   "--results-dir", str(results), "--wide"])  # fmt: skip

    held = gate(b)
    assert held.exit_code == 0, held.output
    text = " ".join(held.output.split())
    assert "gate inconclusive" in text and "slower in the candidate run" in text
    assert "Rerun both on a quiet machine" in text and "gate --ratios" in text
    failed = gate(c)
    assert failed.exit_code == 1 and "hub-gpt n=1k" in failed.output
    d = write_run(_run("dddd0004", seed=61, machine=0.6, slowdown={"hub-gpt": 0.25}), results,
                  "20250104T0000Z")  # fmt: skip
    masked = gate(d)
    text = " ".join(masked.output.split())
    assert masked.exit_code == 0 and "gate inconclusive" in text, masked.output
    assert "would have passed" in text and "faster in the candidate run" in text
    assert "gate passed" not in text


def _sentinels(by_pass, cells=6):
    """A run's rows as far as the machine rule reads them: cell i's reading of pass r is
    by_pass[r][i] (seconds)."""
    import pandas as pd

    rows = [{"threads": 1, "host": "box", "round_sentinel_s": [p[i] for p in by_pass]}
            for i in range(cells)]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_machine_loaded_in_most_passes_is_seen_changed():
    """As measured (docs/measurement.md, 'Which gate when'): readings jump between a core of
    its own (12 ms) and a shared one (16.5 ms), one pass in five quiet. Resampling the five
    passes leaves the interval at 1.00, which hid a 1.31x slower machine; the readings do not."""
    import numpy as np

    from hubbench.stats import ratio_ci

    jitter = np.random.default_rng(0).normal(0, 0.003, (5, 6))  # (passes, cells)
    quiet = 0.012 * np.exp(jitter)
    loaded = np.vstack([0.012 * np.exp(jitter[:1]), 0.0165 * np.exp(jitter[1:])])
    machine = machine_change(_sentinels(quiet), _sentinels(loaded))
    assert machine.slower and machine.ci.low > 1 + FLOOR, machine.ci
    assert machine.factor == pytest.approx(0.0165 / 0.012, rel=0.02)
    by_pass = ratio_ci(np.median(loaded), np.median(quiet), list(loaded), list(quiet), 1)
    assert by_pass.low <= 1 + FLOOR  # what the rule would have said with passes as rounds


def test_the_load_average_is_said_beside_a_change_never_as_one():
    base, slow = _run(), _run("b", seed=62, machine=1.5)
    for df, load in ((base, 0.4), (slow, 6.8)):
        df["round_load_1m_start"] = [[load] * 5 for _ in range(len(df))]
    machine = machine_change(base, slow)
    assert machine.reasons[-1] == (
        "load average (1 min): median 0.4 in the baseline run, 6.8 in the candidate's"
    )
    quiet = _run("c", seed=63)
    quiet["round_load_1m_start"] = [[6.8] * 5 for _ in range(len(quiet))]
    assert not machine_change(base, quiet).changed  # a load alone changes nothing
