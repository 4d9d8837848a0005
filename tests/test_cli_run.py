"""`hubbench run / results / env` and `suites_table` through Typer's CliRunner.

`test_interrupted_run_keeps_rows_and_resumes` is the only test here that starts workers (two).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from builders import FAULT_ENV, faults
from rich.console import Console
from rows import full_row
from typer.testing import CliRunner

from hubbench import store
from hubbench.cli import app
from hubbench.cli.tables import suites_table

BUILDER = f"{Path(__file__).with_name('builders.py')}:build"

TINY = """
description = "tiny real models"
[measure]
warmup = 1
repeats = 2
rounds = 2
timeout_s = 120
[defaults]
mode = "fwd_bwd"
d_model = 32
n_layers = 2
n_heads = 2
hubs = 4
topk = 8
chunk = 16
[sweep]
device = ["cpu", "cuda"]
seq = [32, 64]
variant = ["transformer", "hub-gpt"]
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def tiny_suite(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_dry_run_lists_the_narrowed_cells(runner: CliRunner) -> None:
    result = runner.invoke(app, ["run", "throughput", "--seq", "1024", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "throughput: 8 cells" in result.output
    for name in ("transformer", "jamba", "hub-jamba", "hub-gpt", "naive", "sdpa", "flash"):
        assert name in result.output
    assert "4096" not in result.output
    result = runner.invoke(
        app, ["run", "hubs", "--set", "hubs=4,8", "--set", "topk=16", "--dry-run"]
    )
    assert result.exit_code == 0 and "hubs: 2 cells" in result.output


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            ["run", "nope"],
            "unknown suite 'nope'; available: ci, decode, field, field-scaling, hubs, quality, "
            "quality-bytes, quality-capacity, quality-hubs, quality-replace, replace, scaling, "
            "throughput",
        ),
        (["run", "ci", "--set", "topk=99999"], "--set topk"),
        (["run", "ci", "--seq", "1k"], "--seq: '1k' is not a valid int"),
        (["run", "ci", "--set", "hubz=4"], "unknown field 'hubz'"),
        (["run", "ci", "--mode", "generate", "--dry-run"], "unknown mode 'generate'"),
        (["results", "zzzz"], "no run 'zzzz'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    runner: CliRunner, tmp_path: Path, args: list[str], text: str
) -> None:
    result = runner.invoke(app, [*args, "--results-dir", str(tmp_path)] if args[0] == "results"
                           else args)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert text in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_malformed_suite_file_names_line_and_column(runner: CliRunner, tmp_path: Path) -> None:
    path = tiny_suite(tmp_path, TINY.replace("seq = [32, 64]", "seq = [32,, 64]"))
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "tiny.toml: invalid TOML" in result.stderr and "line 18, column 11" in result.stderr


def test_unwritable_results_dir_fails_before_anything_runs(
    runner: CliRunner, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", "ci", "--results-dir", str(blocker / "r")])
    assert result.exit_code == 2
    assert "is not writable" in result.stderr and "--results-dir" in result.stderr


def test_results_lists_and_shows_runs(runner: CliRunner, tmp_path: Path) -> None:
    path = store.run_path(tmp_path, "ci", "beef0001")
    rows = [
        full_row(run_id="beef0001", suite="ci", cell_index=0, variant="hub-gpt", seq=256,
                 status="ok", time_median_s=0.01, time_p10_s=0.009, time_p90_s=0.012,
                 tokens_per_s=25600.0, peak_mem_bytes=3 * 2**20, mfu=0.25, hubs=8),
        full_row(run_id="beef0001", suite="ci", cell_index=1, variant="transformer",
                 attention="flash", seq=256, status="skipped", message="needs 'hubbench[flash]'"),
    ]  # fmt: skip
    store.write_rows(path, rows)
    listing = runner.invoke(app, ["results", "--wide", "--results-dir", str(tmp_path)])
    assert listing.exit_code == 0, listing.output
    assert "beef0001" in listing.output and "1 ok, 1 skipped" in listing.output
    shown = runner.invoke(app, ["results", "beef", "--wide", "--results-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    for text in ("hub-gpt", "25.6k", "10.0", "9.00-12.0", "3 MiB", "25.0%", "skipped",
                 "hubbench[flash]"):  # fmt: skip
        assert text in shown.output, text
    empty = runner.invoke(app, ["results", "--results-dir", str(tmp_path / "none")])
    assert empty.exit_code == 0 and "no runs" in empty.output


def test_suites_table_shows_every_suite_with_axes() -> None:
    console = Console(width=200, record=True)
    console.print(suites_table())
    text = console.export_text()
    for name in ("throughput", "scaling", "hubs", "replace", "ci"):
        assert name in text
    assert "seq: 512, 1024, 2048, 4096" in text and "invalid" not in text


def test_profile_traces_each_cell(runner: CliRunner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = TINY.replace('device = ["cpu", "cuda"]\n', "").replace("[32, 64]", "[32]")
    path = tiny_suite(tmp_path, text.replace('["transformer", "hub-gpt"]', '["hub-gpt"]'))
    result = runner.invoke(app, ["run", str(path), "--profile", "--mode", "fwd"])
    assert result.exit_code == 0, result.output
    assert "TensorBoard" in result.output and (tmp_path / "traces").is_dir()
    assert not (tmp_path / "results").exists()  # profiling times nothing and stores no rows


def test_an_interrupted_run_says_which_rows_are_whole(tmp_path: Path) -> None:
    """Issue 27: '6 finished row(s) kept' was printed for rows with rounds still to measure."""
    from hubbench.cli.run import kept_line, plan_suite
    from hubbench.run.runner import RunResult

    plan = plan_suite("ci", axes={})
    ids = [c.cell_id for c in plan.cells]
    path = tmp_path / "r.parquet"

    def kept(*statuses: str) -> str:
        rows = [
            {"cell_id": i, "status": s, "job_lost": False}
            for i, s in zip(ids, statuses, strict=False)
        ]
        return kept_line(RunResult(path, "r", rows), plan)

    assert kept("ok", "partial", "partial", "error") == (
        f"4 row(s) kept in {path}: 1 complete, 2 partial, 1 error, 2 cell(s) not started; "
        "--resume measures the rest"
    )
    assert kept(*["ok"] * 5, "timeout") == f"6 row(s) kept in {path}: 5 complete, 1 timeout; done"
    assert kept() == "no cell had finished; nothing was written"


@pytest.mark.slow  # starts workers
def test_interrupted_run_keeps_rows_and_resumes(
    runner: CliRunner, tmp_path: Path, monkeypatch
) -> None:
    path = tiny_suite(tmp_path)
    results = tmp_path / "results"
    # cell 3 (hub-gpt, n=64, cpu) sends Ctrl-C to the runner mid-cell
    monkeypatch.setenv(FAULT_ENV, faults({"variant": "hub-gpt", "seq": 64, "fault": "interrupt"}))
    first = runner.invoke(
        app, ["run", str(path), "--results-dir", str(results), "--builder", BUILDER]
    )
    assert first.exit_code == 130, first.output
    kept = " ".join(first.stderr.split())
    assert "interrupted: 3 row(s) kept in" in kept
    assert ": 3 partial, 5 cell(s) not started; --resume measures the rest" in kept
    [run_file] = store.list_runs(results)
    df = pd.read_parquet(run_file)
    assert df["status"].tolist() == ["partial"] * 3  # interrupted in the first pass
    assert df["time_rounds"].tolist() == [1, 1, 1]
    assert df["message"].iloc[0] == "1 of 2 rounds measured; --resume measures the rest"
    assert df["backend_attention"].fillna("-").tolist() == ["sdpa:flash-cpu", "-", "sdpa:flash-cpu"]
    assert df["backend_hub"].notna().tolist() == [False, True, False]

    monkeypatch.delenv(FAULT_ENV)
    second = runner.invoke(app, ["run", str(path), "--results-dir", str(results), "--resume"])
    assert second.exit_code == 0, second.output
    assert store.list_runs(results) == [run_file]  # the same run, continued
    assert "already measured" in second.output and "read_parquet" in second.output
    # without a terminal: one line per finished round, with the remaining time
    lines = [line for line in second.stderr.splitlines() if line.startswith("[")]
    assert (
        lines[0].startswith("[ 1/13] hub-gpt n=64 device=cpu round 1/2: ok") and "left)" in lines[0]
    )
    assert any("transformer n=32 device=cpu round 2/2: ok" in line for line in lines)
    assert "noise: the sentinel varied" in second.output
    df = pd.read_parquet(run_file)
    assert df["cell_index"].tolist() == list(range(8))
    assert df["device"].tolist() == ["cpu"] * 4 + ["cuda"] * 4
    cuda_status = "ok" if torch.cuda.is_available() else "skipped"
    assert df["status"].tolist() == ["ok"] * 4 + [cuda_status] * 4
    if cuda_status == "skipped":
        assert df["message"].iloc[-1].startswith("device 'cuda' requested but CUDA")
    assert df["run_id"].nunique() == 1 and df["cell_id"].nunique() == 8
    assert df["time_rounds"].fillna(0).tolist() == [2] * 4 + [0] * 4  # the first 3 continued
