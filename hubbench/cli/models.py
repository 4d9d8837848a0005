"""`hubbench list`: variants with their config fields (suites are added by the engine)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd() -> None:
        """List model variants and their config fields.

        Example: hubbench list
        """
        from rich.console import Console

        from hubbench.cli.render import variants_table

        Console().print(variants_table())
