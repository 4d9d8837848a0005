"""Pointers to the documentation, in --help texts and in the package's text, lead somewhere.

A pointer is README or docs/NAME.md, optionally followed by a quoted section: the file must
exist and the section must be one of its headings ('Gate' names '### Gate: fail CI on ...').
"""

from __future__ import annotations

import ast
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from token import COMMENT
from typing import Any

import typer

from hubbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"""(README|docs/[\w.-]+\.md)(?:'s)?[,:]?\s*(?:["']([^"'\n]+)["'])?""")


def help_texts(command: Any) -> Iterator[str]:  # a click Command (typer vendors click)
    yield command.help or ""
    for param in command.params:
        yield getattr(param, "help", None) or ""
    for sub in getattr(command, "commands", {}).values():
        yield from help_texts(sub)


def headings(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {line.lstrip("#").strip().strip("`") for line in lines if line.startswith("#")}


def broken(text: str) -> list[str]:
    out = []
    for name, section in POINTER.findall(" ".join(text.split())):
        path = ROOT / ("README.md" if name == "README" else name)
        if not path.is_file():
            out.append(name)
        elif section and not any(
            h == section or h.startswith(f"{section}:") for h in headings(path)
        ):
            out.append(f"{name}, {section!r}")
    return out


def test_help_texts_point_to_existing_docs() -> None:
    texts = help_texts(typer.main.get_command(app))
    assert [b for text in texts for b in broken(text)] == []


def source_texts(path: Path) -> Iterator[str]:
    """A module's strings (adjacent literals joined, as Python joins them) and comments."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    with path.open() as f:
        yield from (t.string for t in tokenize.generate_tokens(f.readline) if t.type == COMMENT)


def test_the_package_points_to_existing_docs() -> None:
    sources = sorted((ROOT / "hubbench").rglob("*.py"))
    found = {str(p.relative_to(ROOT)): [b for t in source_texts(p) for b in broken(t)]
             for p in sources}  # fmt: skip
    assert {path: b for path, b in found.items() if b} == {}


def test_a_missing_section_is_found() -> None:
    assert broken("where the cells run (README, 'Sweeps on a cluster')") == [
        "README, 'Sweeps on a cluster'"
    ]
    assert broken('see docs/cluster.md, "Executors"') == []
    assert broken("see docs/nope.md") == ["docs/nope.md"]
