"""compare: cells join by identity, ratios carry CIs, real changes are flagged."""

from __future__ import annotations

import random
import re

import pytest
from synthetic_runs import grid, make_run

from hubbench.errors import ReportError
from hubbench.report.compare import change, compare_runs, to_markdown, to_rich, verdicts
from hubbench.report.load import check_schema
from hubbench.schema import metric as get_metric


def _runs(slowdown=None, shuffle=False, **kw):
    cells = grid(seqs=(1024, 4096))
    a = check_schema(make_run(cells, run_id="runA", seed=1), "A")
    if shuffle:
        cells = random.Random(0).sample(cells, len(cells))
    b = check_schema(make_run(cells, run_id="runB", seed=2, slowdown=slowdown, **kw), "B")
    return a, b


def _by_label(cmp):
    return {c.label: c for c in cmp.cells}


def test_cells_join_by_identity_not_by_position():
    a, b = _runs(slowdown={"hub-gpt": 0.15}, shuffle=True)
    cells = _by_label(compare_runs(a, b))
    assert len(cells) == len(a)
    slow = cells["hub-gpt n=4k"].ratios["tokens_per_s"]
    assert slow.point == pytest.approx(1 / 1.15, rel=0.05) and slow.high < 1
    same = cells["transformer attention=sdpa n=4k"].ratios["tokens_per_s"]
    assert same.low < 1 < same.high


def test_change_direction_follows_the_metric():
    a, b = _runs(slowdown={"hub-gpt": 0.15})
    c = _by_label(compare_runs(a, b, ["tokens_per_s", "time_median_s"]))["hub-gpt n=1k"]
    assert change(get_metric("tokens_per_s"), c.ratios["tokens_per_s"]) == -1
    assert change(get_metric("time_median_s"), c.ratios["time_median_s"]) == -1


def test_status_changes_are_shown():
    a, b = _runs(status={("transformer", "naive", 4096): "oom"})
    cmp = compare_runs(a, b)
    c = _by_label(cmp)["transformer attention=naive n=4k"]
    assert (c.status_a, c.status_b) == ("ok", "oom") and not c.ratios
    assert "ok → oom" in to_markdown(cmp)


def test_markdown_and_rich_render():
    a, b = _runs(slowdown={"hub-gpt": 0.15})
    cmp = compare_runs(a, b)
    md = to_markdown(cmp)
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert sum("🔴" in r for r in rows) == 2 and not any("🟢" in r for r in rows)
    assert "| hub-gpt n=1k |" in md and "[95% CI]" in md
    assert to_rich(cmp).row_count == len(cmp.cells)


def test_no_common_cells_says_which_field_differs():
    a = check_schema(make_run(grid(seqs=(1024,))), "A")
    b = check_schema(make_run(grid(seqs=(1024,), dtype="fp32"), run_id="b"), "B")
    with pytest.raises(ReportError, match="dtype: A has bf16, B has fp32"):
        compare_runs(a, b)


def test_unknown_metric():
    a, b = _runs()
    with pytest.raises(ReportError, match=r"unknown metric 'speed'; valid: .*tokens_per_s"):
        compare_runs(a, b, ["speed"])


def _shifted(shift: float, run_id: str, **kw):
    from synthetic_runs import cell, make_run

    from hubbench.report.load import check_schema

    cells = [cell("hub-gpt", 1024), cell("transformer", 1024)]
    slowdown = {"hub-gpt": shift}
    return check_schema(make_run(cells, run_id=run_id, slowdown=slowdown, noise=0.005, **kw), "x")


def test_min_effect_decides_what_counts_as_a_change():
    a, b = _shifted(0.0, "a", seed=1), _shifted(0.02, "b", seed=2)  # hub-gpt 2% slower
    strict = compare_runs(a, b, ["tokens_per_s"], min_effect=0.0)
    loose = compare_runs(a, b, ["tokens_per_s"], min_effect=0.03)
    hub = next(c for c in strict.cells if c.label.startswith("hub-gpt"))
    assert hub.ratios["tokens_per_s"].high < 1.0  # the CI excludes 1 ...
    assert verdicts(strict, hub) == "tokens/s worse"
    hub = next(c for c in loose.cells if c.label.startswith("hub-gpt"))
    assert verdicts(loose, hub) == "same"  # ... but not 1 - 3%
    md = to_markdown(loose)
    assert "| same |" in md and "1 ± 3%" in md


def test_rows_from_different_environments_join_with_a_warning():
    a = _shifted(0.0, "a", seed=1)
    b = _shifted(0.0, "b", seed=2)
    b["host"] = "elsewhere"
    cmp = compare_runs(a, b, ["tokens_per_s"])
    assert cmp.warnings == ["different environments: host: A has node1, B has elsewhere"]
    assert "⚠️ different environments: host" in to_markdown(cmp)


def test_time_derived_ratios_carry_their_ideal():
    """The same cell in two runs with the same ceilings: ideal 1x; B's ceiling halved: 2x."""
    a, b = _runs()
    cmp = compare_runs(a, b)
    cell = _by_label(cmp)["hub-gpt n=1k"]
    assert cell.ratios["tokens_per_s"].ideal == pytest.approx(1.0)
    assert cell.ratios["peak_mem_bytes"].ideal is None  # not time-derived: no ceiling
    b = b.copy()
    b["speed_of_light_s"] = b["speed_of_light_s"] / 2
    cmp = compare_runs(a, b)
    assert _by_label(cmp)["hub-gpt n=1k"].ratios["tokens_per_s"].ideal == pytest.approx(2.0)
    md = to_markdown(cmp)
    header = next(line for line in md.splitlines() if line.startswith("| cell"))
    assert header.count("ideal") == 1  # tokens/s only
    assert "| 2.000× |" in md


def _sentinel_run(run_id, seed, **kw):
    run = make_run(grid(seqs=(1024, 4096)), run_id=run_id, seed=seed, rounds=5, drift=0.02,
                   sentinel=0.012, **kw)  # fmt: skip
    return check_schema(run, run_id)


def test_compare_says_machine_changed_instead_of_worse():
    """B's machine 1.5x slower (sentinel and steps): no cell is called worse (issue 29)."""
    a, b = (_sentinel_run(r, seed, machine=m) for r, seed, m in (("a", 1, 1.0), ("b", 59, 1.5)))
    cmp = compare_runs(a, b, ["tokens_per_s"])
    called = {verdicts(cmp, c) for c in cmp.cells}
    assert len(called) == 1 and re.fullmatch(r"tokens/s: machine changed, 1\.5\d× slower", *called)
    md = to_markdown(cmp)
    assert "0 better, 0 worse beyond noise" in md and "12 not called: the machine" in md
    b = _sentinel_run("b", 60, slowdown={"hub-gpt": 0.25})
    quiet = compare_runs(a, b, ["tokens_per_s"])
    worse = {c.label for c in quiet.cells if verdicts(quiet, c) == "tokens/s worse"}
    assert worse == {"hub-gpt n=1k", "hub-gpt n=4k"} and quiet.machine.changed is False
