"""The CLI as a whole: the error boundary, start-up cost, each command's main path and bad input.

run / results / env are covered in depth in test_cli_run.py, plot / compare / gate / report in
report/test_cli_report.py, profile in test_profile.py, verify in test_causality.py; this file
holds what is common to all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hubbench import store
from hubbench.cli import app
from hubbench.errors import SuiteError

runner = CliRunner()

ONE_CELL = """
description = "one tiny cell"
[measure]
warmup = 1
repeats = 2
[defaults]
device = "cpu"
variant = "transformer"
mode = "fwd"
seq = 32
d_model = 16
n_layers = 1
n_heads = 2
"""


def test_errors_are_one_line_and_debug_shows_the_traceback() -> None:
    plain = runner.invoke(app, ["run", "nope"])
    assert plain.exit_code == 2 and isinstance(plain.exception, SystemExit)
    assert plain.stderr.startswith("error: unknown suite 'nope'")
    assert plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = runner.invoke(app, ["--debug", "run", "nope"])
    assert isinstance(debug.exception, SuiteError)  # re-raised, so Python prints the traceback
    assert "unknown suite 'nope'" in str(debug.exception)


def test_a_closed_pipe_stops_quietly(monkeypatch) -> None:
    """Issue 27: `hubbench compare --help | head` said 'internal error: BrokenPipeError ... (a
    bug in hubbench)'. The reader going away is no error: no word, and 141 as for SIGPIPE."""
    env = {**os.environ, "COLUMNS": "80"}
    argv = [sys.executable, "-m", "hubbench", "list"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.decode()) == (141, "")

    def closed(*_args, **_kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("hubbench.cli.tables.variants_table", closed)  # a write in a command
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 141 and "internal error" not in result.output


def test_list_names_the_quality_tasks() -> None:
    from hubbench.plan.fields import TASK_INFO, TASKS

    assert tuple(TASK_INFO) == TASKS  # one description per task, in the one list's order
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines()
             if line.count("│") == 5 and line.split("│")[1].strip() in TASKS}  # fmt: skip
    assert set(lines) == set(TASKS)
    assert "quality-capacity" in lines["mqar"] and "quality-bytes" in lines["bytes"]
    assert "throughput" not in lines["mqar"]  # a timing suite's inert default task is no use


def test_every_command_summary_is_one_line() -> None:
    """Typer keeps a docstring's line breaks: a two-line summary broke mid-sentence in the
    `hubbench --help` command list ('heatmaps, memory, and' / 'the decode state ...')."""
    import typer

    def summaries(command, name: str = "hubbench"):
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield f"{name} {sub_name}", (sub.help or "").strip().split("\n\n")[0]
            yield from summaries(sub, f"{name} {sub_name}")

    broken = {n: s for n, s in summaries(typer.main.get_command(app)) if "\n" in s}
    assert broken == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["list"],
        ["run", "throughput", "--dry-run"],
        ["run", "--help"],
        ["run", "throughput", "--dry-run", "--resume", "--results-dir", "{tmp}"],
    ],
)
def test_planning_and_listing_import_neither_torch_nor_pandas(
    argv: list[str], tmp_path: Path
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]  # --resume: no earlier run there
    code = (
        "import sys; from hubbench.cli import app\n"
        "try:\n"
        f"    app({argv!r}, standalone_mode=False)\n"
        "finally:\n"
        "    heavy = [m for m in ('torch', 'pandas', 'pyarrow', 'matplotlib')\n"
        "             if m in sys.modules]\n"
        "    print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stdout[-500:]


def test_the_config_layer_imports_no_torch() -> None:
    modules = (
        "hubbench.plan.fields, hubbench.plan.variants, hubbench.schema, hubbench.plan.cell, "
        "hubbench.plan.suite"
    )
    code = f"import sys, {modules}; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_list_shows_variants_and_suites_and_marks_a_broken_suite(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HUBBENCH_SUITES", str(tmp_path))
    (tmp_path / "broken.toml").write_bytes(b'description = "\xff\xfe"\n')
    typo = '[sweep]\nvariant = ["transformer"]\nseq = [64]\nhubz = [1]\n'
    (tmp_path / "typo.toml").write_text(typo)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for text in ("transformer", "hub-jamba", "throughput", "scaling", "broken", "typo"):
        assert text in result.output
    assert result.output.count("invalid:") == 2
    assert "not UTF-8" in result.output and "hubz" in result.output


def test_env_bad_device_is_one_line() -> None:
    result = runner.invoke(app, ["env", "--device", "tpu"])
    assert result.exit_code == 2 and "--device: unknown device 'tpu'" in result.stderr


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["run", "ci", "--seq", "64", "--set", "seq=128"], "--set seq: seq is also given by --seq"),
        (["run", "ci", "--set", "hubs=4", "--set", "hubs=8"], "--set hubs: given twice"),
        (["run", "ci", "--repeats", "0"], "--repeats must be >= 1"),
        (["run", "ci", "--timeout", "nan"], "--timeout: expected a finite number"),
        (["run", "suites/"], "suite suites/ is a directory"),
        (["run", "./suites/"], "is a directory"),
        (["compare", "zzzz", "yyyy"], "no run 'zzzz'"),
        (["report", "zzzz"], "no run 'zzzz'"),
        (["plot", "zzzz"], "no run 'zzzz'"),
        (["verify", "causal", "--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], text: str) -> None:
    result = runner.invoke(
        app,
        [
            *args,
            *(["--results-dir", str(tmp_path)] if args[0] in ("compare", "report", "plot") else []),
        ],
    )
    assert result.exit_code == 2, result.output
    assert text in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow  # starts workers
def test_two_runs_at_once_write_two_intact_files(tmp_path: Path) -> None:
    """Two real `hubbench run` processes started together on one results directory."""
    suite = tmp_path / "one.toml"
    suite.write_text(ONE_CELL)
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "hubbench", "run", str(suite), "--results-dir", str(results)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    paths = store.list_runs(results)
    assert len(paths) == 2
    run_ids = set()
    for path in paths:
        df = pd.read_parquet(path)
        assert df["status"].tolist() == ["ok"] and df["run_id"].nunique() == 1
        run_ids.add(df["run_id"].iloc[0])
        assert path.stem.endswith(df["run_id"].iloc[0])
        json.loads(df["config_json"].iloc[0])
    assert len(run_ids) == 2


def test_the_rows_table_shows_state_and_says_decode_is_per_token() -> None:
    from rich.console import Console

    from hubbench.cli.tables import rows_table

    base = {"variant": "hub-gpt", "seq": 1024, "status": "ok", "tokens_per_s": 400.0,
            "time_median_s": 0.0025, "time_p10_s": 0.002, "time_p90_s": 0.003,
            "peak_mem_bytes": 2**26, "cell_index": 0}  # fmt: skip
    console = Console(width=160, record=True)
    console.print(rows_table([{**base, "mode": "decode", "state_bytes": 3 * 2**20}], "t"))
    text = console.export_text()
    assert "state" in text and "3 MiB" in text and "per generated token" in text
    console = Console(width=160, record=True)
    console.print(rows_table([{**base, "mode": "fwd", "state_bytes": None}], "t"))
    plain = console.export_text()
    assert " state " not in plain and "per generated token" not in plain


def test_the_mqar_suite_at_80_columns_reads_accuracy_against_the_ceiling() -> None:
    """The `quality` suite's shape (run 94d0d830): two variants, so the kernel column tells
    rows apart in the speed half; the quality half keeps the recall-free ceiling ("trivial")
    beside the accuracy, and the over-seeds table gives its mean: hub-gpt's 11.3% at (128, 8)
    reads as below the 15.1% a guesser that recalls nothing scores, not as recall."""
    from rich.console import Console

    from hubbench.cli.tables import print_rows

    rows = []
    for i, (variant, acc, ceiling) in enumerate(
        [("transformer", 0.997, 0.153), ("transformer", 0.996, 0.151),
         ("transformer", 0.995, 0.148), ("hub-gpt", 0.114, 0.153),
         ("hub-gpt", 0.112, 0.151), ("hub-gpt", 0.115, 0.148)]
    ):  # fmt: skip
        hub = variant == "hub-gpt"
        rows.append({
            "variant": variant, "attention": None if hub else "sdpa", "seq": 128,
            "kv_pairs": 8, "lr": 1e-3, "seed": i % 3, "status": "ok", "cell_index": i,
            "backend_attention": None if hub else "sdpa:flash-cpu",
            "tokens_per_s": 8.2e4 if hub else 1.15e5, "time_median_s": 0.1,
            "time_p10_s": 0.09, "time_p90_s": 0.11, "peak_mem_bytes": 2**28,
            "mode": "quality", "task": "mqar", "eval_accuracy": acc,
            "baseline_quality": ceiling, "recall_free_ceiling": ceiling,
            "routing_precision": 0.2 if hub else None, "routing_recall": 0.78 if hub else None,
            "routing_precision_random": 0.157 if hub else None,
            "routing_recall_random": 0.61 if hub else None,
            "converged": acc >= 0.99, "causal_check": "pass"})  # fmt: skip
    narrow = Console(width=80, record=True)
    print_rows(narrow, rows, "quality run 94d0d830 (24 new rows)")
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    quality = text[text.index(": quality") : text.index("over seeds")]
    assert "trivial" in quality and "15.3%" in quality and "11.4%" in quality
    assert "sdpa:flash-cpu" not in quality  # the speed half names the kernel, by #
    pooled = text[text.index("over seeds") :]
    header = next(line for line in pooled.splitlines() if "quality" in line)
    assert "trivial" in header
    hub = next(line for line in pooled.splitlines() if line.strip().startswith("hub-gpt"))
    assert "11.4% ±" in hub and "15.1%" in hub  # the mean ceiling beside the mean accuracy


def test_a_quality_table_too_wide_for_80_columns_splits_and_keeps_every_score() -> None:
    from rich.console import Console

    from hubbench.cli.tables import print_rows

    rows = [
        {"variant": "hub-gpt", "seq": 64, "status": "ok", "tokens_per_s": 4e4, "cell_index": i,
         "time_median_s": 0.1, "time_p10_s": 0.09, "time_p90_s": 0.11, "peak_mem_bytes": 2**31,
         "mode": "quality", "task": "mqar", "hubs": 8, "seed": i, "eval_accuracy": acc,
         "baseline_quality": 1 / 31, "routing_precision": 0.153, "routing_recall": 0.787,
         "routing_precision_random": 0.117, "routing_recall_random": 0.602,
         "converged": acc >= 0.99, "causal_check": "pass"}
        for i, acc in enumerate((0.405, 0.993, 0.997))
    ]  # fmt: skip
    narrow = Console(width=80, record=True)
    print_rows(narrow, rows, "quality-hubs")
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "quality-hubs: quality" in text  # the second table, keyed by #
    for score in ("40.5%", "99.3%", "99.7%", "3.2%", "15.3%/78.7%", "pass"):
        assert score in text, score
    flat = " ".join(text.split())  # the random selection's P/R does not fit beside n and seed
    assert "11.7%/60.2%" not in text and "not shown at 80 columns: random P/R" in flat
    assert "over seeds" in text and "79.8% ±" in text  # the seeds pooled: mean 0.798
    wide = Console(width=200, record=True)
    print_rows(wide, rows, "quality-hubs")
    text = wide.export_text()
    assert "quality-hubs: quality" not in text and "11.7%/60.2%" in text


def test_the_dry_run_names_the_mqar_point_when_it_is_not_swept() -> None:
    """`--set kv_pairs=64` on the capacity suite: one value, so no column; the line under the
    plan says it (it listed task and budget but not the pairs, the other half of the point)."""
    args = ["run", "quality-capacity", "--variant", "transformer", "--set", "kv_pairs=64",
            "--set", "seed=0", "--dry-run"]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "task=mqar kv_pairs=64" in result.output
