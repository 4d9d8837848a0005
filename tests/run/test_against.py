"""Same-run A/B set-up (hubbench.run.against, the runner's sides, the worker's hello): REF
resolved and checked out into a cached worktree, refusals before anything is written, rows that
keep the two sides apart, passes that pair them, workers that import the tree they should.

A temp git repository with a few commits of a tiny fake tree stands in for REF; one slow test
runs the real repository's HEAD against itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest

import hubbench
from hubbench.errors import HubbenchError
from hubbench.measure.entry import PROTOCOL
from hubbench.measure.env import TORCH_ENV_KEYS, host_env
from hubbench.plan.cell import Cell
from hubbench.run import against
from hubbench.run.against import AgainstError, Side
from hubbench.run.rounds import check_hello, paired_sides
from hubbench.run.rows import CellState, make_row, state_from_row
from hubbench.run.worker import Worker

NUMPY = metadata.version("numpy")
ENTRY_OK = f"PROTOCOL = {PROTOCOL}\n"
PYPROJECT = '[project]\nname = "fake"\ndependencies = ["numpy>=1.0"]\n'


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return out.stdout.strip()


def _commit(repo: Path, tag: str, files: dict[str, str | None]) -> None:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", tag)
    _git(repo, "tag", tag)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good: a worker of our protocol, dependencies met; then one commit per refusal."""
    root = tmp_path_factory.mktemp("fake")
    _git(root, "init", "-q")
    _commit(root, "good", {against.ENTRY: ENTRY_OK, "pyproject.toml": PYPROJECT,
                           "constraints.txt": f"numpy=={NUMPY}\nnot-installed-pkg==1.0\n",
                           "tests/builders.py": "def build(v, c): ...\n"})  # fmt: skip
    _commit(root, "other-protocol", {against.ENTRY: f"PROTOCOL = {PROTOCOL + 1}\n"})
    _commit(root, "no-protocol", {against.ENTRY: "print('old worker')\n"})
    _commit(root, "no-entry", {against.ENTRY: None})
    _commit(root, "old-numpy", {against.ENTRY: ENTRY_OK, "constraints.txt": "numpy==1.0.0\n"})
    more = PYPROJECT.replace('"numpy>=1.0"', '"numpy>=1.0", "no-such-dist>=1"')
    _commit(root, "missing-dep", {"constraints.txt": "", "pyproject.toml": more})
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(against.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "worktrees"


def test_refs_resolve_to_full_commits(repo: Path) -> None:
    good = against.resolve(repo, "good")
    assert len(good) == 40 and good == _git(repo, "rev-parse", "good")
    assert against.resolve(repo, "no-entry~3") == good
    assert against.resolve(repo, good[:10]) == good
    with pytest.raises(AgainstError, match="'nope' is not a commit"):
        against.resolve(repo, "nope")


def test_the_good_commit_passes_its_checks(repo: Path) -> None:
    against.check_tree(repo, against.resolve(repo, "good"))


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("other-protocol", f"speaks protocol {PROTOCOL + 1}, this hubbench speaks {PROTOCOL}"),
        ("no-protocol", "declares no worker protocol"),
        ("no-entry", "has no hubbench/measure/entry.py"),
        ("old-numpy", f"numpy==1.0.0 (installed {NUMPY})"),
        ("missing-dep", "no-such-dist>=1 (not installed)"),
    ],
)
def test_refusals_say_why_in_one_line(repo: Path, tag: str, words: str) -> None:
    with pytest.raises(AgainstError) as caught:
        against.check_tree(repo, against.resolve(repo, tag))
    message = str(caught.value)
    assert words in message and "\n" not in message and message.startswith("--against: ")
    if tag in ("old-numpy", "missing-dep"):
        assert "out of scope" in message


def test_no_git_repository_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hubbench, "__file__", str(tmp_path / "x" / "hubbench" / "__init__.py"))
    with pytest.raises(AgainstError, match="nor the current directory is in a git repository"):
        against.source_repo(tmp_path)


def test_the_worktree_is_made_once_reused_and_repaired(repo: Path, cache: Path) -> None:
    sha = against.resolve(repo, "good")
    tree = against.worktree(repo, sha)
    assert tree == cache / sha and (tree / against.ENTRY).read_text() == ENTRY_OK
    marker = tree / "untracked.txt"  # untracked files (a __pycache__) do not make it dirty
    marker.write_text("x")
    assert against.worktree(repo, sha) == tree and marker.exists()
    (tree / against.ENTRY).write_text("edited\n")  # a tracked change: made again
    assert against.worktree(repo, sha) == tree
    assert (tree / against.ENTRY).read_text() == ENTRY_OK and not marker.exists()


def test_two_runs_at_once_share_one_worktree(repo: Path, cache: Path) -> None:
    sha = against.resolve(repo, "good")
    found: list[Path] = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            found.append(against.worktree(repo, sha))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and set(found) == {cache / sha}
    listed = _git(repo, "worktree", "list", "--porcelain")
    assert listed.count(str(cache / sha)) == 1
    assert _git(cache / sha, "status", "--porcelain", "--untracked-files=no") == ""


def test_a_builder_file_in_the_repository_comes_from_the_baselines_tree(
    repo: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests" / "builders.py").write_text("")
    mine = f"{repo / 'tests' / 'builders.py'}:build"
    assert against.baseline_builder(mine, repo, tree) == f"{tree / 'tests' / 'builders.py'}:build"
    assert against.baseline_builder("hubbench.models:build", repo, tree) == "hubbench.models:build"
    outside = f"{tmp_path / 'elsewhere.py'}:build"
    assert against.baseline_builder(outside, repo, tree) == outside
    with pytest.raises(AgainstError, match="not in the baseline's tree"):
        against.baseline_builder(f"{repo / 'other.py'}:build", repo, tree)


def _cell() -> Cell:
    from hubbench.cli.run import plan_suite

    return plan_suite("ci", axes={"seq": ["256"], "variant": ["hub-gpt"]}).cells[0]


def _sides(tmp_path: Path) -> tuple[Side, Side]:
    cand = Side("candidate", "c" * 40, tmp_path / "c", "hubbench.models:build")
    base = Side("baseline", "b" * 40, tmp_path / "b", "hubbench.models:build", str(tmp_path))
    return cand, base


def test_rows_keep_the_sides_apart(tmp_path: Path) -> None:
    cell = _cell()
    cand, base = _sides(tmp_path)
    env = {**host_env(), **dict.fromkeys(TORCH_ENV_KEYS), "git_commit": "c" * 40,
           "git_dirty": True}  # fmt: skip
    rows = {}
    for side in (cand, base):
        rows[side.name] = make_row(CellState(cell, side=side), "ci", "r1", env)
    c, b = rows["candidate"], rows["baseline"]
    assert (c["cell_id"], b["cell_id"]) == (f"{cell.cell_id}/candidate", f"{cell.cell_id}/baseline")
    assert (c["side"], c["side_commit"], c["git_commit"], c["git_dirty"]) == (
        "candidate", "c" * 40, "c" * 40, True)  # fmt: skip
    assert (b["side"], b["side_commit"], b["git_commit"], b["git_dirty"]) == (
        "baseline", "b" * 40, "b" * 40, False)  # fmt: skip
    plain = make_row(CellState(cell), "ci", "r1", env)
    assert plain["cell_id"] == cell.cell_id and plain["side"] is None
    again = state_from_row(cell, b, base)
    assert again.key == b["cell_id"] and again.side == base


def test_a_pass_puts_each_cells_sides_back_to_back_alternating(tmp_path: Path) -> None:
    import dataclasses

    cand, base = _sides(tmp_path)
    cells = [dataclasses.replace(_cell(), index=i, seq=256 * (i + 1)) for i in range(3)]
    group = [CellState(c, side=s) for s in (base, cand) for c in cells]  # sides apart
    for p in range(2):
        order = paired_sides(group, p)
        ids = [s.cell.cell_id for s in order]
        assert ids[0::2] == ids[1::2]  # pairs
        firsts = [s.side.name for s in order[0::2]]
        assert firsts == [["candidate", "baseline"][(p + k) % 2] for k in range(3)]
    plain = [CellState(c) for c in cells]
    assert paired_sides(plain, 1) == plain


def test_a_worker_that_is_not_the_code_meant_is_refused(tmp_path: Path) -> None:
    _, base = _sides(tmp_path)
    good = {"protocol": PROTOCOL, "module": str(tmp_path / "b" / "x.py"), "commit": "b" * 40}
    check_hello(good, base)
    for wrong, words in (({"module": "/elsewhere/entry.py"}, "imported /elsewhere"),
                         ({"protocol": PROTOCOL + 1}, "speaks protocol"),
                         ({"commit": "a" * 40}, "its tree is at aaaa")):  # fmt: skip
        with pytest.raises(HubbenchError, match=words):
            check_hello({**good, **wrong}, base)


@pytest.mark.slow  # starts a worker process (a fake one, no torch: about a second)
def test_the_baseline_worker_imports_its_tree_not_the_cwds(tmp_path: Path, monkeypatch) -> None:
    """A fake tree whose entry point answers with the file it runs from: with the cwd holding
    another hubbench (as when a run starts in the candidate's checkout) the worker still runs
    the tree given as its pythonpath."""
    for name in ("theirs", "cwd"):
        entry = tmp_path / name / "hubbench" / "measure" / "entry.py"
        entry.parent.mkdir(parents=True)
        for pkg in (entry.parent.parent, entry.parent):
            (pkg / "__init__.py").write_text("")
        entry.write_text("import json\nprint(json.dumps({'env': {'x': 1}, 'module': __file__}))\n")
    monkeypatch.chdir(tmp_path / "cwd")
    worker = Worker("unused:build", pythonpath=str(tmp_path / "theirs")).start(timeout=30)
    try:
        assert worker.hello["module"] == str(tmp_path / "theirs" / "hubbench/measure/entry.py")
    finally:
        worker.kill()
        worker.close()


@pytest.mark.slow
def test_head_against_head_end_to_end(tmp_path: Path) -> None:
    """The real repository's HEAD against itself, tiny models: two rows per cell, each side's
    commit recorded, and gate --ab judges the run. Needs HEAD to speak this protocol."""
    root = Path(hubbench.__file__).resolve().parent.parent
    head = against.git(root, "rev-parse", "HEAD")
    entry = against.show(root, head, against.ENTRY) if head else None
    if entry is None or against.protocol_of(entry) != PROTOCOL:
        pytest.skip("HEAD's worker does not speak this protocol (uncommitted change)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(root), str(clone)], check=True)
    results = tmp_path / "results"
    env = {"PATH": "/usr/bin:/bin", "HUBBENCH_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}  # fmt: skip
    builder = f"{clone / 'tests' / 'builders.py'}:build_tiny"
    run = subprocess.run(
        [sys.executable, "-m", "hubbench", "run", "ci", "--seq", "256", "--variant",
         "transformer", "--rounds", "3", "--repeats", "5", "--builder", builder,
         "--against", "HEAD", "--results-dir", str(results)],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    from hubbench import store

    rows = store.read_rows(store.latest_run(results, "ci"))
    assert sorted(r["side"] for r in rows) == ["baseline"] * 2 + ["candidate"] * 2
    assert {r["side_commit"] for r in rows} == {head}
    assert all(len(r["round_samples_s"]) == 3 for r in rows)
    gate = subprocess.run([sys.executable, "-m", "hubbench", "gate", "--ab", "latest",
                           "--results-dir", str(results)], cwd=clone, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert gate.returncode in (0, 1), gate.stderr
    assert "candidate" in gate.stdout and head[:12] in gate.stdout
    json.dumps(rows[0]["side"])  # plain strings in the file
