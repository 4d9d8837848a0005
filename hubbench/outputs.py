"""Files the commands write besides runs (reports, summaries, exports, figures): checked before
any work is done, written whole (a reader never sees half a file), with one-line errors that name
the option and the path."""

from __future__ import annotations

import os
from pathlib import Path

from hubbench.errors import ReportError


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_file(path: Path, option: str) -> None:
    """`path` can be created or appended to: its folder exists or can be made, it is no folder."""
    if path.is_dir():
        raise ReportError(f"{option} {path} is a directory; give a file name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{option} {path}: cannot create {parent} ({_why(exc)})") from exc
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise ReportError(f"{option} {path}: not writable")


def check_folder(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise ReportError(f"{option} {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{option} {path}: cannot create it ({_why(exc)})") from exc
    if not os.access(path, os.W_OK):
        raise ReportError(f"{option} {path}: not writable")


def write_text(path: Path, text: str, option: str, append: bool = False) -> None:
    """Write `text` to `path` whole or not at all: a temporary file beside it, then a rename.

    `append` (a CI step summary that others write to as well) appends in place instead.
    """
    check_file(path, option)
    if append:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise ReportError(f"{option} {path}: cannot write ({_why(exc)})") from exc
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{option} {path}: cannot write ({_why(exc)})") from exc
