"""The quality mode end to end: training drives the loss down, evaluation fills the row, the
row goes through the runner, the store, the run table and the gate's value rules."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.models import build
from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.variants import make_config
from hubbench.quality.train import lr_factor, train_and_evaluate

SMALL = dict(d_model=32, n_layers=2, n_heads=2, vocab=32)


def cell(variant: str, task: str = "mqar", updates: int = 60, seq: int = 32, **config) -> Cell:
    return Cell(index=0, variant=variant, mode="quality", device="cpu", batch=16, seq=seq,
                compile=False, threads=1, config=make_config(variant, **{**SMALL, **config}),
                measure=Measure(rounds=1), task=task, kv_pairs=2, train_updates=updates,
                lr=3e-3)  # fmt: skip


def run(c: Cell, data: str | None = None):
    if data is not None:
        c = Cell(**{**c.__dict__, "data": data})
    torch.manual_seed(c.config.seed)
    return train_and_evaluate(c, build(c.variant, c.config), torch.device("cpu"))


def test_a_few_dozen_updates_drive_the_mqar_loss_down() -> None:
    r = run(cell("transformer"))
    q = r.quality
    assert len(r.samples_s) == 60 and all(t > 0 for t in r.samples_s)
    curve = q["curve_train_loss"]
    assert len(curve) == len(q["curve_updates"]) == len(q["curve_eval"]) == 20
    assert curve[-1] < curve[0] - 0.3  # it learns (ln 32 = 3.47 nats at the start)
    assert 0 <= q["eval_accuracy"] <= 1 and q["eval_tokens"] == 1024 * 2
    assert q["baseline_quality"] == pytest.approx(1 / 15)
    assert q["causal_check"] == "pass" and q["bits_per_byte"] is None
    assert q["routing_precision"] is None  # no router
    assert q["converged"] == (q["eval_accuracy"] >= 0.99)


@pytest.mark.slow  # two hub-gpt trainings: 4-5 s
def test_hub_models_get_routing_precision_and_the_bidirectional_one_is_flagged() -> None:
    q = run(cell("hub-gpt", updates=20, hubs=4, topk=4, chunk=8)).quality
    for key in ("routing_precision", "routing_recall", "routing_precision_random"):
        assert 0 <= q[key] <= 1, key
    assert len(q["routing_precision_layers"]) == 2
    assert q["causal_check"] == "pass"
    leak = run(cell("hub-gpt", updates=20, hubs=4, topk=4, chunk=8, causal=False)).quality
    assert leak["causal_check"] == "not causal"


def test_the_byte_lm_beats_nothing_yet_but_reports_against_the_unigram(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(("the quick brown fox jumps over the lazy dog. " * 400).encode())
    q = run(cell("transformer", task="bytes", updates=40, vocab=256), data=str(path)).quality
    assert math.isfinite(q["bits_per_byte"]) and q["eval_accuracy"] is None
    assert q["bits_per_byte"] == pytest.approx(q["eval_loss"] / math.log(2))
    assert 3.0 < q["baseline_quality"] < 5.0  # ~27 distinct symbols, add-one smoothed
    assert str(path) in q["data_description"]


def test_the_learning_rate_warms_up_then_decays() -> None:
    total = 1000
    assert lr_factor(0, total) == pytest.approx(0.01)
    assert lr_factor(99, total) == pytest.approx(1.0)
    assert lr_factor(total - 1, total) == pytest.approx(0.1, abs=1e-3)
    values = [lr_factor(u, total) for u in range(100, total)]
    assert all(a >= b for a, b in itertools.pairwise(values))


SUITE = """
description = "tiny quality"
[measure]
timeout_s = 300
[defaults]
mode = "quality"
device = "cpu"
batch = 16
seq = 32
kv_pairs = 2
d_model = 32
n_layers = 2
n_heads = 2
vocab = 32
hubs = 4
topk = 4
chunk = 8
train_updates = 30
lr = 3e-3
task = "mqar"
[sweep]
variant = ["transformer", "hub-gpt"]
[[gate.value]]
name = "transformer learns something"
metric = "eval_accuracy"
cell = { variant = "transformer" }
min = 0.0
[[gate.value]]
name = "hub-gpt is perfect (it is not, after 30 updates)"
metric = "eval_accuracy"
cell = { variant = "hub-gpt" }
min = 0.999
"""


@pytest.mark.slow  # starts workers
def test_quality_rows_through_the_runner_store_table_and_gate(tmp_path: Path) -> None:
    suite = tmp_path / "tinyq.toml"
    suite.write_text(SUITE)
    runner = CliRunner()
    results = tmp_path / "results"
    done = runner.invoke(app, ["run", str(suite), "--results-dir", str(results)])
    assert done.exit_code == 0, done.output
    for text in ("quality", "routing P/R", "pass"):
        assert text in done.output, text
    [path] = (results / "tinyq").glob("*.parquet")
    df = pd.read_parquet(path)
    assert list(df["status"]) == ["ok", "ok"] and set(df["task"]) == {"mqar"}
    assert df["eval_accuracy"].between(0, 1).all() and (df["time_rounds"] == 1).all()
    hub = df[df["variant"] == "hub-gpt"].iloc[0]
    assert 0 <= hub["routing_precision"] <= 1 and len(hub["curve_eval"]) == 20
    assert json.loads(hub["config_json"])["hubs"] == 4
    # the gate's value rules: the hub model's perfect-recall rule fails, exit 1
    gate = runner.invoke(app, ["gate", "--ratios", "latest", "--results-dir", str(results),
                               "--suite", str(suite)])  # fmt: skip
    assert gate.exit_code == 1, gate.output
    assert "regression" in gate.output and "≥ 0.999" in gate.output
    # resume: both cells are complete, nothing is retrained
    again = runner.invoke(app, ["run", str(suite), "--results-dir", str(results), "--resume"])
    assert again.exit_code == 0, again.output
    [path2] = (results / "tinyq").glob("*.parquet")
    df2 = pd.read_parquet(path2)
    assert list(df2["eval_accuracy"]) == list(df["eval_accuracy"])


def test_task_and_data_options_plan_and_refuse(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"some text to model, " * 500)
    runner = CliRunner()
    args = ["run", "quality", "--task", "bytes", "--variant", "transformer", "--dry-run"]
    ok = runner.invoke(app, [*args, "--data", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "task=bytes" in " ".join(ok.output.split()) and path.name in ok.output
    bad = runner.invoke(app, [*args, "--data", str(tmp_path / "missing.txt")])
    assert bad.exit_code == 2 and "--data" in bad.stderr and "missing.txt" in bad.stderr
