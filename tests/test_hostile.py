"""Hostile input and faults: every reproduction of issue 13, with its exit code and message.

The contract (hubbench/cli/__init__.py): 0 success; 1 only for a regression (gate) or a leak
(verify); 2 for unusable input and for internal errors; never a traceback without --debug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from builders import FAULT_ENV, faults
from rows import full_row
from typer.testing import CliRunner

from hubbench import store
from hubbench.cli import app

runner = CliRunner()
BUILDER = f"{Path(__file__).with_name('builders.py')}:build"

ONE_CELL = """
description = "tiny cells"
[measure]
warmup = 1
repeats = 2
rounds = {rounds}
timeout_s = {timeout}
[defaults]
device = "cpu"
variant = "transformer"
mode = "fwd"
d_model = 16
n_layers = 1
n_heads = 2
[sweep]
seq = {seqs}
"""


def suite(tmp_path: Path, rounds: int = 1, timeout: float = 60, seqs=(32,)) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(ONE_CELL.format(rounds=rounds, timeout=timeout, seqs=list(seqs)))
    return path


def one_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def two_runs(tmp_path: Path):
    """Two stored runs of the same cells (A/A), as a gate would compare them."""
    results = tmp_path / "results"
    rows = []
    for run_id, shift in (("aaaa0001", 1.0), ("bbbb0002", 1.01)):
        times = [[0.01 * shift * (1 + 0.01 * k) for k in range(5)] for _ in range(3)]
        row = full_row(run_id=run_id, suite="ci", cell_index=0, cell_id="c0", variant="hub-gpt",
                       seq=256, status="ok", time_median_s=0.01 * shift, tokens_per_s=25600 / shift,
                       samples_s=[t for r in times for t in r], round_samples_s=times,
                       host="h", device_name="cpu", torch_version="2.13.0")  # fmt: skip
        path = store.run_path(results, "ci", run_id)
        store.write_rows(path, [row])
        rows.append(path)
    return results, rows


# ----------------------------------------------------------------------------- 1. exit codes


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--resamples", "0"], "--resamples must be >= 100"),
        (["--resamples", "-1"], "--resamples must be >= 100"),
        (["--confidence", "1.5"], "--confidence must lie in [0.5, 1)"),
        (["--confidence", "-1"], "--confidence must lie in [0.5, 1)"),
        (["--confidence", "0"], "--confidence must lie in [0.5, 1)"),
        (["--min-effect", "7"], "--min-effect '7' is ambiguous"),
    ],
)
def test_gate_and_compare_refuse_bad_bootstrap_settings(two_runs, args, text) -> None:
    results, _ = two_runs
    base = ["--results-dir", str(results)]
    gate = runner.invoke(app, ["gate", "--baseline", "aaaa", "--candidate", "bbbb", *args, *base])
    assert text in one_line(gate)
    compare = runner.invoke(app, ["compare", "aaaa", "bbbb", *args, *base])
    assert text in one_line(compare)


def test_an_unwritable_summary_is_unusable_input_not_a_regression(two_runs, tmp_path) -> None:
    results, _ = two_runs
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["gate", "--baseline", "aaaa", "--candidate", "bbbb", "--results-dir", str(results)]
    result = runner.invoke(app, [*argv, "--summary", str(blocker / "gate.md")])
    assert "--summary" in one_line(result) and "cannot create" in result.stderr
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path)}  # a directory
    result = runner.invoke(app, argv, env=env)
    assert "$GITHUB_STEP_SUMMARY" in one_line(result) and "is a directory" in result.stderr


def test_internal_errors_exit_2_with_one_line(monkeypatch, two_runs) -> None:
    from hubbench.report import compare

    def broken(*_a, **_k):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(compare, "compare_runs", broken)
    results, _ = two_runs
    result = runner.invoke(app, ["compare", "aaaa", "bbbb", "--results-dir", str(results)])
    line = one_line(result)
    assert line.startswith("internal error: ZeroDivisionError: float division by zero")
    assert "--debug" in line


# ----------------------------------------------------------------------------- 2. missing cells


def test_the_baseline_gate_refuses_a_candidate_that_lacks_cells(two_runs) -> None:
    results, paths = two_runs
    rows = store.read_rows(paths[0])
    extra = {**rows[0], "cell_id": "c1", "cell_index": 1, "seq": 512}
    store.write_rows(paths[0], [rows[0], extra])  # the baseline has a cell B lacks
    argv = ["gate", "--baseline", "aaaa", "--candidate", "bbbb", "--results-dir", str(results)]
    assert "lacks 1 of 2 baseline cells" in one_line(runner.invoke(app, argv))
    assert runner.invoke(app, [*argv, "--allow-missing"]).exit_code == 0


# ----------------------------------------------------------------------------- 3. concurrent resume


@pytest.mark.slow  # starts a worker
def test_two_resumes_of_one_run_at_once_keep_every_row(tmp_path: Path) -> None:
    path = suite(tmp_path, seqs=(16, 32, 48, 64, 80, 96))
    results = tmp_path / "results"
    env = {**os.environ, FAULT_ENV: faults({"seq": 48, "fault": "interrupt"})}
    base = [sys.executable, "-m", "hubbench", "run", str(path), "--results-dir", str(results)]
    first = subprocess.run([*base, "--builder", BUILDER], env=env, capture_output=True)
    assert first.returncode == 130, first.stderr.decode()[-500:]
    [run_file] = store.list_runs(results)
    assert len(pd.read_parquet(run_file)) == 2
    procs = [subprocess.Popen([*base, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-500:]
    df = pd.read_parquet(run_file)
    assert sorted(df["seq"]) == [16, 32, 48, 64, 80, 96]  # every cell, once
    assert (df["status"] == "ok").all() and df["run_id"].nunique() == 1


# ----------------------------------------------------------------------------- 4. signals


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(x) for x in task.read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(") ", 1)[1][0] != "Z"  # a zombie is dead, only not yet reaped


@pytest.mark.slow  # starts a worker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_the_run_leaves_no_worker_behind(tmp_path: Path, sig: signal.Signals) -> None:
    path = suite(tmp_path, seqs=(16, 32), timeout=600)
    env = {**os.environ, FAULT_ENV: faults({"seq": 32, "fault": "hang"})}
    argv = [sys.executable, "-m", "hubbench", "run", str(path), "--builder", BUILDER,
            "--results-dir", str(tmp_path / "results")]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline:  # until the first cell is on disk and the second hangs
        workers = _children(proc.pid)
        if workers and store.list_runs(tmp_path / "results"):
            break
        time.sleep(0.2)
    assert workers, "the worker never started"
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    time.sleep(5)
    assert not [w for w in workers if _alive(w)], "a worker outlived its runner"
    [run_file] = store.list_runs(tmp_path / "results")
    assert pd.read_parquet(run_file)["seq"].tolist() == [16]  # the finished cell is kept
    if sig == signal.SIGTERM:
        assert proc.returncode == 130


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "ci"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = folder / f".20260101T000000Z-aaaa0001.{dead}.abcd.tmp"
    ours = folder / f".20260101T000000Z-aaaa0001.{os.getpid()}.efgh.tmp"
    stale.write_bytes(b"half a parquet")
    ours.write_bytes(b"being written")
    store.RunWriter(folder / "20260101T000000Z-aaaa0001.parquet")
    assert not stale.exists() and ours.exists()


# ----------------------------------------------------------------------------- 5. accepted, then


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--timeout", "nan"], "--timeout: expected a finite number"),
        (["--timeout", "inf"], "--timeout: expected a finite number"),
        (["--timeout", "1e19"], "--timeout must be at most 1e+06 s"),
        (["--seq", str(2**63)], "out of range"),
        (["--batch", str(2**64)], "out of range"),
        (["--repeats", str(2**70)], "--repeats"),
        (["--set", f"d_model={2**63}"], "out of range"),
    ],
)
def test_values_that_would_fail_mid_run_are_refused_before_it(
    tmp_path: Path, args: list[str], text: str
) -> None:
    result = runner.invoke(app, ["run", str(suite(tmp_path)), "--dry-run", *args])
    assert text in one_line(result)


def test_a_suite_folder_that_is_a_file_fails_before_anything_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "tiny").write_text("not a folder")
    result = runner.invoke(app, ["run", str(suite(tmp_path)), "--results-dir", str(results)])
    assert "is not writable" in one_line(result)


@pytest.mark.slow  # starts a worker
def test_a_failed_write_stops_the_run_with_a_resume_hint(tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    calls = {"n": 0}
    real = pq.write_table

    def full_disk(table, where, **kw):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", full_disk)
    path = suite(tmp_path, seqs=(16, 32, 48))
    result = runner.invoke(app, ["run", str(path), "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]  # after the progress lines
    assert line.startswith("error: cannot write run file") and "No space left on device" in line
    assert "--resume" in line
    assert not list((tmp_path / "r" / "tiny").glob(".*.tmp"))
    [run_file] = store.list_runs(tmp_path / "r")
    assert len(pd.read_parquet(run_file)) == 1  # what was on disk before is intact


def test_resume_ignores_a_folder_named_like_a_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "tiny" / "20990101T000000Z-ffff0000.parquet").mkdir(parents=True)
    assert store.latest_run(results, "tiny") is None
    assert store.list_runs(results) == []


# ----------------------------------------------------------------------------- 6. parser holes


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("[[exclude]]\nvariant = { gt = 3 }\n", "comparisons (gt, ge, lt, le) need a numeric"),
        ('[[exclude]]\nattention = "niave"\n', "'niave' is not a valid attention"),
        ('[[exclude]]\nmode = ["fwd", "decodee"]\n', "'decodee' is not a valid mode"),
        ("[sweep.cpu]\nmlp_ratio = [nan]\n", "expected a finite number"),
        (
            '[[gate.ratio]]\nname = "r"\nnumerator = { variant = "hub-gtp" }\n'
            'denominator = { variant = "transformer" }\nmin = 1.0\n',
            "'hub-gtp' is not a valid",
        ),
    ],
)
def test_suite_values_are_checked_against_what_the_field_takes(
    tmp_path: Path, body: str, text: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(ONE_CELL.format(rounds=1, timeout=60, seqs=[32]) + body)
    assert text in one_line(runner.invoke(app, ["run", str(path), "--dry-run"]))


# ----------------------------------------------------------------------------- 7. readers


def _run_file(results: Path, run_id: str, **values) -> Path:
    row = full_row(run_id=run_id, suite="ci", cell_index=0, cell_id="c0", variant="hub-gpt",
                   seq=256, status="ok", time_median_s=0.01, tokens_per_s=25600.0,
                   samples_s=[0.01] * 5, device="cpu", mode="fwd", batch=1,
                   device_name="cpu")  # fmt: skip
    row.update(values)
    path = store.run_path(results, "ci", run_id)
    store.write_rows(path, [row])
    return path


def test_a_truncated_run_file_is_listed_as_unreadable_and_never_latest(tmp_path: Path) -> None:
    results = tmp_path / "results"
    good = _run_file(results, "aaaa0001")
    bad = results / "ci" / "20991231T000000Z-ffff9999.parquet"
    bad.write_bytes(good.read_bytes()[:100])
    listing = runner.invoke(app, ["results", "--results-dir", str(results)])
    assert (
        listing.exit_code == 0 and "unreadable" in listing.output and "aaaa0001" in listing.output
    )
    assert store.latest_run(results) == good
    shown = runner.invoke(app, ["results", "latest", "--results-dir", str(results)])
    assert shown.exit_code == 0 and "aaaa0001" in shown.output


def test_zero_tokens_per_s_reads_as_a_failed_cell(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run_file(results, "aaaa0001", tokens_per_s=0.0, time_median_s=0.0)
    _run_file(results, "aaaa0002", cell_id="c1", seq=512)
    base = ["--results-dir", str(results)]
    for argv in (["plot", "aaaa0001", "aaaa0002", "--out", str(tmp_path / "p")],
                 ["report", "aaaa0001", "--out", str(tmp_path / "r.html")]):  # fmt: skip
        result = runner.invoke(app, [*argv, *base])
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
    page = (tmp_path / "r.html").read_text()
    assert "unusable measurement in the file: time_median_s = 0.0" in page


def test_a_run_of_only_skipped_cells_still_gets_a_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run_file(results, "aaaa0001", status="skipped", message="needs a GPU", tokens_per_s=None,
              time_median_s=None, samples_s=None)  # fmt: skip
    out = tmp_path / "reports"
    out.mkdir()
    result = runner.invoke(app, ["report", "latest", "--out", str(out), "--results-dir",
                                 str(results)])  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (out / "aaaa0001.html").read_text()  # a folder given as --out
    assert "needs a GPU" in page and "no ok cells" in page


def test_output_paths_are_checked(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run_file(results, "aaaa0001")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["--results-dir", str(results)]
    plot = runner.invoke(app, ["plot", "--out", str(blocker), *base])
    assert "--out" in one_line(plot) and "is a file" in plot.stderr
    report = runner.invoke(app, ["report", "--out", str(blocker / "r.html"), *base])
    assert "--out" in one_line(report)
    nested = tmp_path / "new" / "deeper" / "r.html"
    assert runner.invoke(app, ["report", "--out", str(nested), *base]).exit_code == 0
    assert nested.is_file()


def test_markup_characters_in_paths_are_printed_as_they_are(tmp_path: Path) -> None:
    results = tmp_path / "res[bold]ults[/]"
    _run_file(results, "aaaa0001")
    listing = runner.invoke(app, ["results", "--results-dir", str(results)])
    assert listing.exit_code == 0 and "[bold]ults[/]" in listing.output
    missing = runner.invoke(app, ["results", "zzzz", "--results-dir", str(results)])
    assert "[bold]ults[/]" in one_line(missing)
    out = tmp_path / "p[/]"
    result = runner.invoke(app, ["report", "--out", str(out / "r.html"), "--results-dir",
                                 str(results)])  # fmt: skip
    assert result.exit_code == 0 and "p[/]" in result.output


# ----------------------------------------------------------------------------- 8. messages


@pytest.mark.slow  # starts a worker
def test_interrupt_during_worker_start_up_says_nothing_was_written(tmp_path: Path) -> None:
    from hubbench.run.runner import RunResult

    result = RunResult(tmp_path / "x.parquet", "r", rows=[], interrupted=True)
    assert not result.rows  # the CLI then says "no cell had finished; nothing was written"
    path = suite(tmp_path)
    env = {**os.environ, FAULT_ENV: faults({"fault": "interrupt"})}
    argv = [sys.executable, "-m", "hubbench", "run", str(path), "--builder", BUILDER,
            "--results-dir", str(tmp_path / "results")]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 130
    assert "no cell had finished; nothing was written" in out.stderr
    assert store.list_runs(tmp_path / "results") == []


def test_json_config_is_not_needed_to_read_a_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run_file(results, "aaaa0001", config_json="{not json")
    for argv in (["results", "aaaa"], ["report", "aaaa", "--out", str(tmp_path / "r.html")]):
        assert runner.invoke(app, [*argv, "--results-dir", str(results)]).exit_code == 0
    assert json.loads('{"ok": 1}')  # (the reader never parses config_json of this schema)
