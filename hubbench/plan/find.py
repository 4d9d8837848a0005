"""Where suites are: a suite name is looked up in $HUBBENCH_SUITES, ./suites, then the source
tree's suites/; a path to a .toml file is taken as it is."""

from __future__ import annotations

import os
from pathlib import Path

from hubbench.errors import SuiteError

SUITES_ENV = "HUBBENCH_SUITES"
BASELINES_DIR = "baselines"  # <results>/baselines/ holds pinned copies for the gate, not runs


def suite_name_problem(name: str, *, runs_go_there: bool = True) -> str | None:
    """What keeps `name` from being the one folder under <results>/ that a suite's runs go to,
    or None: it must be a single path component that is not hidden (so never `.` or `..`, which
    the stems of `..toml` and `...toml` are) and has no control characters; where runs are
    written (`runs_go_there`), not the pinned baselines' folder either."""
    if not name:
        return "is empty"
    if name.startswith("."):
        return "starts with '.' (., .. and hidden folders cannot hold a suite's runs)"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    if runs_go_there and name == BASELINES_DIR:
        return f"is reserved: <results>/{BASELINES_DIR}/ holds pinned baselines, not runs"
    return None


def suite_dirs() -> list[Path]:
    """Where suite names are looked up: $HUBBENCH_SUITES, ./suites, the source tree's suites/."""
    dirs = []
    if os.environ.get(SUITES_ENV):
        dirs.append(Path(os.environ[SUITES_ENV]))
    dirs.append(Path.cwd() / "suites")
    dirs.append(Path(__file__).resolve().parents[2] / "suites")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def available_suites() -> dict[str, Path]:
    """Suite name -> file, first directory wins."""
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def find_suite(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text:
        if path.is_dir():
            raise SuiteError(f"suite {text} is a directory; give a .toml file or a suite name")
        if not path.is_file():
            raise SuiteError(f"suite file {text} does not exist")
        return path
    suites = available_suites()
    if text not in suites:
        where = ", ".join(str(d) for d in suite_dirs()) or "no suites/ directory found"
        valid = ", ".join(sorted(suites)) or "none"
        raise SuiteError(f"unknown suite {text!r}; available: {valid} (looked in {where})")
    return suites[text]
