"""Issue 33's plug-ins written to hide from `verify causal`: the old single probe (eval, random
inputs, n = 40) passed each of them; the card's probes give each the right verdict. And a
plug-in that exits, hangs or leaves a process behind is a clean ERROR row (its own process)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.models import build_model
from hubbench.verify import causality
from hubbench.verify.card import CardSettings
from hubbench.verify.checking import check_target
from hubbench.verify.isolated import check_isolated
from hubbench.verify.targets import CardTarget

MIXERS = Path(__file__).parent / "card_mixers.py"
SETTINGS = CardSettings(seeds=(0, 1), draws=1, length_seed=3, timeout=60)
runner = CliRunner()


def spec(name: str) -> str:
    return f"{MIXERS}:{name}"


def target(name: str) -> CardTarget:
    return CardTarget(f"{name}-gpt", "mixer-gpt", {}, mixer=spec(name))


def old_probe_passes(name: str) -> bool:
    """What `verify causal` did before the card: eval mode, random inputs, n = 40."""
    model = build_model("mixer-gpt", mixer=spec(name), d_model=32, n_layers=2, n_heads=2)
    return causality.check_model(model, n=40, seeds=(0, 1, 2)).passed


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("LeakPast40", "n=64"),
        ("LeakAt64", "n=64"),
        ("LeakOnRepeats", "repeated"),
        ("LeakInTrain", "train"),
    ],
)
def test_a_leak_the_old_probe_missed_is_caught(name: str, probe: str) -> None:
    assert old_probe_passes(name)  # the blind spot, as issue 33 found it
    row = check_target(target(name), SETTINGS)
    assert row.verdict == "LEAKS THE FUTURE", row
    worst = row.worst()
    assert worst is not None and probe in worst.probe


def test_a_causal_plugin_rounding_in_fp32_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    row = check_target(target("CausalFp32"), SETTINGS)
    assert row.verdict == "pass", row
    prefix = next(c for c in row.checks if c.name == "prefix")
    assert prefix.max_leak > 1e-10  # rounding above the old absolute bar ...
    monkeypatch.setattr(causality, "TOL_ULPS", 0)  # ... which called it a leak
    assert check_target(target("CausalFp32"), SETTINGS).verdict == "LEAKS THE FUTURE"


def test_nan_from_a_plugin_is_unusable() -> None:
    row = check_target(target("NanOut"), SETTINGS)
    assert row.verdict == "UNUSABLE" and "non-finite output" in row.message


def test_a_plugin_that_exits_in_forward_is_an_error_row_not_a_pass() -> None:
    row = check_isolated(target("ExitsInForward"), SETTINGS)
    assert row.verdict == "ERROR"
    assert "exited with code 0 before reporting a result" in row.message


def test_a_plugin_that_hangs_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    row = check_isolated(target("Hangs"), CardSettings(timeout=6))
    assert row.verdict == "ERROR" and "did not finish within 6 s (killed)" in row.message
    assert time.monotonic() - start < 30


def test_a_plugins_child_process_does_not_outlive_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("CARD_TEST_PIDFILE", str(pidfile))
    row = check_isolated(target("SpawnsChild"), CardSettings(seeds=(0,), draws=0))
    assert row.verdict == "pass", row
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie is dead, only not yet reaped by PID 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ", 1)[1][0] != "Z"


def test_the_cli_exits_2_with_one_line_for_a_plugin_that_exits() -> None:
    result = runner.invoke(
        app, ["verify", "causal", "mixer-gpt", "--mixer", spec("ExitsInForward"), "--draws", "0"]
    )
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: plug-in check(s) could not run: ExitsInForward-gpt")


@pytest.mark.slow  # every blind-spot plug-in through the CLI, each in its own process
def test_the_cli_gives_each_blind_spot_plugin_its_verdict() -> None:
    leaky = ["LeakPast40", "LeakAt64", "LeakOnRepeats", "LeakInTrain"]
    args = [a for name in [*leaky, "CausalFp32"] for a in ("--mixer", spec(name))]
    result = runner.invoke(app, ["verify", "causal", "mixer-gpt", *args])
    assert result.exit_code == 1, result.output
    assert "CausalFp32-gpt: causal: PASS" in result.output
    for name in leaky:
        assert f"{name}-gpt: LEAKS THE FUTURE" in result.output
