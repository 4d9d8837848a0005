"""`hubbench list`: the variants with their config fields, the suites with their axes, the
quality tasks."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd() -> None:
        """List model variants, suites with their axes, and the quality mode's tasks.

        Example: hubbench list
        """
        from hubbench.cli.common import console
        from hubbench.cli.tables import suites_table, tasks_table, variants_table

        out = console()
        out.print(variants_table())
        out.print(suites_table())
        out.print(tasks_table())
