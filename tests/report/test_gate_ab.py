"""gate --ab on synthetic same-run A/B rows: paired rounds, planted slowdowns, a machine that
changed in the middle of the run, sides that failed, and the tables that name both commits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from rows import full_row

from hubbench import schema
from hubbench.errors import ReportError
from hubbench.report import gate
from hubbench.report.gate_ab import gate_ab, is_ab, paired_round_ratio, trimmed_mean

CAND, BASE = "c" * 40, "b" * 40
CELLS = (("transformer", "sdpa"), ("hub-gpt", None))


def ab_run(
    *,
    slowdown: dict[str, float] | None = None,
    machine: list[float] | None = None,
    rounds: int = 8,
    steps: int = 10,
    noise: float = 0.03,
    seed: int = 0,
    status: dict[tuple[str, str], str] | None = None,
    one_sided: dict[tuple[int, str], float] | None = None,
) -> pd.DataFrame:
    """Rows of an A/B run: each cell's rounds under both sides, pass r slowed by machine[r] for
    both halves of its pair; `one_sided[(r, side)]` slows one side's round r only (a load that
    changed between the pair's halves)."""
    rng = np.random.default_rng(seed)
    machine = machine or [1.0] * rounds
    rows = []
    for i, (variant, attention) in enumerate(CELLS):
        for side, commit in (("candidate", CAND), ("baseline", BASE)):
            slow = 1 + (slowdown or {}).get(variant, 0.0) * (side == "candidate")
            by_round = [
                list(0.02 * slow * machine[r] * (one_sided or {}).get((r, side), 1.0)
                     * np.exp(rng.normal(0, noise, steps)))
                for r in range(rounds)
            ]  # fmt: skip
            flat = np.concatenate(by_round)
            st = (status or {}).get((variant, side), "ok")
            ok = st == "ok"
            rows.append(full_row(
                run_id="ab000001", suite="ci", cell_index=i, cell_id=f"{i:012d}/{side}",
                variant=variant, attention=attention, seq=512, mode="fwd_bwd", device="cpu",
                batch=1, side=side, side_commit=commit, status=st,
                message=None if ok else f"{st}: synthetic",
                time_median_s=float(np.median(flat)) if ok else None,
                tokens_per_s=512 / float(np.median(flat)) if ok else None,
                samples_s=[float(x) for x in flat] if ok else [],
                round_samples_s=by_round if ok else None,
                round_sessions=[1.0] * rounds if ok else None,
                git_commit=commit,
            ))  # fmt: skip
    return pd.DataFrame(rows, columns=list(schema.NAMES))


def verdicts(result: gate.GateResult) -> dict[str, str]:
    return {c.name: c.verdict for c in result.checks}


def test_identical_sides_pass() -> None:
    for seed in range(5):
        result = gate_ab(ab_run(seed=seed))
        assert result.passed, verdicts(result)


def test_a_planted_25pct_slowdown_fails_naming_the_variant() -> None:
    result = gate_ab(ab_run(slowdown={"hub-gpt": 0.25}))
    assert [c.name for c in result.failed] == ["hub-gpt"]
    check = result.failed[0]
    assert check.ci is not None and check.ci.paired
    assert pytest.approx(check.ci.point, rel=0.03) == 1 / 1.25
    assert check.ci.high < 0.95
    assert verdicts(result)["transformer"] == "pass"


def test_a_machine_that_slowed_down_in_the_middle_still_passes() -> None:
    """Passes 5-8 ran 1.6x slower: both halves of each pair saw it, so the ratios hold; the
    rows' own medians (what the baseline gate divides) mix the two machines."""
    machine = [1.0] * 4 + [1.6] * 4
    result = gate_ab(ab_run(machine=machine, noise=0.05))
    assert result.passed, verdicts(result)
    slowed = gate_ab(ab_run(machine=machine, noise=0.05, slowdown={"hub-gpt": 0.25}))
    assert [c.name for c in slowed.failed] == ["hub-gpt"]


def test_one_pair_split_by_a_load_change_is_trimmed_away() -> None:
    """The load came on between the two halves of one pair: that round's ratio is 1.8x off."""
    result = gate_ab(ab_run(one_sided={(3, "candidate"): 1.8}))
    assert result.passed, verdicts(result)


def test_a_failed_candidate_side_is_a_regression_a_failed_baseline_is_missing() -> None:
    run = ab_run(status={("hub-gpt", "candidate"): "error", ("transformer", "baseline"): "oom"})
    result = gate_ab(run)
    assert verdicts(result) == {"transformer": "missing", "hub-gpt": "regression"}
    assert "ok → error" in result.failed[0].note


def test_an_ordinary_run_is_refused() -> None:
    run = ab_run()
    run["side"] = None
    assert not is_ab(run)
    with pytest.raises(ReportError, match="not a same-run A/B"):
        gate_ab(run)


def test_tables_name_both_sides_and_commits() -> None:
    result = gate_ab(ab_run(slowdown={"hub-gpt": 0.25}))
    markdown = gate.to_markdown(result)
    assert "| check | baseline | candidate |" in markdown
    assert f"baseline {BASE[:12]} → candidate {CAND[:12]}" in markdown
    assert CAND in markdown and BASE in markdown  # the note gives the full commits
    assert "paired rounds" in markdown
    headers = [str(c.header) for c in gate.to_rich(result).columns]
    assert headers[1:3] == ["baseline", "candidate"]


def test_the_paired_ratio_against_a_direct_computation() -> None:
    """Three rounds whose medians are known: the point is the trimmed geometric mean of the
    round ratios (n = 3 trims nothing at 20%), raised to the time power."""
    rounds = [(np.full(10, 2.0), np.full(10, 1.0)), (np.full(10, 4.0), np.full(10, 2.0)),
              (np.full(10, 1.0), np.full(10, 1.0))]  # fmt: skip
    ci = paired_round_ratio(rounds, -1, fallback=0.0)
    expected = math.exp(-(math.log(2) + math.log(2) + 0.0) / 3)
    assert ci.point == pytest.approx(expected)
    assert ci.bootstrapped and ci.low <= ci.point <= ci.high
    assert ci.low == pytest.approx(0.5) and ci.high == pytest.approx(1.0)  # rounds' extremes
    memory = paired_round_ratio(rounds, 0, fallback=1.23)
    assert not memory.bootstrapped and memory.point == 1.23


def test_trimmed_mean_drops_the_extremes() -> None:
    values = np.array([[0.0, 1.0, 1.0, 1.0, 100.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    assert trimmed_mean(values).tolist() == [1.0, 5.0]
    assert trimmed_mean(np.array([[1.0, 3.0]])).tolist() == [2.0]


def test_too_few_steps_is_unusable_input() -> None:
    with pytest.raises(ReportError, match="paired rounds"):
        gate_ab(ab_run(steps=1, rounds=2))
