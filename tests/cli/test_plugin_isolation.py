"""Issue 33, item 3: a plug-in that exits with code 0, crashes or hangs at import or in its
forward never makes `run` / `run --dry-run` (plan-time import), `verify decode` or `profile`
end with exit 0 and no word: each is one line naming the plug-in and exit 2 (the CLI's code
for a plug-in error), a hang ends at --timeout, and a well-behaved plug-in still passes.

The commands run as subprocesses: a plug-in that calls os._exit(0) in pytest's own process
would end the test session with exit 0, the very silence this file guards against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = f"{Path(__file__).with_name('hostile_plugin.py')}:Hostile"


def hubbench(how: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUBBENCH_HOSTILE": how, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "hubbench", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Hostile" in line, line
    return line


def test_run_dry_run_refuses_a_plugin_that_exits_at_import(tmp_path: Path) -> None:
    result = hubbench("exit-at-import", "run", "ci", "--mixer", SPEC, "--dry-run", cwd=tmp_path)
    line = one_error_line(result)
    assert "importing it: its process exited with code 0 before reporting a result" in line


@pytest.mark.slow  # `run` without --dry-run (the fast tier starts no measuring process)
def test_run_refuses_a_plugin_that_exits_at_import_and_writes_nothing(tmp_path: Path) -> None:
    result = hubbench("exit-at-import", "run", "ci", "--mixer", SPEC, "--results-dir",
                      str(tmp_path / "results"), cwd=tmp_path)  # fmt: skip
    assert "exited with code 0" in one_error_line(result)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.parquet"))


def test_verify_decode_names_a_plugin_that_exits_in_forward(tmp_path: Path) -> None:
    result = hubbench("exit-in-forward", "verify", "decode", "mixer-gpt", "--mixer", SPEC,
                      "--seq", "8", cwd=tmp_path)  # fmt: skip
    line = one_error_line(result)
    assert line == (
        "error: plug-in check(s) could not run: Hostile-gpt: its process exited with code 0 "
        "before reporting a result"
    )


@pytest.mark.slow  # a profile in a child process
def test_profile_names_a_plugin_that_exits_in_forward(tmp_path: Path) -> None:
    result = hubbench("exit-in-forward", "profile", "mixer-gpt", "--mixer", SPEC, "--seq", "16",
                      "--steps", "1", cwd=tmp_path)  # fmt: skip
    line = one_error_line(result)
    assert line == "error: mixer Hostile: its process exited with code 0 before reporting a result"


@pytest.mark.slow  # several subprocesses, two of them waiting for a timeout
@pytest.mark.parametrize(
    ("how", "args", "said"),
    [
        ("hang-at-import", ["run", "ci", "--dry-run", "--timeout", "4"],
         "importing it: did not finish within 4 s (killed)"),
        ("hang-at-import", ["verify", "decode", "mixer-gpt", "--timeout", "4"],
         "importing it: did not finish within 4 s (killed)"),
        ("hang-in-forward", ["verify", "decode", "mixer-gpt", "--seq", "8", "--timeout", "8"],
         "Hostile-gpt: did not finish within 8 s (killed)"),
        ("crash-in-forward", ["verify", "decode", "mixer-gpt", "--seq", "8"],
         "Hostile-gpt: its process was killed by signal 11"),
        ("raise-in-forward", ["verify", "decode", "mixer-gpt", "--seq", "8"],
         "Hostile-gpt: raised ValueError: hostile on purpose"),
        ("hang-in-forward", ["profile", "mixer-gpt", "--seq", "16", "--timeout", "8"],
         "mixer Hostile: did not finish within 8 s (killed)"),
        ("crash-in-forward", ["profile", "mixer-gpt", "--seq", "16"],
         "mixer Hostile: its process was killed by signal 11"),
        ("raise-in-forward", ["profile", "mixer-gpt", "--seq", "16"],
         "mixer Hostile: raised ValueError: hostile on purpose"),
    ],
)  # fmt: skip
def test_each_fault_is_one_line_naming_the_plugin(
    tmp_path: Path, how: str, args: list[str], said: str
) -> None:
    result = hubbench(how, *args, "--mixer", SPEC, cwd=tmp_path)  # a hang: TimeoutExpired
    assert said in one_error_line(result)


@pytest.mark.slow  # the plug-in's check and trace in their child processes
def test_a_plugin_that_behaves_passes_through_its_child_process(tmp_path: Path) -> None:
    decode = hubbench("", "verify", "decode", "mixer-gpt", "--mixer", SPEC, "--seq", "8",
                      cwd=tmp_path)  # fmt: skip
    assert decode.returncode == 0, decode.stderr
    assert "Hostile-gpt: decode: PASS" in decode.stdout
    traced = hubbench("", "profile", "mixer-gpt", "--mixer", SPEC, "--seq", "16", "--steps", "1",
                      "--out", str(tmp_path / "traces"), cwd=tmp_path)  # fmt: skip
    assert traced.returncode == 0, traced.stderr
    assert "traced step(s)" in traced.stdout and list((tmp_path / "traces").rglob("*.json.gz"))
    planned = hubbench("", "run", "ci", "--mixer", SPEC, "--dry-run", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "Hostile-gpt" in planned.stdout
