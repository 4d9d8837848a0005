"""`hubbench results`: the stored runs, or one run's rows."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.cli.common import RESULTS_HELP

if TYPE_CHECKING:
    from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("results")
    def results_cmd(
        run: str = typer.Argument(None, help="Run id (or prefix), .parquet path or 'latest'."),
        suite: str = typer.Option(None, "--suite", help="List only this suite's runs."),
        results_dir: Path = typer.Option(None, "--results-dir", help=RESULTS_HELP),
        output_format: str = typer.Option(
            "table", "--format", "-f", help="One run's rows as table | csv | md | json."
        ),
        out_file: Path = typer.Option(
            None, "--out", "-o", help="Write the rows to this file (default: stdout)."
        ),
        wide: bool = typer.Option(
            False, "--wide", help="Print every column, wider than the terminal if need be."
        ),
    ) -> None:
        """List stored runs, or show one run's rows: a table, or CSV / Markdown / JSON to export.

        csv and json hold every column (lists as JSON arrays in csv); md is the table below as
        GitHub Markdown, for a PR or a paper's notes.

        Examples:
          hubbench results
          hubbench results 3f9a12c4
          hubbench results latest --format csv --out run.csv
          hubbench results results/throughput/20250101T120000Z-3f9a12c4.parquet --format md
        """
        from rich.markup import escape
        from rich.table import Table

        from hubbench import store
        from hubbench.cli.common import console
        from hubbench.errors import ReportError, StoreError
        from hubbench.report.export import FORMATS
        from hubbench.report.load import resolve_path

        if output_format not in FORMATS:
            raise ReportError(f"unknown --format {output_format!r}; valid: {', '.join(FORMATS)}")
        out = console()
        directory = store.results_dir(results_dir)
        if run is None and (output_format != "table" or out_file is not None):
            raise ReportError("--format and --out export one run: name it (e.g. latest)")
        if run is not None:
            if out_file is not None:
                from hubbench.outputs import check_file

                check_file(out_file, "--out")
            rows = store.read_rows(resolve_path(run, directory))
            if output_format == "table" and out_file is None:
                _print_table(rows, out, wide)
                return
            text = _rendered(rows, output_format)
            if out_file is None:
                sys.stdout.write(text)
            else:
                from hubbench.outputs import write_text

                write_text(out_file, text, "--out")
                out.print(f"[green]wrote[/] {escape(str(out_file))}", highlight=False)
            return
        paths = store.list_runs(directory, suite)
        if not paths:
            out.print(f"no runs under {escape(str(directory))}/ (run `hubbench run SUITE`)")
            return
        table = Table(title=escape(f"runs under {directory}/"), title_justify="left")
        for col in ("suite", "run id", "started (UTC)", "rows", "status", "file"):
            table.add_column(col, no_wrap=col != "status")
        for path in paths:
            try:
                info = store.run_info(path)
            except StoreError as exc:  # one bad file must not hide the others
                stamp, _, run_id = path.stem.rpartition("-")
                cells = [path.parent.name, run_id, stamp, "-", f"[red]unreadable: {exc}[/]"]
                table.add_row(*map(escape, cells[:4]), cells[4], escape(str(path)))
                continue
            status = ", ".join(f"{n} {s}" for s, n in sorted(info.status.items()))
            cells = [info.suite, info.run_id, info.stamp, str(info.rows), status, str(path)]
            table.add_row(*map(escape, cells))
        from hubbench.cli.fit import print_fitted

        print_fitted(out, table, ("suite", "run id", "status"), ("file", "started (UTC)", "rows"),
                     wide=wide, see="--wide shows them")  # fmt: skip


def _title(rows: Sequence[Mapping[str, Any]]) -> str:
    first = rows[0] if rows else {}
    return (
        f"{first.get('suite')} run {first.get('run_id')}: {len(rows)} rows, "
        f"{first.get('device_name')}, torch {first.get('torch_version')}, "
        f"git {str(first.get('git_commit'))[:10]}" + (" (dirty)" if first.get("git_dirty") else "")
    )


def _rendered(rows: Sequence[Mapping[str, Any]], output_format: str) -> str:
    """One run's rows as text in `output_format` (table: the Rich table, uncoloured)."""
    from hubbench.report import export

    if output_format == "csv":
        return export.to_csv(rows)
    if output_format == "json":
        return export.to_json(rows)
    if output_format == "md":
        return export.to_markdown(rows, _title(rows))
    return _table_text(rows)


def _table_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as plain text, for --out (wide enough that a file keeps every column)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    _print_table(rows, Console(file=buf, width=200, color_system=None), wide=True)
    return buf.getvalue()


def _print_table(rows: Sequence[Mapping[str, Any]], printer: Console, wide: bool = False) -> None:
    from rich.markup import escape

    from hubbench.cli.tables import print_rows
    from hubbench.report.noise import noise

    print_rows(printer, rows, escape(_title(rows)), wide)
    level = noise(rows)
    if level is not None:
        printer.print(f"[dim]{escape(level.line())}[/]", highlight=False)
