"""Same-run A/B (`hubbench run SUITE --against REF`): the two code versions a run measures.

The candidate is the code this process runs from; the baseline is REF, checked out into a
detached git worktree cached by its full commit ($HUBBENCH_CACHE/worktrees/<sha>, else
~/.cache/hubbench/worktrees/<sha>) and imported by its own worker through PYTHONPATH, ahead of
the installed package. Everything that can make the baseline's rows mean something other than
"REF's code on this environment" is refused here, before a run file exists (one line, exit 2):
no git repository, an unknown REF, a tree without the worker entry point, another worker
protocol, or declared dependencies that the installed packages do not meet (installing REF's own
dependencies is out of scope).

The worktree is made under an exclusive lock on `<sha>.lock`, so two runs at once never make
(or repair) it together; a worktree that is present, at its commit and clean is reused. The
cache is hubbench.run.worktrees': a run holds its worktree in use until it ends, and prunes the
least recently used ones beyond worktrees.KEEP that no run is using.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import hubbench
from hubbench.errors import ConfigError
from hubbench.git import git
from hubbench.measure.entry import PROTOCOL
from hubbench.run import worktrees
from hubbench.run.worktrees import CACHE_ENV as CACHE_ENV  # where the cache is: named here too
from hubbench.run.worktrees import ENTRY, cache_dir, locked, usable

CANDIDATE, BASELINE = "candidate", "baseline"
SCOPE = "installing the baseline's own dependencies is out of scope for --against"


@dataclass(frozen=True)
class Side:
    """One code version of an A/B run: which side, its commit, and how its worker starts."""

    name: str  # CANDIDATE | BASELINE
    commit: str | None  # full sha (None: a candidate installed outside git)
    root: Path  # the tree its worker imports hubbench from
    builder: str
    pythonpath: str | None = None  # put ahead of the installed package (the baseline's tree)

    def suffix(self) -> str:
        """What a row's cell_id gets, so that a cell's two sides are two rows everywhere."""
        return f"/{self.name}"


class AgainstError(ConfigError):
    """--against cannot measure REF on this machine; exit 2, nothing written."""

    def __init__(self, message: str) -> None:
        super().__init__(f"--against: {message}")


def source_repo(cwd: Path | None = None) -> Path:
    """The repository hubbench runs from, else the cwd's; AgainstError when neither is one."""
    installed = Path(hubbench.__file__).resolve().parent.parent
    for where in (installed, cwd or Path.cwd()):
        top = git(where, "rev-parse", "--show-toplevel")
        if top:
            return Path(top)
    raise AgainstError(
        f"neither the tree hubbench runs from ({installed}) nor the current directory is in a "
        "git repository, so REF cannot be resolved"
    )


def resolve(repo: Path, ref: str) -> str:
    """REF (branch, tag, sha, HEAD~1) as a full commit sha."""
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not sha:
        raise AgainstError(f"{ref!r} is not a commit in {repo}")
    return sha


def show(repo: Path, sha: str, path: str) -> str | None:
    """A file of commit `sha`, None when its tree lacks it."""
    return git(repo, "show", f"{sha}:{path}")


def protocol_of(entry_source: str) -> int | None:
    """The worker protocol a tree's entry.py declares (`PROTOCOL = N`), None if none."""
    found = re.search(r"^PROTOCOL\s*=\s*(\d+)", entry_source, re.MULTILINE)
    return int(found.group(1)) if found else None


def check_tree(repo: Path, sha: str) -> None:
    """Refuse a commit whose worker this code cannot drive or whose dependencies differ."""
    short = sha[:12]
    entry = show(repo, sha, ENTRY)
    if entry is None:
        raise AgainstError(f"commit {short} has no {ENTRY}: it has no worker to measure with")
    theirs = protocol_of(entry)
    if theirs != PROTOCOL:
        said = "declares no worker protocol" if theirs is None else f"speaks protocol {theirs}"
        raise AgainstError(
            f"commit {short}'s worker {said}, this hubbench speaks {PROTOCOL}: its rounds "
            "cannot be exchanged with this runner"
        )
    unmet = unmet_dependencies(
        show(repo, sha, "pyproject.toml"), show(repo, sha, "constraints.txt")
    )
    if unmet:
        raise AgainstError(
            f"commit {short} declares dependencies the installed packages do not meet "
            f"({'; '.join(unmet[:4])}); {SCOPE}"
        )


def unmet_dependencies(pyproject: str | None, constraints: str | None) -> list[str]:
    """What of a tree's declared dependencies the installed distributions do not meet: each
    `[project] dependencies` requirement, and each constraints.txt pin of an installed one."""
    from packaging.requirements import InvalidRequirement, Requirement

    declared: list[str] = []
    if pyproject:
        try:
            declared = tomllib.loads(pyproject).get("project", {}).get("dependencies", [])
        except tomllib.TOMLDecodeError:
            return ["its pyproject.toml does not parse"]
    pins = [line.split("#")[0].strip() for line in (constraints or "").splitlines()]
    unmet = []
    for text, must_exist in [(d, True) for d in declared] + [(p, False) for p in pins if p]:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            unmet.append(f"cannot read {text!r}")
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            if must_exist:
                unmet.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} (installed {have})")
    return unmet


def worktree(repo: Path, sha: str) -> Path:
    """REF's detached worktree, held in use by this process until it ends (worktrees.hold),
    made (or repaired) under a lock, reused when clean."""
    tree = cache_dir() / sha
    worktrees.hold(tree)  # before it is checked: a pruner leaves it alone from now on
    with locked(tree.with_name(f"{sha}.lock")):
        if usable(tree, sha):
            return tree
        if tree.exists():  # damaged or edited: made again from the commit
            git(repo, "worktree", "remove", "--force", str(tree))
            shutil.rmtree(tree, ignore_errors=True)
        git(repo, "worktree", "prune")
        made = git(repo, "worktree", "add", "--detach", str(tree), sha)
        if made is None or not usable(tree, sha):
            raise AgainstError(f"could not check out {sha[:12]} into {tree} (git worktree add)")
    return tree


def baseline_builder(builder: str, repo: Path, tree: Path) -> str:
    """The builder the baseline's worker loads: a builder FILE inside the repository is part of
    the code version, so the baseline takes that file from its own tree; a module is imported
    from the baseline's tree anyway."""
    module, sep, attr = builder.rpartition(":")
    if not module.endswith(".py"):
        return builder
    path = Path(module).resolve()
    try:
        inside = path.relative_to(repo.resolve())
    except ValueError:
        return builder  # a file outside the repository is the same for both sides
    theirs = tree / inside
    if not theirs.is_file():
        raise AgainstError(f"the builder file {inside} is not in the baseline's tree")
    return f"{theirs}{sep}{attr}"


def sides(ref: str, builder: str, cwd: Path | None = None) -> list[Side]:
    """The candidate (this code) and the baseline (REF in its worktree), checked; AgainstError
    (nothing written, nothing started) when REF cannot be measured beside this code."""
    repo = source_repo(cwd)
    base = resolve(repo, ref)
    check_tree(repo, base)
    head = candidate_commit()
    tree = worktree(repo, base)
    worktrees.prune(repo)  # the cache stays bounded; a tree in use (this one too) stays
    installed = Path(hubbench.__file__).resolve().parent.parent
    return [
        Side(CANDIDATE, head, installed, builder),
        Side(BASELINE, base, tree, baseline_builder(builder, repo, tree), str(tree)),
    ]


def candidate_commit() -> str | None:
    """The commit of the code this process runs (its tree's HEAD; the rows' git_dirty says
    whether it had changes); None for a package installed outside git, which its worker's hello
    says too (REF was then resolved in the current directory's repository)."""
    installed = Path(hubbench.__file__).resolve().parent.parent
    return git(installed, "rev-parse", "HEAD")


def resumed_baseline(results_dir: Path, suite: str) -> str | None:
    """The baseline commit of the suite's latest run if it is a same-run A/B (what --resume
    continues without --against), else None. Here, not in run.runner, so that `run --dry-run
    --resume` can ask without importing torch."""
    from hubbench import store

    previous = store.latest_run(results_dir, suite)
    if previous is None:
        return None
    rows = store.read_resumable(previous, suite)
    return next((r["side_commit"] for r in rows if r.get("side") == BASELINE), None)
