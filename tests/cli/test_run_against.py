"""`hubbench run --against` refusals and `hubbench gate --ab` through Typer's CliRunner: one
line, exit 2, nothing written; a planted slowdown exits 1 naming its variant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.run import against

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
from synthetic_runs import write_run
from test_gate_ab import ab_run


def _repo(tmp_path: Path) -> Path:
    """A repository whose only commit has no worker: every --against of it is refused."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True)  # fmt: skip
    return repo


@pytest.mark.parametrize(
    ("ref", "words"),
    [("no-such-ref", "'no-such-ref' is not a commit"), ("HEAD", "has no hubbench/measure")],
)
def test_run_against_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str, words: str
) -> None:
    repo = _repo(tmp_path)
    monkeypatch.setattr(against, "source_repo", lambda cwd=None: repo)
    monkeypatch.setenv(against.CACHE_ENV, str(tmp_path / "cache"))
    results = tmp_path / "results"
    out = CliRunner().invoke(app, ["run", "ci", "--seq", "256", "--against", ref,
                                   "--results-dir", str(results)])  # fmt: skip
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--against: " in lines[0] and words in lines[0]
    assert not list(results.rglob("*.parquet")) and not (tmp_path / "cache").exists()


def test_gate_ab_exits_1_naming_the_slowed_variant(tmp_path: Path) -> None:
    write_run(ab_run(slowdown={"hub-gpt": 0.25}), tmp_path)
    out = CliRunner().invoke(app, ["gate", "--ab", "latest", "--results-dir", str(tmp_path)])
    assert out.exit_code == 1, out.output
    assert "1 check(s) regressed beyond noise: hub-gpt" in out.output
    assert "baseline" in out.output and "candidate" in out.output


def test_gate_ab_passes_identical_sides_and_refuses_an_ordinary_run(tmp_path: Path) -> None:
    write_run(ab_run(), tmp_path)
    out = CliRunner().invoke(app, ["gate", "--ab", "latest", "--results-dir", str(tmp_path)])
    assert out.exit_code == 0 and "gate passed" in out.output, out.output
    plain = ab_run().query("side == 'candidate'").assign(side=None, run_id="plain001")
    path = write_run(plain, tmp_path, stamp="20250102T000000Z")
    out = CliRunner().invoke(app, ["gate", "--ab", str(path), "--results-dir", str(tmp_path)])
    assert out.exit_code == 2 and "not a same-run A/B" in out.output


def test_the_baseline_gate_sends_an_ab_run_to_ab(tmp_path: Path) -> None:
    path = write_run(ab_run(), tmp_path)
    out = CliRunner().invoke(app, ["gate", "--baseline", str(path), "--candidate", str(path),
                                   "--results-dir", str(tmp_path)])  # fmt: skip
    assert out.exit_code == 2 and "gate it with --ab RUN" in out.output


def test_results_table_names_the_sides_and_commits(tmp_path: Path) -> None:
    write_run(ab_run(), tmp_path)
    out = CliRunner().invoke(app, ["results", "latest", "--results-dir", str(tmp_path)],
                             env={"COLUMNS": "200"})  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "candidate" in out.output and "baseline" in out.output
    assert f"candidate {'c' * 12}, baseline {'b' * 12}" in " ".join(out.output.split())


def test_resume_of_an_ab_run_is_refused_off_local_before_building_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume alone continues the latest run's A/B; under another executor that is refused in
    one line naming --resume and the fix, before REF's worktree is built."""
    write_run(ab_run(), tmp_path)  # suite ci, baseline bbbb...

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("the baseline's worktree was built before the refusal")

    monkeypatch.setattr(against, "sides", built)
    out = CliRunner().invoke(app, ["run", "ci", "--seq", "512", "--resume", "--executor",
                                   "submitit-local", "--results-dir", str(tmp_path)])  # fmt: skip
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1, out.output
    assert "--resume continues ci's latest run, a same-run A/B against bbbbbbbbbbbb" in lines[0]
    assert "add --executor local" in lines[0]
    assert len(list(tmp_path.rglob("*.parquet"))) == 1  # nothing new written
