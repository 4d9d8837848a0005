"""Rich renderings shared by several commands (tables only; no logic)."""

from __future__ import annotations

import dataclasses

from rich.table import Table


def variants_table() -> Table:
    from hubbench import models

    table = Table(title="model variants", show_lines=True)
    table.add_column("variant", style="bold cyan")
    table.add_column("description")
    table.add_column("config fields (default)")
    for spec in models.REGISTRY.values():
        fields = ", ".join(
            f"{f.name}={getattr(spec.config_cls(), f.name)!r}"
            for f in dataclasses.fields(spec.config_cls)
        )
        table.add_row(spec.name, spec.description, fields)
    return table
