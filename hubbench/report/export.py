"""A run's rows as CSV, Markdown or JSON (`hubbench results RUN --format`), for papers and PRs.

- csv: every schema column in schema order, one line per cell; nulls are empty, booleans
  `true` / `false`, floats in full precision (repr), list columns (`samples_s`,
  `round_samples_s`, ...) as JSON arrays inside the cell;
- md: the run table `hubbench results` prints (hubbench.report.runtable), as a GitHub table, with
  its key and the noise line;
- json: `{"schema_version": N, "rows": [...]}`, every column, null for missing (never NaN).
Rows arrive as hubbench.store reads them (plain Python, upgraded to this schema).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hubbench import schema
from hubbench.report.format import md_cell

FORMATS = ("table", "csv", "md", "json")


def _plain(value: Any) -> Any:
    """A stored value as JSON can hold it: non-finite floats become null, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _csv_cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return json.dumps(value, allow_nan=False)
    return str(value)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(schema.NAMES)
    for r in rows:
        writer.writerow([_csv_cell(r.get(name)) for name in schema.NAMES])
    return buf.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    data = {
        "schema_version": schema.SCHEMA_VERSION,
        "rows": [{name: _plain(r.get(name)) for name in schema.NAMES} for r in rows],
    }
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def to_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    from hubbench.report.noise import noise
    from hubbench.report.runtable import run_table, seed_table

    table = run_table(rows)
    lines = [
        f"### {md_cell(title, 200)}",
        "",
        "| " + " | ".join(md_cell(c.header) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|",
    ]
    attention = [c.header for c in table.columns].index("attention")
    for row in table.rows:
        cells = [md_cell(text) for text in row.cells]
        if row.requested_only:
            cells[attention] = f"_{cells[attention]}_"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", table.caption("italic") + "."]
    pooled = seed_table(rows)
    if pooled is not None:
        lines += ["", "#### over seeds", "",
                  "| " + " | ".join(md_cell(c.header) for c in pooled.columns) + " |",
                  "|" + "|".join("---:" if c.numeric else "---" for c in pooled.columns) + "|",
                  *("| " + " | ".join(md_cell(t) for t in r.cells) + " |" for r in pooled.rows),
                  "", "; ".join(pooled.notes) + "."]  # fmt: skip
    level = noise(rows)
    if level is not None:
        lines += ["", level.line() + "."]
    return "\n".join(lines) + "\n"
