"""The package's shape, checked from its source: no import cycles, and imports that point the way
the pipeline runs (README, 'Development').

Every import counts, at the top of a module or inside a function: an import hidden in a
function still ties the two modules together. `from pkg import name` is an edge to the module
`pkg.name` when that is a module, else to `pkg`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hubbench"

# who may not import whom: a module under the key imports nothing under the values
FORBIDDEN = {
    "hubbench.plan": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli",
                      "hubbench.models", "hubbench.mixers", "hubbench.verify", "hubbench.profile",
                      "hubbench.quality"),
    "hubbench.measure": ("hubbench.run", "hubbench.report", "hubbench.cli"),
    "hubbench.run": ("hubbench.report", "hubbench.cli"),
    "hubbench.report": ("hubbench.run", "hubbench.measure", "hubbench.cli", "hubbench.models",
                        "hubbench.mixers", "hubbench.verify", "hubbench.profile"),
    "hubbench.mixers": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
    "hubbench.models": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
    "hubbench.verify": ("hubbench.run", "hubbench.report", "hubbench.cli"),
    "hubbench.schema": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
    "hubbench.store": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
    "hubbench.stats": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
    "hubbench.git": ("hubbench.run", "hubbench.measure", "hubbench.report", "hubbench.cli"),
}  # fmt: skip


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under `root` (a package folder)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import of a module in `known` that `name` makes."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    yield full, node.lineno
                elif base in known:
                    yield base, node.lineno


def graph(root: Path) -> dict[str, dict[str, int]]:
    known = modules(root)
    edges: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges[name] = {}
        for target, line in imports(name, path, known):
            if target != name:
                edges[name].setdefault(target, line)
    return edges


def cycles(edges: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def against_the_grain(edges: Mapping[str, Mapping[str, int]]) -> list[str]:
    """'a -> b (line N)' for every import that FORBIDDEN rules out."""
    bad = []
    for source, targets in sorted(edges.items()):
        for prefix, banned in FORBIDDEN.items():
            if source != prefix and not source.startswith(prefix + "."):
                continue
            for target, line in sorted(targets.items()):
                if any(target == b or target.startswith(b + ".") for b in banned):
                    bad.append(f"{source} -> {target} (line {line})")
    return bad


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph(PACKAGE)) == []


def test_imports_point_the_way_the_pipeline_runs() -> None:
    assert against_the_grain(graph(PACKAGE)) == []


def test_a_planted_cycle_and_a_backward_import_are_caught(tmp_path: Path) -> None:
    root = tmp_path / "hubbench"
    for folder in ("plan", "run", "report"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "plan" / "cell.py").write_text("def f():\n    from hubbench.plan import suite\n")
    (root / "plan" / "suite.py").write_text("from hubbench.plan.cell import f\n")
    (root / "report" / "gate.py").write_text("from . import load\nfrom ..run import runner\n")
    (root / "report" / "load.py").write_text("")
    (root / "run" / "runner.py").write_text("import hubbench.plan.cell\n")
    edges = graph(root)
    assert cycles(edges) == [["hubbench.plan.cell", "hubbench.plan.suite"]]
    assert edges["hubbench.report.gate"] == {"hubbench.report.load": 1, "hubbench.run.runner": 2}
    assert against_the_grain(edges) == ["hubbench.report.gate -> hubbench.run.runner (line 2)"]
    assert edges["hubbench.run.runner"] == {"hubbench.plan.cell": 1}
