"""Values at the boundary: coercion, CLI text, `key=v1,v2` items, list options, device names."""

from __future__ import annotations

import math

import pytest

from hubbench.errors import ConfigError
from hubbench.plan import fields


def test_coerce_accepts_what_fits_and_names_what_does_not() -> None:
    assert fields.coerce(3, float, "x") == 3.0 and isinstance(fields.coerce(3, float, "x"), float)
    assert fields.coerce(True, bool, "x") is True
    with pytest.raises(ConfigError, match="x: expected int, got True"):
        fields.coerce(True, int, "x")  # a bool is not a number here
    with pytest.raises(ConfigError, match=r"x: expected int, got 2\.5"):
        fields.coerce(2.5, int, "x")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="expected a finite number"):
            fields.coerce(bad, float, "x")
    with pytest.raises(ConfigError, match="out of range"):
        fields.coerce(2**63, int, "x")
    assert fields.coerce(2**63 - 1, int, "x") == 2**63 - 1


def test_parse_text() -> None:
    assert fields.parse_text(" 1024 ", int, "--seq") == 1024
    assert fields.parse_text("TRUE", bool, "--set causal") is True
    assert fields.parse_text("0.25", float, "--set replace") == 0.25
    assert fields.parse_text("sdpa", str, "--set attention") == "sdpa"
    with pytest.raises(ConfigError, match="--seq: '1k' is not a valid int"):
        fields.parse_text("1k", int, "--seq")
    with pytest.raises(ConfigError, match="--set compile: 'yes' is not a valid bool"):
        fields.parse_text("yes", bool, "--set compile")
    with pytest.raises(ConfigError, match="finite"):
        fields.parse_text("inf", float, "--timeout")


def test_parse_assignments_and_split_list() -> None:
    assert fields.parse_assignments(["hubs=4,8", "topk = 16"]) == {
        "hubs": ["4", "8"],
        "topk": ["16"],
    }
    with pytest.raises(ConfigError, match="given twice"):
        fields.parse_assignments(["hubs=4", "hubs=8"])
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        fields.parse_assignments(["=4"])
    with pytest.raises(ConfigError, match="no value given"):
        fields.parse_assignments(["hubs=,"])
    assert fields.split_list(["a,b", "c", "a"]) == ["a", "b", "c"]
    assert fields.split_list(None) == []


def test_resolve_device(monkeypatch) -> None:
    assert fields.resolve_device("cpu") == "cpu"
    assert fields.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="--device: unknown device 'tpu'"):
        fields.resolve_device("tpu", "--device")
    monkeypatch.setattr(fields, "cuda_available", lambda: True)
    assert fields.resolve_device("auto") == "cuda"
    monkeypatch.setattr(fields, "cuda_available", lambda: False)
    assert fields.resolve_device("auto") == "cpu"


def test_cuda_probe_agrees_with_torch_here(monkeypatch) -> None:
    import torch

    fields.cuda_available.cache_clear()
    assert fields.cuda_available() == torch.cuda.is_available()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    fields.cuda_available.cache_clear()
    assert fields.cuda_available() is False
    fields.cuda_available.cache_clear()


# ----------------------------------------------------------------------------- quality tasks


def test_the_task_list_has_one_home() -> None:
    """fields.TASKS is the list: the MQAR layouts come from it, the report's MQAR tasks are the
    planner's, and the run field's description and docs/quality.md name exactly these tasks."""
    import re
    from pathlib import Path

    from hubbench.plan import quality as plan_quality
    from hubbench.plan.runfields import RUN_FIELDS
    from hubbench.report import seeds

    assert fields.TASKS == ("mqar", "mqar-legacy", "bytes")
    assert plan_quality.MQAR_TASKS == ("mqar", "mqar-legacy") == seeds.MQAR_TASKS
    assert not hasattr(plan_quality, "QUALITY_TASKS")  # no second list to drift
    described = RUN_FIELDS["task"].doc.split(":", 1)[1]
    assert [t.strip() for t in described.split("(")[0].split("|")] == list(fields.TASKS)
    docs = Path(__file__).parents[2] / "docs" / "quality.md"
    [row] = [line for line in docs.read_text().splitlines() if line.startswith("| `task` |")]
    named = row.split("|")[3]
    assert re.findall(r"`([a-z-]+)`", named) == list(fields.TASKS)
    reference = (docs.parent / "reference.md").read_text()
    [listed] = re.findall(r"the quality mode's `task`\s*\(([^)]*)\)", reference)
    assert re.findall(r"`([a-z-]+)`", listed) == list(fields.TASKS)


def test_an_unknown_task_names_every_task_and_each_is_accepted() -> None:
    from types import SimpleNamespace

    from hubbench.plan.quality import check_quality

    run = {"lr": 1e-3, "seq": 64, "kv_pairs": 4, "data": "pydoc"}
    for task in fields.TASKS:  # every listed task plans (mqar needs vocab > seq)
        check_quality({**run, "task": task}, SimpleNamespace(vocab=8192))
    for bad in ("nope", "MQAR", "mqar_legacy", ""):
        with pytest.raises(ConfigError) as err:
            check_quality({**run, "task": bad}, SimpleNamespace(vocab=8192))
        assert str(err.value).startswith(f"unknown task {bad!r}; valid: mqar, mqar-legacy, bytes")
        assert err.value.fields == ("task",)


def test_the_cli_refuses_an_unknown_task_before_running() -> None:
    from typer.testing import CliRunner

    from hubbench.cli import app

    result = CliRunner().invoke(app, ["run", "quality", "--set", "task=mqar2", "--dry-run"])
    assert result.exit_code != 0
    out = " ".join((result.stdout + (result.stderr or "")).split())
    assert "unknown task 'mqar2'; valid: mqar, mqar-legacy, bytes" in out


def test_the_busy_warning_counts_busy_processes_not_a_blip(monkeypatch) -> None:
    """Two one-thread quality jobs on two cores at load 0.3 are no busy machine; at 1.4 one core
    is taken and the cells will contend."""
    from hubbench.plan import fields

    monkeypatch.setattr(fields, "usable_cpus", lambda: 2)
    monkeypatch.setattr(fields.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert fields.oversubscribed(2) is None
    monkeypatch.setattr(fields.os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert "load average 1.4 on 2 CPU(s)" in (fields.oversubscribed(2) or "")
    assert fields.oversubscribed(1) is None  # one thread beside one busy process: room
