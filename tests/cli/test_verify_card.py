"""`hubbench verify causal --all` through the CLI: its options, and (slow) the real registry with
a plug-in, where every causal variant passes and every leaky control is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubbench.cli import app
from hubbench.plan.variants import REGISTRY, config_fields, is_plugin

runner = CliRunner()
SWA = "examples/sliding_window.py:SlidingWindowAttention"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all", "hub-gpt"], "give variants or --all, not both"),
        (["--draws", "-1"], "--draws must be >= 0"),
        (["--timeout", "0"], "--timeout > 0"),
        (["--batch", "1"], "--batch >= 2"),
        (["hub-gpt", "--markdown", "/"], "--markdown / is a directory"),  # before any check
    ],
)
def test_bad_card_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", "causal", *args])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_the_card_records_its_lengths_and_draw(tmp_path: Path) -> None:
    out = tmp_path / "c.md"
    args = ["verify", "causal", "transformer", "--seeds", "1", "--length-seed", "11"]
    result = runner.invoke(app, [*args, "--markdown", str(out)])
    assert result.exit_code == 0, result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["settings"]["length_seed"] == 11 and card["settings"]["draws"] == 1
    [row] = card["rows"]
    assert row["lengths"][:2] == [40, 64] and len(row["lengths"]) == 3  # main, 2^6, one drawn
    assert 65 <= row["lengths"][2] <= 160  # drawn
    assert "length seed 11" in out.read_text()


@pytest.mark.slow  # the whole registry and a plug-in in its own process: about 30 s of CPU
def test_the_whole_registry_passes_and_every_control_is_caught(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["verify", "causal", "--all", "--mixer", SWA, "--set", "span=4", "--results-dir",
         str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [path] = (tmp_path / "verify").glob("causal-*.json")
    assert path.with_suffix(".md").is_file()
    rows = {r["label"]: r for r in json.loads(path.read_text())["rows"]}
    for variant in REGISTRY:
        if is_plugin(variant):
            continue
        assert rows[variant]["verdict"] == "pass", rows[variant]
        if "causal" in config_fields(variant):
            control = rows[f"{variant} causal=false"]
            assert control["verdict"] == "control caught" and control["expected"] == "leaky"
    for host in ("gpt", "jamba"):
        row = rows[f"SlidingWindowAttention-{host}"]
        assert row["verdict"] == "pass" and row["fields"]["span"] == 4
