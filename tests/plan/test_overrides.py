"""The command line's overrides (hubbench.plan.overrides): typed axes that replace a suite's."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_files import write

from hubbench.errors import SuiteError
from hubbench.plan import expand, load_suite, measure_overrides, parse_overrides


def test_cli_overrides_replace_axes_and_are_typed(tmp_path: Path) -> None:
    body = '[sweep]\nseq = [64, 128]\nvariant = ["transformer", "hub-gpt"]\n'
    suite = load_suite(write(tmp_path, body))
    overrides = parse_overrides(["hubs=2,4", "replace=0.5"], seq="96", variant="hub-gpt")
    plan = expand(suite, overrides, cuda_available=False)
    assert {c.seq for c in plan.cells} == {96}
    assert {c.model_config["hubs"] for c in plan.cells} == {2, 4}
    assert {c.model_config["replace"] for c in plan.cells} == {0.5}
    assert {c.variant for c in plan.cells} == {"hub-gpt"}
    plan = expand(suite, {}, measure_overrides(repeats=7, warmup=0), cuda_available=False)
    assert {(c.measure.repeats, c.measure.warmup) for c in plan.cells} == {(7, 0)}


def test_cli_override_errors() -> None:
    with pytest.raises(SuiteError, match=r"--set hubz: unknown field 'hubz'"):
        parse_overrides(["hubz=4"])
    with pytest.raises(SuiteError, match=r"--seq: 'long' is not a valid int"):
        parse_overrides(seq="512,long")
    with pytest.raises(SuiteError, match=r"expected key=v1,v2"):
        parse_overrides(["hubs"])
    with pytest.raises(SuiteError, match=r"--set compile: 'yes' is not a valid bool"):
        parse_overrides(["compile=yes"])


def test_override_causing_an_impossible_cell_is_named(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, '[sweep]\nseq = [64]\nvariant = ["hub-gpt"]\n'))
    with pytest.raises(SuiteError, match=r"--set topk.*: cell hub-gpt n=64: topk=100 exceeds"):
        expand(suite, parse_overrides(["topk=100"]), cuda_available=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq": ""}, r"--seq '': an empty value"),  # it ran the whole sweep
        ({"seq": "512,"}, r"--seq '512,': an empty value"),
        ({"sets": ["hubs=4,,8"]}, r"--set hubs=4,,8: an empty value between commas"),
    ],
)
def test_an_empty_value_is_an_error_not_skipped(kwargs: dict, match: str) -> None:
    """issue 33, item 10: empty option values were silently dropped."""
    with pytest.raises(SuiteError, match=match):
        parse_overrides(**kwargs)
