"""`hubbench list`: the variants with their config fields, the suites with their axes."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd() -> None:
        """List model variants with their config fields, and suites with their axes.

        Example: hubbench list
        """
        from hubbench.cli.common import console
        from hubbench.cli.tables import suites_table, variants_table

        out = console()
        out.print(variants_table())
        out.print(suites_table())
