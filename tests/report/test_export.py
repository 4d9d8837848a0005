"""`hubbench results RUN --format csv|md|json`: exports that read back to the stored values."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from synthetic_runs import cell, grid, make_run, write_run
from typer.testing import CliRunner

from hubbench import schema
from hubbench.cli import app


@pytest.fixture
def stored(results_dir) -> Path:
    cells = [*grid(("transformer", "hub-gpt"), (1024, 4096)), cell("hub-gpt", 8192)]
    failed = {("hub-gpt", "sdpa", 8192): "oom"}
    return write_run(make_run(cells, rounds=3, status=failed), results_dir)


def _results(results_dir: Path, *args: str):
    return CliRunner().invoke(app, ["results", *args, "--results-dir", str(results_dir)])


def _typed(text: str, type_: str) -> Any:
    """A csv cell back to its schema type."""
    if text == "":
        return None
    if type_.startswith("list"):
        return json.loads(text)
    return {"int64": int, "float64": float, "string": str,
            "bool": {"true": True, "false": False}.__getitem__}[type_](text)  # fmt: skip


def test_csv_reads_back_to_the_parquet_values(results_dir, stored):
    result = _results(results_dir, "latest", "--format", "csv")
    assert result.exit_code == 0, result.output
    header, *lines = list(csv.reader(io.StringIO(result.stdout)))
    assert tuple(header) == schema.NAMES
    back = [{n: _typed(v, schema.BY_NAME[n].type) for n, v in zip(header, line, strict=True)}
            for line in lines]  # fmt: skip
    stored_rows = pq.read_table(stored).to_pylist()
    assert back == stored_rows
    assert any(isinstance(r["round_samples_s"], list) for r in back)  # lists of lists survive
    assert any(r["status"] == "oom" and r["tokens_per_s"] is None for r in back)


def test_json_reads_back_to_the_parquet_values_and_has_no_nan(results_dir, stored, tmp_path):
    out = tmp_path / "exports" / "run.json"
    out.parent.mkdir()
    out.write_text("old contents")
    result = _results(results_dir, "latest", "--format", "json", "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["schema_version"] == schema.SCHEMA_VERSION
    assert data["rows"] == pq.read_table(stored).to_pylist()
    assert [p.name for p in out.parent.iterdir()] == ["run.json"]  # written whole, no temp left


def test_md_is_a_table_with_a_line_per_cell(results_dir, stored):
    result = _results(results_dir, "latest", "--format", "md")
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header, rule, *body = table
    assert header.startswith("| # | variant | attention | n |") and "tok/s" in header
    assert set(rule) <= set("|-:")
    assert len(body) == len(pq.read_table(stored))
    assert any("| oom |" in line for line in body)
    assert "attention: the kernel that ran" in result.stdout  # the table's key


def test_table_is_the_default_and_can_go_to_a_file(results_dir, stored, tmp_path):
    shown = _results(results_dir, "latest")
    assert shown.exit_code == 0 and "tok/s" in shown.output
    out = tmp_path / "t.txt"
    assert _results(results_dir, "latest", "--out", str(out)).exit_code == 0
    assert "tok/s" in out.read_text() and "\x1b[" not in out.read_text()


def test_unknown_format_is_one_line_naming_the_valid_ones(results_dir, stored):
    result = _results(results_dir, "latest", "--format", "xlsx")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "table, csv, md, json" in lines[0], result.stderr
    listing = _results(results_dir, "--format", "csv")
    assert listing.exit_code == 2 and "name it" in listing.stderr


def test_json_and_csv_write_null_for_non_finite_floats():
    from hubbench.report.export import to_csv, to_json

    row = {"tokens_per_s": float("nan"), "samples_s": [1.0, float("inf")], "status": "ok"}
    data = json.loads(to_json([row]))
    assert data["rows"][0]["tokens_per_s"] is None and data["rows"][0]["samples_s"] == [1.0, None]
    header, line = list(csv.reader(io.StringIO(to_csv([row]))))
    assert line[header.index("tokens_per_s")] == "" and "nan" not in ",".join(line).lower()
