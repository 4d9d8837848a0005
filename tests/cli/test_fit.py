"""Tables at 80 columns (hubbench.cli.fit): the columns that tell rows apart stay, numbers are
printed whole, what is left out is named, and --wide shows everything."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from rows import full_row

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))  # the report tests' runs
from synthetic_runs import grid, make_run, write_run
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.cli.fit import fit, print_fitted
from hubbench.cli.tables import ops_table, print_rows
from hubbench.profile import OpRow, StageRow, TraceSummary
from hubbench.report import format as fmt


def render(call, width: int) -> str:
    buf = io.StringIO()
    call(Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def header_line(text: str, first: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == [first])
    return line.split()


def hubs_rows() -> list[dict]:
    """`run hubs --set hubs=4,8 --set topk=32,64`, beside the transformer, one cell failed."""
    cells = [c for h in (4, 8) for k in (32, 64) for c in
             grid(("hub-gpt",), (1024, 16384), hubs=h, topk=k)]  # fmt: skip
    cells += grid(("transformer",), (1024, 16384))
    run = make_run(cells, status={("transformer", "naive", 16384): "oom"}, rounds=5)
    return run.to_dict("records")


@pytest.mark.parametrize("width", [60, 80, 120])
def test_a_hubs_sweep_keeps_its_axes_and_whole_numbers(width: int) -> None:
    rows = hubs_rows()
    text = render(lambda c: print_rows(c, rows, "hubs run"), width)
    head = header_line(text, "#")
    assert {"variant", "attention", "n", "hubs", "topk", "status", "tok/s"} <= set(head), text
    assert "…" not in text
    lines = [ln for ln in text.splitlines() if re.match(r"\s*\d+\s+(hub-gpt|transformer)\s", ln)]
    assert len(lines) == len(rows)
    for row, line in zip(rows, lines, strict=True):
        words = line.split()
        assert str(row["seq"]) in words and words[1] == row["variant"]
        if row["status"] == "ok":
            assert fmt.si(row["tokens_per_s"]) in words, line
    if width >= 80:  # at 60 the columns that must stay need 70: printed whole, wider
        assert max(map(len, text.splitlines())) <= width
    shown = set(head)
    hidden = re.search(r"not shown at \d+ columns: ([^(]*)\(", " ".join(text.split()))
    every = {"ms", "p10-p90", "mem", "MFU", "SoL", "message"}
    if hidden:  # what is missing is named, and how to see it
        assert set(hidden.group(1).strip().split(", ")) == every - shown - {"message"}
        assert "--wide" in text
    else:
        assert every - {"message"} <= shown
    if "message" not in shown:  # the failure's reason is printed under the table instead
        assert re.search(r"^#\d+ oom: oom: synthetic failure$", text, re.M), text


def test_wide_prints_every_column_whatever_the_console() -> None:
    rows = hubs_rows()
    text = render(lambda c: print_rows(c, rows, "hubs run", wide=True), 80)
    assert {"ms", "p10-p90", "mem", "MFU", "SoL", "message"} <= set(header_line(text, "#"))
    assert "not shown" not in text and max(map(len, text.splitlines())) > 80


def test_nproc_stays_when_it_tells_rows_apart() -> None:
    rows = [full_row(run_id="r", suite="ci", cell_index=i, variant="transformer",
                     attention="sdpa", seq=2048, nproc=p, status="ok", time_median_s=0.5,
                     time_p10_s=0.4, time_p90_s=0.6, tokens_per_s=4096.0 * p,
                     peak_mem_bytes=2**30, message=None)
            for i, p in enumerate((1, 2))]  # fmt: skip
    text = render(lambda c: print_rows(c, rows, "ci run"), 80)
    assert "nproc" in header_line(text, "#") and "8.19k" in text and "4.1k" in text


def test_the_columns_that_must_stay_are_printed_whole_even_when_too_wide() -> None:
    table = Table()
    for name in ("name", "a", "b"):
        table.add_column(name, no_wrap=True)
    table.add_row("x" * 30, "123456789", "987654321")
    buf = io.StringIO()
    printer = Console(file=buf, width=20, color_system=None)
    fitted = print_fitted(printer, table, ("name", "a"), ("b",))
    text = buf.getvalue()
    assert fitted.hidden == ("b",) and fitted.width > 20
    assert "x" * 30 in text and "123456789" in text and "987654321" not in text


def test_columns_come_back_when_there_is_room() -> None:
    """Dropping stops as soon as the rest fits, and a column dropped early comes back if it fits
    beside the others."""
    table = Table(box=None)
    for name in ("key", "big", "small"):
        table.add_column(name, no_wrap=True)
    table.add_row("k", "b" * 40, "s")
    printer = Console(file=io.StringIO(), width=20, color_system=None)
    assert fit(printer, table, ("key",), ("small", "big")).hidden == ("big",)
    assert [c.header for c in table.columns] == ["key", "small"]


def test_an_empty_column_goes_before_any_other() -> None:
    table = Table(box=None)
    for name in ("key", "value", "note"):
        table.add_column(name, no_wrap=True)
    for i in range(3):
        table.add_row(f"k{i}", "1234567890" * 2, "-")
    printer = Console(file=io.StringIO(), width=28, color_system=None)
    assert fit(printer, table, ("key",), ("value", "note")).hidden == ("note",)


def test_an_operator_table_is_a_line_per_operator_with_long_names_folded() -> None:
    long = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"
    ops = [OpRow(long, 8, 0.0072, 0.0089, shape="[[1, 4, 512, 64], [1, 4, 512, 64]]")]
    ops += [OpRow(f"aten::op{i}", 10 * i, 0.001 * i, 0.002 * i, shape="[[512, 256]]")
            for i in range(1, 16)]  # fmt: skip
    summary = TraceSummary(1, 0.12, "cpu", [StageRow("mlp", 0.1)], ops, [], ["mlp"])

    def show(printer: Console) -> None:
        keep = ("operator", "self CPU ms", "of step")
        drop = ("input dims (heaviest)", "total CPU ms", "calls")
        print_fitted(printer, ops_table(summary), keep, drop, fold=("operator",))

    text = render(show, 80)
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    assert len(text.splitlines()) < 30  # one line per operator, two for the long name
    assert long in "".join(ln.split("│")[1].strip() for ln in text.splitlines() if "│" in ln)
    assert "not shown at 80 columns: input dims (heaviest)" in text


def test_compare_and_gate_at_80_columns_keep_cells_and_ratios_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = grid(seqs=(1024, 2048))
    write_run(make_run(cells, run_id="runa0001", seed=1, rounds=5, suite="ci"), tmp_path,
              "20250101T000000Z")  # fmt: skip
    write_run(make_run(cells, run_id="runb0002", seed=2, rounds=5, suite="ci",
                       slowdown={"hub-gpt": 0.2}), tmp_path, "20250101T010000Z")  # fmt: skip
    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    common = ["--results-dir", str(tmp_path)]
    compare = runner.invoke(app, ["compare", "runa0001", "runb0002", *common])
    gate = runner.invoke(
        app, ["gate", "--baseline", "runa0001", "--candidate", "runb0002", *common]
    )
    assert compare.exit_code == 0, compare.output
    assert gate.exit_code == 1, gate.output
    for result in (compare, gate):
        text = result.stdout
        assert max(map(len, text.splitlines())) <= 80 and "…" not in text, text
        words = set(text.replace("│", " ").split())
        assert {"transformer", "attention=naive", "attention=sdpa", "hub-gpt", "n=2k"} <= words
        assert re.search(r"\d\.\d{3}× \[\d\.\d{3}, \d\.\d{3}\]", text)
        assert "not shown at 80 columns" in " ".join(text.split())
    wide = runner.invoke(app, ["compare", "runa0001", "runb0002", "--wide", *common])
    assert "A tokens/s" in wide.stdout and "not shown" not in wide.stdout


def test_a_dry_run_at_80_columns_shows_every_swept_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(
        app, ["run", "hubs", "--set", "hubs=4,8", "--set", "topk=32,64", "--seq", "1024,16384",
              "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    head = header_line(result.stdout.replace("┃", " "), "#")
    assert head[:5] == ["#", "variant", "n", "hubs", "topk"]
    assert "16384" in result.stdout and "…" not in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80
