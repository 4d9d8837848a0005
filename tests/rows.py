"""Whole results rows for tests that write run files by hand (the store refuses partial rows)."""

from __future__ import annotations

from typing import Any

from hubbench import schema


def full_row(**values: Any) -> dict[str, Any]:
    """Every schema column, null unless given; unknown names are an error, as in the store."""
    unknown = set(values) - set(schema.NAMES)
    if unknown:
        raise KeyError(f"not schema columns: {', '.join(sorted(unknown))}")
    row = dict.fromkeys(schema.NAMES)
    row["schema_version"] = schema.SCHEMA_VERSION
    row.update(values)
    return row
