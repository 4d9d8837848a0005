"""The worktree cache of same-run A/B runs (hubbench.run.worktrees, `hubbench cache`): bounded
to the most recently used few, never removing one a run is using (another process's lock), and
leaving no dead entries in `git worktree list`. A real git repository in tmp_path."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.run import against, worktrees

ENTRY_OK = f"PROTOCOL = {against.PROTOCOL}\n"


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """Six commits, each with a worker entry point."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    for k in range(6):
        (root / against.ENTRY).parent.mkdir(parents=True, exist_ok=True)
        (root / against.ENTRY).write_text(ENTRY_OK + f"# {k}\n")
        _git(root, "add", "-A")
        _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"commit {k}")
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(worktrees.CACHE_ENV, str(tmp_path / "cache"))
    yield tmp_path / "cache" / "worktrees"
    for tree in list(worktrees._held):  # this process's holds end with the test
        worktrees.release(tree.with_suffix(""))


def _shas(repo: Path) -> list[str]:
    return _git(repo, "rev-list", "--reverse", "HEAD").split()


def _made(repo: Path, shas: list[str]) -> list[Path]:
    """Worktrees of `shas`, as runs that have ended left them, the first the least recent."""
    trees = []
    for k, sha in enumerate(shas):
        tree = against.worktree(repo, sha)
        worktrees.release(tree)
        stamp = time.time() - 3600 * (len(shas) - k)
        os.utime(tree.with_name(f"{sha}.use"), (stamp, stamp))
        trees.append(tree)
    return trees


def _listed(repo: Path) -> str:
    return _git(repo, "worktree", "list", "--porcelain")


def test_prune_keeps_the_most_recently_used(repo: Path, cache: Path) -> None:
    trees = _made(repo, _shas(repo))
    assert [c.path for c in worktrees.cached()] == trees[::-1]
    gone = worktrees.prune(repo, keep=4)
    assert sorted(gone) == sorted(trees[:2])
    assert [t.exists() for t in trees] == [False, False, True, True, True, True]
    assert not any(str(t) in _listed(repo) for t in trees[:2])  # git forgot them
    assert all(str(t) in _listed(repo) for t in trees[2:])
    assert not trees[0].with_name(f"{trees[0].name}.use").exists()  # its locks went too
    assert not trees[0].with_name(f"{trees[0].name}.lock").exists()


def test_a_worktree_in_use_by_another_process_is_never_removed(repo: Path, cache: Path) -> None:
    trees = _made(repo, _shas(repo)[:3])
    oldest = trees[0]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
         str(oldest.with_name(f"{oldest.name}.use"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert [c.in_use for c in worktrees.cached()] == [False, False, True]
        assert worktrees.prune(repo, keep=0) == [trees[2], trees[1]]
        assert oldest.exists() and str(oldest) in _listed(repo)
        removed, kept = worktrees.clear()
        assert (removed, kept) == ([], [oldest])
    finally:
        holder.communicate("")  # the run ends: its lock goes with its process
    assert worktrees.clear() == ([oldest], [])
    assert not oldest.exists() and str(oldest) not in _listed(repo)


def test_this_processs_own_worktree_is_in_use(repo: Path, cache: Path) -> None:
    sha = _shas(repo)[0]
    tree = against.worktree(repo, sha)  # held until the process ends (here: the fixture)
    assert worktrees.clear() == ([], [tree]) and worktrees.usable(tree, sha)
    worktrees.release(tree)
    assert worktrees.clear() == ([tree], [])


def test_a_run_waiting_while_its_tree_is_removed_holds_the_new_lock(
    repo: Path, cache: Path
) -> None:
    """The pruner unlinks `.use` while it holds it; a run that opened the old file meanwhile
    must not end up holding a lock nobody else can see (a later pruner would remove its tree)."""
    [tree] = _made(repo, _shas(repo)[:1])
    use = tree.with_name(f"{tree.name}.use")
    done = threading.Event()
    with worktrees._unused(tree) as free:
        assert free
        waiter = threading.Thread(target=lambda: (worktrees.hold(tree), done.set()))
        waiter.start()
        time.sleep(0.2)
        assert not done.is_set()  # blocked on the pruner's exclusive lock
        use.unlink()
    waiter.join(10)
    assert done.is_set()
    held = worktrees._held[use]
    assert os.fstat(held.fileno()).st_ino == os.stat(use).st_ino
    with open(use, "a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_sides_prunes_the_cache_after_taking_its_own(
    repo: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shas = _shas(repo)
    old = _made(repo, shas[:5])
    monkeypatch.setattr(against, "source_repo", lambda cwd=None: repo)
    monkeypatch.setattr(against, "check_tree", lambda repo, sha: None)
    [_, base] = against.sides(shas[5], "builders.py:build")
    assert base.root == cache / shas[5] and base.root.exists()
    kept = [c.path for c in worktrees.cached()]
    assert kept == [base.root, *old[::-1][: worktrees.KEEP - 1]]
    assert not old[0].exists() and str(old[0]) not in _listed(repo)


def test_clear_removes_damaged_entries_and_leaves_other_files(repo: Path, cache: Path) -> None:
    [tree] = _made(repo, _shas(repo)[:1])
    damaged = cache / ("a" * 40)
    damaged.mkdir()
    (damaged / "junk").write_text("x")
    other = cache / "notes"
    other.mkdir()
    assert {c.path: c.owner for c in worktrees.cached()} == {tree: repo / ".git", damaged: None}
    removed, kept = worktrees.clear()
    assert sorted(removed) == sorted([tree, damaged]) and kept == []
    assert other.exists() and str(tree) not in _listed(repo)


def test_the_cache_command_lists_and_clears(repo: Path, cache: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["cache", "list"])
    assert empty.exit_code == 0 and "no cached worktrees" in empty.output
    trees = _made(repo, _shas(repo)[:2])
    listed = runner.invoke(app, ["cache", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    first = next(i for i, line in enumerate(lines) if trees[1].name[:12] in line)
    assert "commit 1" in lines[first] and "1 h ago" in lines[first]
    assert trees[0].name[:12] in lines[first + 1] and "2 h ago" in lines[first + 1]
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 2 cached worktree(s)" in cleared.output
    assert not any(t.exists() for t in trees)


def test_age_reads_as_a_person_would_say_it() -> None:
    assert worktrees.age(1000.0, now=1010.0) == "just now"
    assert worktrees.age(0.0, now=300.0) == "5 min ago"
    assert worktrees.age(0.0, now=7200.0) == "2 h ago"
    assert worktrees.age(0.0, now=3 * 86400.0) == "3 d ago"
