"""End to end through the real runner, store and `hubbench gate` (baseline mode):
the same code measured twice (A/A) passes, a planted 40% slowdown fails
(40%, not less: on this shared box round medians of one ~10 ms cell were seen to spread 8-18 ms,
so a 15% slowdown was missed in 2 of 3 tries).

One run measures three cells that differ only in `seed` (parameter initialisation, which does
not change the work a step does): A, C (planted 40% slower by gate_e2e_builder.py) and B, their
rounds interleaved by the runner as always. Each condition's row then becomes a run file of its
own with the identity of A's cell, which is what three runs measured at the same time would be;
the gate compares them as it compares any two runs (rounds resampled independently).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gate_e2e_builder import CONDITIONS, condition
from typer.testing import CliRunner

from hubbench import store
from hubbench.cli import app
from hubbench.plan import expand, load_suite
from hubbench.run.runner import run_plan

BUILDER = f"{Path(__file__).with_name('gate_e2e_builder.py')}:build"
# ~15 ms per step on one CPU thread; 12 rounds x 10 timed steps per condition (8 x 6 once gave a
# CI of [0.53, 0.96] on a 40% slowdown in CI: inconclusive, not failed)
SUITE = """
description = "gate end-to-end test: one tiny hub-gpt cell, conditions interleaved by seed"
[measure]
rounds = 12
warmup = 2
repeats = 10
timeout_s = 120
[defaults]
device = "cpu"
threads = 1
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
seed = [0, 1, 2]
"""


def _as_run(row: dict, canonical: dict, label: str, directory: Path) -> Path:
    """One condition's row as a run file of its own, with the canonical cell's identity."""
    identity = {k: canonical[k] for k in ("seed", "cell_id", "cell_index", "config_json")}
    path = directory / "gate_e2e" / f"20260101T00000{CONDITIONS.index(label)}Z-{label * 8}.parquet"
    store.write_rows(path, [{**row, **identity, "run_id": label * 8}])
    return path


def _gate(runner: CliRunner, baseline: Path, candidate: Path, summary: Path):
    result = runner.invoke(app, ["gate", "--baseline", str(baseline), "--candidate",
                                 str(candidate), "--max-regression", "5%",
                                 "--summary", str(summary)])  # fmt: skip
    return result.exit_code, summary.read_text()


@pytest.mark.slow
def test_gate_aa_passes_and_planted_slowdown_fails(tmp_path):
    suite_file = tmp_path / "gate_e2e.toml"
    suite_file.write_text(SUITE)
    plan = expand(load_suite(suite_file))
    result = run_plan(plan, tmp_path / "raw", builder=BUILDER)
    rows = store.read_rows(result.path)
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["message"] for r in rows]
    assert [r["time_rounds"] for r in rows] == [12, 12, 12]
    by = {condition(r["seed"]): r for r in rows}
    files = {c: _as_run(by[c], by["a"], c, tmp_path / "runs") for c in CONDITIONS}
    runner = CliRunner()
    aa_code, aa_md = _gate(runner, files["a"], files["b"], tmp_path / "aa.md")
    slow_code, slow_md = _gate(runner, files["a"], files["c"], tmp_path / "slow.md")
    print(f"{aa_md}\n{slow_md}")  # evidence, shown with pytest -s
    assert aa_code == 0 and "✅ pass" in aa_md, aa_md
    assert slow_code == 1 and "❌ 1 regression(s)" in slow_md, slow_md
