"""Suite files (hubbench.plan.suite): the shipped suites, and bad files named by file and key.

Where suites are found: test_find.py; rules: test_rules.py; overrides: test_overrides.py;
expansion into cells: test_expand.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from suite_files import SHIPPED, write

from hubbench.errors import SuiteError
from hubbench.plan import expand, load_suite, measure_overrides

# ----------------------------------------------------------------------------- shipped suites


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_suites_load_and_expand_on_cpu_and_cuda(name: str) -> None:
    suite = load_suite(name)
    cpu = expand(suite, cuda_available=False)
    cuda = expand(suite, cuda_available=True)
    assert cpu.cells and cuda.cells
    assert {c.device for c in cpu.cells} == {"cpu"}
    if name != "ci":  # ci pins device = "cpu"
        assert {c.device for c in cuda.cells} == {"cuda"}
    ids = [c.cell_id for c in cpu.cells]
    assert len(ids) == len(set(ids))
    assert [c.index for c in cpu.cells] == list(range(len(cpu.cells)))


def test_throughput_covers_four_variants_and_both_attentions() -> None:
    plan = expand(load_suite("throughput"), cuda_available=False)
    assert {c.variant for c in plan.cells} == {"transformer", "jamba", "hub-jamba", "hub-gpt"}
    assert {c.seq for c in plan.cells} == {512, 1024, 2048, 4096}
    attentions = {c.model_config["attention"] for c in plan.cells if c.variant == "transformer"}
    assert {"naive", "sdpa", "flash"} <= attentions
    cuda = expand(load_suite("throughput"), cuda_available=True)
    assert max(c.seq for c in cuda.cells) > 4096  # larger sizes are the cuda defaults


def test_ci_suite_carries_ratio_gate_rules_that_match_its_cells() -> None:
    suite = load_suite("ci")
    assert 1 <= len(suite.gate) <= 2
    plan = expand(suite, cuda_available=False)
    for rule in suite.gate:
        assert rule.metric == "tokens_per_s" and rule.min is not None
        for side in (rule.numerator, rule.denominator):
            hits = [c for c in plan.cells if all(c.identity.get(k) == v for k, v in side.items())]
            assert len(hits) == 1, (rule.name, side)


def test_scaling_runs_naive_only_where_it_fits() -> None:
    plan = expand(load_suite("scaling"), cuda_available=False)
    naive = [c.seq for c in plan.cells if c.model_config.get("attention") == "naive"]
    assert naive and max(naive) < max(c.seq for c in plan.cells)
    assert max(c.seq for c in plan.cells) == 32768
    assert plan.excluded


def test_replace_suite_grades_hub_gpt() -> None:
    plan = expand(load_suite("replace"), cuda_available=False)
    assert {c.model_config["replace"] for c in plan.cells} == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_the_decode_suite_plans_on_cpu() -> None:
    plan = expand(load_suite("decode"), cuda_available=False)
    modes = {c.mode for c in plan.cells}
    assert modes == {"prefill", "decode"} and {c.batch for c in plan.cells} == {1, 8}
    assert max(c.seq for c in plan.cells) == 16384
    assert all(c.seq <= 4096 for c in plan.cells if c.batch == 8)


# ----------------------------------------------------------------------------- bad input


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\n[sweep]\nseq = [512,, 1024]\nvariant = ["hub-gpt"]\n')
    with pytest.raises(SuiteError, match=r"bad\.toml: invalid TOML: .*line \d+, column \d+"):
        load_suite(path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"t\.toml: sweep\.hub_count is not a known field"):
        load_suite(write(tmp_path, "[sweep]\nhub_count = [4]\n"))
    with pytest.raises(SuiteError, match=r"top-level key 'sweeps' is unknown"):
        load_suite(write(tmp_path, "[sweeps]\nseq = [4]\n"))
    with pytest.raises(SuiteError, match=r"measure\.cpu\.repeat is unknown"):
        load_suite(write(tmp_path, "[measure.cpu]\nrepeat = 3\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"sweep\.seq\[1\]: expected int, got 'long'"):
        load_suite(write(tmp_path, '[sweep]\nseq = [512, "long"]\n'))
    with pytest.raises(SuiteError, match=r"sweep\.seq: a sweep axis must be a non-empty list"):
        load_suite(write(tmp_path, "[sweep]\nseq = 512\n"))
    with pytest.raises(SuiteError, match=r"expected bool"):
        load_suite(write(tmp_path, "[sweep]\ncompile = [1]\nseq=[64]\n"))


def test_list_in_defaults_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[defaults]\nseq = [64, 128]\nvariant = "transformer"\n')
    with pytest.raises(SuiteError, match=r"defaults\.seq: defaults take one value"):
        load_suite(path)


def test_field_set_twice_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"sweep\.d_model is also set in .*defaults\.d_model"):
        load_suite(write(tmp_path, "[sweep]\nd_model = [32, 64]\n"))


def test_bad_measure_values(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[measure]\nrepeats = 0\n")
    with pytest.raises(SuiteError, match=r"measure\.repeats must be >= 1"):
        load_suite(path)
    with pytest.raises(SuiteError, match=r"--timeout must be > 0"):
        measure_overrides(timeout_s=0)
    with pytest.raises(SuiteError, match=r"--timeout: expected a finite number"):
        measure_overrides(timeout_s=float("inf"))


@pytest.mark.parametrize(
    ("stem", "problem"),
    [
        (".", "starts with '.'"),  # ..toml: runs went to results/ itself
        ("..", "starts with '.'"),  # ...toml: runs went to results/'s parent
        (".hidden", "starts with '.'"),
        ("a\\b", "path separator"),
        ("a\tb", "control character"),
        ("baselines", "reserved"),  # runs would sit among the pinned baselines
    ],
)
def test_a_suite_name_must_be_one_safe_results_folder(
    tmp_path: Path, stem: str, problem: str
) -> None:
    message = rf"{re.escape(stem)}\.toml: suite name .* {problem}"
    with pytest.raises(SuiteError, match=message):
        load_suite(write(tmp_path, "", name=stem))
    with pytest.raises(SuiteError, match=message):  # the name key says the same
        load_suite(write(tmp_path, f"name = {json.dumps(stem)}\n", name=stem))
