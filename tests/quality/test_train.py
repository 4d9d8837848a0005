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
from hubbench.quality import train as train_module
from hubbench.quality.ceilings import recall_free_ceilings
from hubbench.quality.tasks import IGNORE, mqar_batch
from hubbench.quality.train import (
    Evaluation,
    lr_factor,
    make_task,
    scored_logits,
    target_loss,
    train_and_evaluate,
)

SMALL = dict(d_model=32, n_layers=2, n_heads=2, vocab=64)  # vocab > seq: Zoology's MQAR


def cell(
    variant: str, task: str = "mqar", updates: int = 60, seq: int = 32, lr: float = 3e-3, **config
) -> Cell:
    return Cell(index=0, variant=variant, mode="quality", device="cpu", batch=16, seq=seq,
                compile=False, threads=1, config=make_config(variant, **{**SMALL, **config}),
                measure=Measure(rounds=1), task=task, kv_pairs=2, train_updates=updates,
                lr=lr)  # fmt: skip


def run(c: Cell, data: str | None = None):
    if data is not None:
        c = Cell(**{**c.__dict__, "data": data})
    torch.manual_seed(c.config.seed)
    return train_and_evaluate(c, build(c.variant, c.config), torch.device("cpu"))


def test_a_few_dozen_updates_drive_the_mqar_loss_down() -> None:
    r = run(cell("transformer", updates=120, lr=1e-2))
    q = r.quality
    assert len(r.samples_s) == q["updates_run"] == 120 and all(t > 0 for t in r.samples_s)
    curve = q["curve_train_loss"]
    assert q["curve_updates"] == [50.0, 100.0, 120.0]  # every CHECK_EVERY updates and the last
    assert len(curve) == len(q["curve_eval"]) == 3 and q["val_accuracy"] == q["curve_eval"][-1]
    assert curve[-1] < curve[0] - 0.3  # it learns (ln 64 = 4.16 nats at the start)
    assert 0 <= q["eval_accuracy"] <= 1 and q["eval_tokens"] == 1024 * 2
    assert q["chance_accuracy"] == pytest.approx(1 / 31)
    assert q["recall_free_uniform"] == pytest.approx(1 / 2)
    assert q["baseline_quality"] == q["recall_free_ceiling"] >= 0.5
    assert q["recall_free_rule"] in ("uniform", "rank", "first-unrevealed", "frequent-unrevealed")
    assert q["decode_state_bytes"] == 2 * 2 * 32 * 32 * 4  # K and V, 2 layers, n 32, d 32, fp32
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


def small_cell(updates: int = 40, seed: int = 0, **config) -> Cell:
    return Cell(index=0, variant="transformer", mode="quality", device="cpu", batch=8, seq=16,
                compile=False, threads=1,
                config=make_config("transformer", d_model=16, n_layers=1, n_heads=1, vocab=40,
                                   mlp_ratio=0.0, seed=seed, **config),
                measure=Measure(rounds=1), task="mqar", kv_pairs=2, train_updates=updates,
                lr=3e-3)  # fmt: skip


def test_the_gathered_loss_is_the_full_forwards_loss_at_the_scored_positions() -> None:
    """The head runs on the scored positions only; the loss and logits must equal the full
    forward's there (float64, a model with an MLP and two heads: nothing is special-cased)."""
    c = small_cell()
    model = build("transformer", make_config("transformer", d_model=16, n_layers=2, n_heads=2,
                                             vocab=40, mlp_ratio=2.0)).double()  # fmt: skip
    t = mqar_batch(4, 16, 2, 40, torch.Generator().manual_seed(1))
    mask = t.targets != IGNORE
    full = model(t.inputs)  # (B, n, V)
    assert torch.allclose(scored_logits(model, t.inputs, mask), full[mask], atol=1e-12)
    want = torch.nn.functional.cross_entropy(full.flatten(0, 1), t.targets.flatten())
    got = target_loss(model)(t.inputs, t.targets).detach()
    assert got.dtype == torch.float64 and float(got) == pytest.approx(float(want), rel=1e-12)
    assert c.task == "mqar"


def fake_evaluate(scores: list[float], calls: list[str]):
    """An evaluate that returns `scores` in turn and records which set each call scored."""

    def evaluate(model, batches, device, autocast, route):
        calls.append("eval" if len(batches) * batches[0].inputs.shape[0] == 1024 else "val")
        acc = scores.pop(0) if scores else 0.0
        return Evaluation(1.0, acc, 100_000, None)  # so many queries that 0.991 is sure

    return evaluate


def test_training_stops_early_after_two_checks_in_a_row_sure_of_0_99(monkeypatch) -> None:
    """A lone crossing (0.995, then 0.98) does not stop it; two sure checks in a row do."""
    calls: list[str] = []
    monkeypatch.setattr(train_module, "CHECK_EVERY", 5)
    scores = [0.2, 0.995, 0.98, 0.995, 0.992, 1.0]
    monkeypatch.setattr(train_module, "evaluate", fake_evaluate(scores, calls))
    c = small_cell(updates=40)
    r = train_and_evaluate(c, build(c.variant, c.config), torch.device("cpu"))
    q = r.quality
    assert q["updates_to_solve"] == 25 == q["updates_run"] == len(r.samples_s)
    assert q["curve_updates"] == [5.0, 10.0, 15.0, 20.0, 25.0] and q["val_accuracy"] == 0.992
    assert calls == ["val"] * 5 + ["eval"]  # the evaluation set once, after training


def test_a_check_is_sure_when_the_wilson_lower_bound_clears_0_99() -> None:
    """At 2048 validation queries (128, 8) 0.9922 (seen with an evaluation of 0.9891) is not
    sure, 0.9944 is; at 1024 (64, 4) it takes 0.9961. Lower bounds by hand (z = 1.96)."""
    task = make_task(small_cell())
    assert train_module.wilson_low(0.9922, 2048) == pytest.approx(0.98736, abs=1e-5)
    assert not task.sure(Evaluation(0.1, 0.9922, 2048, None))
    assert task.sure(Evaluation(0.1, 0.9945, 2048, None))
    assert not task.sure(Evaluation(0.1, 0.9945, 1024, None))
    assert task.sure(Evaluation(0.1, 0.9962, 1024, None))
    assert not task.sure(Evaluation(0.1, None, 0, None))


def test_a_run_that_never_solves_runs_its_budget_and_records_none(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(train_module, "CHECK_EVERY", 5)
    scores = [0.5, 0.995, 0.5, 0.995, 0.989]  # never two sure checks in a row
    monkeypatch.setattr(train_module, "evaluate", fake_evaluate(scores, calls))
    c = small_cell(updates=23)
    q = train_and_evaluate(c, build(c.variant, c.config), torch.device("cpu")).quality
    assert q["updates_to_solve"] is None and q["updates_run"] == 23
    assert q["curve_updates"] == [5.0, 10.0, 15.0, 20.0, 23.0] and q["val_accuracy"] == 0.989
    assert calls == ["val"] * 5 + ["eval"]


def test_validation_training_and_evaluation_streams_are_disjoint_and_seeded() -> None:
    """A seed changes the weights and every data stream; validation and evaluation differ."""
    a, b = make_task(small_cell(seed=0)), make_task(small_cell(seed=1))
    first = a.train_batch(torch.Generator().manual_seed(0)).inputs
    assert not torch.equal(first, b.train_batch(torch.Generator().manual_seed(1)).inputs)
    for x, y in ((a.validation_batches(), b.validation_batches()),
                 (a.eval_batches(), b.eval_batches()),
                 (a.validation_batches(), a.eval_batches())):  # fmt: skip
        assert not torch.equal(x[0].inputs, y[0].inputs)
    c0, c1 = small_cell(seed=0), small_cell(seed=1)
    w0 = build(c0.variant, c0.config).embed.weight
    w1 = build(c1.variant, c1.config).embed.weight
    assert not torch.equal(w0, w1)


def test_the_recorded_ceiling_is_the_one_of_the_evaluation_set() -> None:
    c = small_cell()
    task = make_task(c)
    values = task.extra_values()
    direct = recall_free_ceilings(task.eval_batches(), 2)
    assert values["recall_free_ceiling"] == direct.ceiling == task.baseline
    assert values["recall_free_uniform"] == pytest.approx(0.5)


def test_the_legacy_layout_runs_by_name_and_records_its_shortcut() -> None:
    c = Cell(**{**small_cell(updates=5).__dict__, "task": "mqar-legacy", "seq": 64, "kv_pairs": 4,
                "config": make_config("transformer", d_model=16, n_layers=1, n_heads=1,
                                      vocab=17, mlp_ratio=0.0)})  # fmt: skip
    q = train_and_evaluate(c, build(c.variant, c.config), torch.device("cpu")).quality
    assert "legacy layout" in q["data_description"]
    assert q["recall_free_ceiling"] > 0.45  # its shortcut, well above 1/4


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
vocab = 64
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
    assert 0 <= hub["routing_precision"] <= 1
    assert len(hub["curve_eval"]) == 1  # 30 updates: the last is the only check
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
    args = ["run", "quality-bytes", "--variant", "transformer", "--dry-run"]
    ok = runner.invoke(app, [*args, "--data", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "task=bytes" in " ".join(ok.output.split()) and path.name in ok.output
    bad = runner.invoke(app, [*args, "--data", str(tmp_path / "missing.txt")])
    assert bad.exit_code == 2 and "--data" in bad.stderr and "missing.txt" in bad.stderr
