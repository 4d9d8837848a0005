"""`hubbench list`: variants with their config fields (suites are added by the engine)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd() -> None:
        """List model variants with their config fields, and suites with their axes.

        Example: hubbench list
        """
        from rich.console import Console

        from hubbench.cli.render import variants_table
        from hubbench.cli.run import suites_table

        console = Console()
        console.print(variants_table())
        console.print(suites_table())
