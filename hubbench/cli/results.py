"""`hubbench results`: the stored runs, or one run's rows."""

from __future__ import annotations

from pathlib import Path

import typer

from hubbench.cli.common import RESULTS_HELP


def register(app: typer.Typer) -> None:
    @app.command("results")
    def results_cmd(
        run: str = typer.Argument(None, help="Run id (or prefix), .parquet path or 'latest'."),
        suite: str = typer.Option(None, "--suite", help="List only this suite's runs."),
        results_dir: Path = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    ) -> None:
        """List stored runs, or show one run's rows.

        Examples:
          hubbench results
          hubbench results 3f9a12c4
          hubbench results results/throughput/20250101T120000Z-3f9a12c4.parquet
        """
        from rich.markup import escape
        from rich.table import Table

        from hubbench import store
        from hubbench.cli.common import console
        from hubbench.cli.tables import rows_table
        from hubbench.errors import StoreError
        from hubbench.report.load import norm_value, resolve_path
        from hubbench.report.noise import noise

        out = console()
        directory = store.results_dir(results_dir)
        if run is not None:
            df = store.read_run(resolve_path(run, directory), directory)
            rows = df.to_dict("records")
            first = {k: norm_value(v) for k, v in rows[0].items()} if rows else {}
            title = (
                f"{first.get('suite')} run {first.get('run_id')}: {len(rows)} rows, "
                f"{first.get('device_name')}, torch {first.get('torch_version')}, "
                f"git {str(first.get('git_commit'))[:10]}"
                + (" (dirty)" if norm_value(first.get("git_dirty")) else "")
            )
            out.print(rows_table(rows, escape(title)))
            level = noise(rows)
            if level is not None:
                out.print(f"[dim]{escape(level.line())}[/]", highlight=False)
            return
        paths = store.list_runs(directory, suite)
        if not paths:
            out.print(f"no runs under {escape(str(directory))}/ (run `hubbench run SUITE`)")
            return
        table = Table(title=escape(f"runs under {directory}/"), title_justify="left")
        for col in ("suite", "run id", "started (UTC)", "rows", "status", "file"):
            table.add_column(col)
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
        out.print(table)
