"""The four commands through Typer's CliRunner: exit codes, messages, files written."""

from __future__ import annotations

import base64
import re

import pytest
from synthetic_runs import cell, grid, make_run, write_run
from typer.testing import CliRunner

from hubbench.cli import app

SEQS = (1024, 4096)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def runs(results_dir):
    """Baseline A, an A/A re-run, and a run with hub-gpt planted 15% slower."""
    a = write_run(
        make_run(grid(seqs=SEQS), run_id="aaaa0001", seed=1), results_dir, "20250101T0000Z"
    )
    aa = write_run(
        make_run(grid(seqs=SEQS), run_id="bbbb0002", seed=2), results_dir, "20250102T0000Z"
    )
    slow = make_run(grid(seqs=SEQS), run_id="cccc0003", seed=3, slowdown={"hub-gpt": 0.15})
    slow_path = write_run(slow, results_dir, "20250103T0000Z")
    return {"a": a, "aa": aa, "slow": slow_path}


def _invoke(runner, results_dir, *args):
    return runner.invoke(app, [*args, "--results-dir", str(results_dir)])


def test_gate_aa_passes_and_slowdown_fails(runner, results_dir, runs, tmp_path):
    ok = _invoke(runner, results_dir, "gate", "--baseline", str(runs["a"]), "--candidate",
                 "bbbb0002", "--max-regression", "5%", "--summary",
                 str(tmp_path / "ok.md"))  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "gate passed" in ok.output
    assert (tmp_path / "ok.md").read_text().startswith("### hubbench gate (baseline): ✅ pass")
    bad = _invoke(runner, results_dir, "gate", "--baseline", str(runs["a"]), "--candidate",
                  "cccc0003", "--summary", str(tmp_path / "bad.md"))  # fmt: skip
    assert bad.exit_code == 1, bad.output
    assert "2 check(s) regressed beyond noise: hub-gpt n=1k, hub-gpt n=4k" in bad.output
    assert "❌ 2 regression(s)" in (tmp_path / "bad.md").read_text()


def test_gate_candidate_defaults_to_latest_of_the_suite(runner, results_dir, runs):
    result = _invoke(runner, results_dir, "gate", "--baseline", str(runs["a"]))
    assert result.exit_code == 1  # the latest run is the slowed one


def test_gate_unusable_input_exits_2_with_the_reason(runner, results_dir, runs, tmp_path):
    missing = _invoke(runner, results_dir, "gate", "--baseline", str(tmp_path / "none.parquet"),
                      "--summary", str(tmp_path / "s.md"))  # fmt: skip
    assert missing.exit_code == 2 and "baseline: run file" in missing.output
    assert "unusable input" in (tmp_path / "s.md").read_text()
    metric = _invoke(runner, results_dir, "gate", "--baseline", str(runs["a"]), "--metric", "nope")
    assert metric.exit_code == 2 and "unknown metric 'nope'" in metric.output
    neither = _invoke(runner, results_dir, "gate")
    assert neither.exit_code == 2 and "--baseline RUN" in neither.output
    pct = _invoke(
        runner, results_dir, "gate", "--baseline", str(runs["a"]), "--max-regression", "5"
    )
    assert pct.exit_code == 2 and "ambiguous" in pct.output
    v2 = write_run(make_run(grid(seqs=SEQS), run_id="dddd0004", schema_version=99), results_dir)
    schema = _invoke(
        runner, results_dir, "gate", "--baseline", str(runs["a"]), "--candidate", str(v2)
    )
    assert schema.exit_code == 2 and "schema mismatch" in schema.output
    other = write_run(make_run(grid(seqs=(512,)), run_id="eeee0005"), results_dir, "20240101T0000Z")
    none = _invoke(
        runner, results_dir, "gate", "--baseline", str(runs["a"]), "--candidate", str(other)
    )
    assert none.exit_code == 2 and "no matching cells" in none.output


def test_compare_markdown(runner, results_dir, runs, tmp_path):
    md_file = tmp_path / "cmp.md"
    result = _invoke(runner, results_dir, "compare", "aaaa0001", "cccc0003", "--format", "md",
                     "--markdown", str(md_file))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == md_file.read_text().strip()
    assert "🔴 **0.8" in result.output
    table = _invoke(runner, results_dir, "compare", "aaaa0001", "bbbb0002")
    assert table.exit_code == 0 and "B / A by cell" in table.output


def test_no_runs_found(runner, results_dir):
    for cmd in (["plot"], ["report"], ["gate", "--ratios", "latest"]):
        result = _invoke(runner, results_dir, *cmd)
        assert result.exit_code == 2, cmd
        assert "no runs found" in result.output


def test_plot_writes_files_and_explains_skipped_kinds(runner, results_dir, runs, tmp_path):
    result = _invoke(runner, results_dir, "plot", "aaaa0001", "--kind", "speedup", "--format",
                     "png", "--out", str(tmp_path / "p"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "speedup.png").is_file()
    heat = _invoke(runner, results_dir, "plot", "--kind", "heatmap", "--out", str(tmp_path / "q"))
    assert heat.exit_code == 2 and "run `hubbench run hubs`" in heat.output


def test_plot_names_the_kinds_it_left_out_in_one_line(runner, results_dir, runs, tmp_path):
    result = _invoke(runner, results_dir, "plot", "aaaa0001", "--format", "png", "--out",
                     str(tmp_path / "p"))  # fmt: skip
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count("not drawn") == 1
    assert "not drawn: heatmap (no hubs × topk grid); --kind KIND says which suite gives it" in said
    for kind in ("state", "pareto", "curves", "recall", "convergence"):  # not this run's modes
        assert kind not in said, kind
    assert "scaling exponents" not in said  # two n per series: nothing fitted, nothing to list


def test_plot_run_with_only_failed_cells(runner, results_dir):
    dead = make_run(
        [cell("hub-gpt", 1024)], run_id="ffff0006", status={("hub-gpt", "sdpa", 1024): "error"}
    )
    write_run(dead, results_dir, "20260101T0000Z")
    result = _invoke(runner, results_dir, "plot")
    assert result.exit_code == 2 and "no ok cells (1 error)" in result.output


def test_report_is_one_self_contained_page(runner, results_dir, runs, tmp_path):
    out = tmp_path / "r.html"
    result = _invoke(runner, results_dir, "report", "cccc0003", "--out", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 4
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert not re.search(r"(src|href)=['\"]https?://", page)
    assert "NVIDIA H200" in page and "<h2>Environment</h2>" in page
    assert "<li><b>heatmap</b>: heatmap needs several hubs x topk values" in page
    assert "<b>curves</b>" not in page and "<b>state</b>" not in page  # not this run's modes


RATIO_SUITE = """
description = "gate rules for the test"
[defaults]
device = "cpu"
variant = "hub-gpt"
seq = 1024
[[gate.ratio]]
name = "hub-gpt over transformer/sdpa at 4k"
numerator = {{ variant = "hub-gpt", seq = 4096 }}
denominator = {{ variant = "transformer", attention = "sdpa", seq = 4096 }}
min = {min}
"""


def test_gate_ratios_from_a_suite_file(runner, results_dir, runs, tmp_path):
    loose, strict = tmp_path / "loose.toml", tmp_path / "strict.toml"
    loose.write_text(RATIO_SUITE.format(min=0.5))
    strict.write_text(RATIO_SUITE.format(min=2.0))
    ok = _invoke(runner, results_dir, "gate", "--ratios", "aaaa0001", "--suite", str(loose))
    assert ok.exit_code == 0, ok.output
    bad = _invoke(runner, results_dir, "gate", "--ratios", "aaaa0001", "--suite", str(strict))
    assert bad.exit_code == 1 and "hub-gpt over transformer/sdpa at 4k" in bad.output
    # without --suite the rules come from the run's suite ("throughput"), which declares none
    none = _invoke(runner, results_dir, "gate", "--ratios", "aaaa0001")
    assert none.exit_code == 2 and "declares no gate.ratio rules" in none.output


def test_gate_baseline_takes_a_run_id(runner, results_dir, runs):
    result = _invoke(runner, results_dir, "gate", "--baseline", "aaaa0001", "--candidate", "bbbb")
    assert result.exit_code == 0, result.output
    missing = _invoke(runner, results_dir, "gate", "--baseline", "zzzz")
    assert missing.exit_code == 2 and "no run 'zzzz'" in missing.output


def test_list_options_take_comma_lists_and_repeats_alike(runner, results_dir, runs, tmp_path):
    comma = _invoke(runner, results_dir, "plot", "aaaa0001", "--kind", "speedup,throughput",
                    "--format", "png", "--out", str(tmp_path / "c"))  # fmt: skip
    repeat = _invoke(runner, results_dir, "plot", "aaaa0001", "-k", "speedup", "-k", "throughput",
                     "--format", "png", "--out", str(tmp_path / "r"))  # fmt: skip
    assert comma.exit_code == repeat.exit_code == 0, comma.output + repeat.output
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["speedup.png", "throughput.png"]
    both = _invoke(runner, results_dir, "compare", "aaaa0001", "bbbb0002", "--metric",
                   "tokens_per_s,mfu", "--format", "md")  # fmt: skip
    assert both.exit_code == 0 and "B/A MFU" in both.output and "B/A peak memory" not in both.output
    bad = _invoke(runner, results_dir, "plot", "--kind", "speedup,pie")
    assert bad.exit_code == 2 and "unknown plot kind 'pie'" in bad.output


def test_pooled_plot_keeps_every_row_and_names_every_run(runner, results_dir, runs, tmp_path):
    from hubbench.report.load import load_runs
    from hubbench.report.series import build_series, facets

    pooled = load_runs(["aaaa0001", "bbbb0002"], results_dir)
    [facet] = facets(pooled)
    series = build_series(facet.df)
    assert sum(len(s.rows) for s in series) == len(pooled) == 2 * len(grid(seqs=SEQS))
    hub = [s.label for s in series if s.variant == "hub-gpt"]
    assert hub == ["hub-gpt · run=aaaa0001", "hub-gpt · run=bbbb0002"]
    out = tmp_path / "pooled"
    result = _invoke(runner, results_dir, "plot", "aaaa0001", "bbbb0002", "--kind", "speedup",
                     "--format", "svg", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    svg = (out / "speedup.svg").read_text()
    assert "aaaa0001" in svg and "bbbb0002" in svg
    # runs with different cells pool into one series per configuration
    other = write_run(make_run(grid(seqs=(8192,)), run_id="dddd0004"), results_dir)
    disjoint = load_runs(["aaaa0001", str(other)], results_dir)
    labels = [s.label for s in build_series(facets(disjoint)[0].df) if s.variant == "hub-gpt"]
    assert labels == ["hub-gpt"]


def test_memory_figure_name_does_not_depend_on_a_failed_cell(results_dir):
    from hubbench.report.plots import render

    fails = {("transformer", "naive", 4096): "oom"}
    df = make_run(grid(seqs=SEQS), status=fails)
    df.loc[df["status"] != "ok", "mem_kind"] = None  # what a failed cell records
    figures, _ = render(df, ["memory"])
    assert [f.stem for f in figures] == ["memory"]
