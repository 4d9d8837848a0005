"""Where the gate's Markdown summary goes: --summary FILE, and $GITHUB_STEP_SUMMARY when set
(appended, as GitHub Actions expects), both checked before anything is measured or judged."""

from __future__ import annotations

import os
from pathlib import Path

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def summary_targets(path: Path | None) -> list[tuple[Path, str, bool]]:
    """(file, what names it, append) for --summary and $GITHUB_STEP_SUMMARY, checked up front."""
    from hubbench.outputs import check_file

    targets = []
    if path is not None:
        targets.append((path, "--summary", False))
    if os.environ.get(SUMMARY_ENV):
        targets.append((Path(os.environ[SUMMARY_ENV]), f"${SUMMARY_ENV}", True))
    for target, what, _ in targets:
        check_file(target, what)
    return targets


def write_summary(markdown: str, path: Path | None) -> list[Path]:
    """Write to --summary FILE and append to $GITHUB_STEP_SUMMARY when set."""
    from hubbench.outputs import write_text

    written = []
    for target, what, append in summary_targets(path):
        write_text(target, markdown + ("\n" if append else ""), what, append=append)
        written.append(target)
    return written
