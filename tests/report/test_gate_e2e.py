"""End to end through the real runner, store and `hubbench gate` (baseline mode):
the same code measured twice (A/A) passes, a planted 15% slowdown fails.

Why one run with interleaved cells instead of three runs back to back: on this shared 2-core
machine, two runs of the same cell seconds apart differed by 5-12% in median step time (load
from other processes), while the gate must tell apart 0% and 15% at a 5% threshold; with enough
samples for a tight CI, drift alone would fail A/A. So conditions A, C (slowed) and B alternate
cell by cell inside one worker (gate_e2e_builder.py plants the slowdown per cell), and each
condition's cells are pooled into its own run file with identical cell identity, exactly what
three runs measured at the same time would be. If a heavily loaded machine leaves the slowed
comparison inconclusive, more rounds are measured (at most MAX_BATCHES); A/A must pass at every
look.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gate_e2e_builder import CONDITIONS, condition
from typer.testing import CliRunner

from hubbench import store
from hubbench.cli import app
from hubbench.measure import summarize
from hubbench.runner import run_plan
from hubbench.suite import expand, load_suite

BUILDER = f"{Path(__file__).with_name('gate_e2e_builder.py')}:build"
ROUNDS = 8  # A, C, B cells per batch: 8 rounds x 3 conditions
MAX_BATCHES = 3
# ~15 ms per step on one CPU thread; 6 timed steps per cell -> 48 samples per condition a batch
SUITE = """
description = "gate end-to-end test: one tiny hub-gpt cell, conditions interleaved by seed"
[measure]
warmup = 2
repeats = 6
timeout_s = 120
[defaults]
device = "cpu"
variant = "hub-gpt"
mode = "fwd"
batch = 2
seq = 512
dtype = "fp32"
d_model = 64
n_layers = 2
n_heads = 2
hubs = 4
topk = 16
chunk = 32
[sweep]
seed = [{seeds}]
"""


def _pool(rows: list[dict], canonical: dict, label: str, directory: Path) -> Path:
    """One condition's cells as one run file: samples pooled, identity of the canonical cell."""
    samples = [s for r in rows for s in r["samples_s"]]
    st = summarize(samples)
    tokens = canonical["tokens_per_step"]
    row = dict(
        canonical,
        run_id=label * 8,
        samples_s=samples,
        time_median_s=st.median,
        time_min_s=st.min,
        time_p10_s=st.p10,
        time_p90_s=st.p90,
        time_mean_s=st.mean,
        time_std_s=st.std,
        time_count=st.count,
        tokens_per_s=tokens / st.median,
        tokens_per_s_p10=tokens / st.p90,
        tokens_per_s_p90=tokens / st.p10,
    )
    path = (
        directory
        / canonical["suite"]
        / f"20260101T00000{CONDITIONS.index(label)}Z-{label * 8}.parquet"
    )
    store.write_rows(path, [row])
    return path


def _gate(runner: CliRunner, baseline: Path, candidate: Path, summary: Path):
    result = runner.invoke(app, ["gate", "--baseline", str(baseline), "--candidate",
                                 str(candidate), "--max-regression", "5%",
                                 "--summary", str(summary)])  # fmt: skip
    return result.exit_code, summary.read_text()


@pytest.mark.slow
def test_gate_aa_passes_and_planted_slowdown_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker inherits it: one thread, less jitter
    suite_file = tmp_path / "gate_e2e.toml"
    suite_file.write_text(SUITE.format(seeds=", ".join(map(str, range(3 * ROUNDS)))))
    plan = expand(load_suite(suite_file))
    runner = CliRunner()
    rows: list[dict] = []
    for batch in range(MAX_BATCHES):
        result = run_plan(plan, tmp_path / f"raw{batch}", builder=BUILDER)
        new = store.read_rows(result.path)
        assert [r["status"] for r in new] == ["ok"] * len(new), [r["message"] for r in new]
        rows += new
        by = {c: [r for r in rows if condition(json.loads(r["config_json"])["seed"]) == c]
              for c in CONDITIONS}  # fmt: skip
        files = {c: _pool(by[c], by["a"][0], c, tmp_path / f"pooled{batch}") for c in CONDITIONS}
        aa_code, aa_md = _gate(runner, files["a"], files["b"], tmp_path / "aa.md")
        assert aa_code == 0, aa_md  # A/A never regresses, at any look
        slow_code, slow_md = _gate(runner, files["a"], files["c"], tmp_path / "slow.md")
        if slow_code == 1:
            break
    print(f"batches: {batch + 1}\n{aa_md}\n{slow_md}")  # evidence, shown with pytest -s
    assert "✅ pass" in aa_md
    assert slow_code == 1, slow_md
    assert "❌ 1 regression(s)" in slow_md
