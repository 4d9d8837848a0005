"""The cache of detached worktrees that same-run A/B runs measure REF in (hubbench.run.against).

One worktree per full commit under $HUBBENCH_CACHE/worktrees/<sha> (else
~/.cache/hubbench/worktrees/<sha>), with two lock files beside it:
- `<sha>.lock`: held exclusively while the worktree is made or repaired, so two runs at once
  never make it together;
- `<sha>.use`: held shared by every run that uses the worktree, from before it is checked until
  the run's process ends (the kernel drops the lock with the process, however it ends: no stale
  pid files). Its mtime is the worktree's last use.

The cache is bounded: after a run has its worktree, the least recently used ones beyond KEEP are
removed, except those in use; a worktree is in use exactly when an exclusive, non-blocking lock
on its `.use` file fails. Removing goes through `git worktree remove` of the repository that
owns the worktree, then `git worktree prune`, so `git worktree list` does not keep listing dead
ones. `hubbench cache list` and `hubbench cache clear` (hubbench.cli.cache) show and empty it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hubbench.git import git

CACHE_ENV = "HUBBENCH_CACHE"
ENTRY = "hubbench/measure/entry.py"
KEEP = 4  # cached worktrees kept after a run, the most recently used: a few REFs in rotation
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # sha-1, or sha-256 repositories

_held: dict[Path, IO[str]] = {}  # this process's `.use` locks, held until it exits
_held_guard = threading.Lock()


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV)
    root = Path(base) if base else Path.home() / ".cache" / "hubbench"
    return root / "worktrees"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _use_file(tree: Path) -> Path:
    return tree.with_name(f"{tree.name}.use")


def hold(tree: Path) -> None:
    """Mark `tree` in use by this process until it exits (a shared lock on its `.use` file), and
    as just used. A pruner that removed the file while we waited for it leaves us a lock on an
    unlinked file, so the lock is taken again until it is on the file the path names."""
    path = _use_file(tree)
    with _held_guard:
        if path in _held:
            os.utime(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(path, "a")  # noqa: SIM115 (held for the process's life)
            fcntl.flock(handle, fcntl.LOCK_SH)
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                    break
            handle.close()
        os.utime(path)
        _held[path] = handle


def release(tree: Path) -> None:
    """Stop holding `tree` before this process ends (tests; a long-lived caller)."""
    with _held_guard:
        handle = _held.pop(_use_file(tree), None)
    if handle is not None:
        handle.close()


def usable(tree: Path, sha: str) -> bool:
    """A cached worktree at its commit with no change to tracked files."""
    if not (tree / ENTRY).is_file() or git(tree, "rev-parse", "HEAD") != sha:
        return False
    return git(tree, "status", "--porcelain", "--untracked-files=no") == ""


@dataclass(frozen=True)
class Cached:
    """One cached worktree, as `hubbench cache list` shows it."""

    path: Path
    last_used: float  # Unix time (the `.use` file's mtime, else the folder's)
    in_use: bool  # some process holds it now
    owner: Path | None  # the git directory of the repository it belongs to (None: damaged)

    @property
    def commit(self) -> str:
        return self.path.name


def _owner(tree: Path) -> Path | None:
    """The .git directory owning a worktree, from its `.git` file (gitdir: <repo>/.git/worktrees/
    <name>); None when the file is missing or names no such directory."""
    try:
        text = (tree / ".git").read_text()
    except OSError:
        return None
    found = re.match(r"gitdir:\s*(.+)", text.strip())
    if not found:
        return None
    common = Path(found.group(1)).parent.parent
    return common if common.is_dir() else None


@contextlib.contextmanager
def _unused(tree: Path) -> Iterator[bool]:
    """True (holding it exclusively) when no process uses `tree`, else False. The `.use` file is
    made if missing, so a run that starts now waits for this lock rather than finding none."""
    with open(_use_file(tree), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _in_use(tree: Path) -> bool:
    if not _use_file(tree).exists():  # nobody ever held it (made by an older hubbench)
        return False
    with _unused(tree) as free:
        return not free


def cached() -> list[Cached]:
    """The cached worktrees, most recently used first."""
    root = cache_dir()
    if not root.is_dir():
        return []
    out = []
    for tree in root.iterdir():
        if not (tree.is_dir() and _SHA.fullmatch(tree.name)):
            continue
        use = _use_file(tree)
        stamp = (use if use.exists() else tree).stat().st_mtime
        out.append(Cached(tree, stamp, _in_use(tree), _owner(tree)))
    return sorted(out, key=lambda c: c.last_used, reverse=True)


def remove(tree: Path) -> bool:
    """Remove a cached worktree unless a process uses it; True if it is gone. Its repository
    forgets it (`git worktree remove`, then `git worktree prune`), and its lock files go (unlinked
    while held, so a run that waited for them takes fresh ones: `hold`)."""
    with _unused(tree) as free:
        if not free:
            return False
        owner = _owner(tree)
        if owner is not None:
            git(owner, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
        if owner is not None:
            git(owner, "worktree", "prune")
        for lock in (_use_file(tree), tree.with_name(f"{tree.name}.lock")):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return not tree.exists()


def prune(repo: Path | None = None, keep: int = KEEP) -> list[Path]:
    """Remove the cached worktrees beyond the `keep` most recently used, skipping those in use;
    then `git worktree prune` in `repo`. One pruner at a time. The paths removed."""
    root = cache_dir()
    gone = []
    with locked(root / ".prune.lock"):
        for entry in cached()[keep:]:
            if not entry.in_use and remove(entry.path):
                gone.append(entry.path)
    if repo is not None:
        git(repo, "worktree", "prune")
    return gone


def clear() -> tuple[list[Path], list[Path]]:
    """Remove every cached worktree not in use: (removed, kept because in use)."""
    with locked(cache_dir() / ".prune.lock"):
        entries = cached()
        kept = [e.path for e in entries if e.in_use or not remove(e.path)]
    return [e.path for e in entries if e.path not in kept], kept


def age(stamp: float, now: float | None = None) -> str:
    """'3 min ago', '2 h ago', '5 d ago': a last use, for `hubbench cache list`."""
    seconds = max(0.0, (time.time() if now is None else now) - stamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"
