"""[[exclude]] and gate rules (hubbench.plan.rules): checked when loaded, applied when expanded."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_files import plan_of, write

from hubbench.errors import SuiteError
from hubbench.plan import expand, load_suite


def test_gate_rules_are_validated(tmp_path: Path) -> None:
    good = (
        '[sweep]\nvariant = ["transformer"]\nseq = [64]\n'
        '[[gate.ratio]]\nname = "r"\nnumerator = { variant = "hub-gpt" }\n'
        'denominator = { variant = "transformer", seq = 64 }\nmin = 1.5\n'
    )
    rule = load_suite(write(tmp_path, good)).gate[0]
    assert (rule.name, rule.metric, rule.min, rule.max) == ("r", "tokens_per_s", 1.5, None)
    assert rule.denominator == {"variant": "transformer", "seq": 64}
    with pytest.raises(SuiteError, match=r"gate\.ratio\[0\] sets neither min nor max"):
        load_suite(write(tmp_path, good.replace("min = 1.5\n", "")))
    with pytest.raises(SuiteError, match=r"gate\.ratio\[0\]\.metric 'speed' is unknown"):
        load_suite(write(tmp_path, good.replace('name = "r"', 'name = "r"\nmetric = "speed"')))
    with pytest.raises(SuiteError, match=r"numerator\.hubz is not a known field"):
        load_suite(write(tmp_path, good.replace('{ variant = "hub-gpt" }', "{ hubz = 4 }")))


def test_exclude_rule_validation(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"exclude\[0\]\.seq\.above is unknown; valid: lt, le"):
        load_suite(write(tmp_path, "[[exclude]]\nseq = { above = 4 }\n"))
    with pytest.raises(SuiteError, match=r"exclude\[0\] has no conditions"):
        load_suite(write(tmp_path, '[[exclude]]\nreason = "x"\n'))


def test_exclude_rules_drop_matching_cells_only(tmp_path: Path) -> None:
    body = (
        '[sweep]\nseq = [64, 128]\nvariant = ["transformer", "hub-gpt"]\n'
        'attention = ["naive", "sdpa"]\n'
        '[[exclude]]\nattention = "naive"\nseq = { gt = 64 }\nreason = "too slow"\n'
    )
    plan = plan_of(tmp_path, body)
    kept = {(c.variant, c.model_config["attention"], c.seq) for c in plan.cells}
    assert ("transformer", "naive", 128) not in kept
    assert ("transformer", "naive", 64) in kept
    assert ("hub-gpt", None, 128) in kept  # attention is null for hub-gpt: the rule cannot match
    assert [reason for _, reason in plan.excluded] == ["too slow"]


def test_a_rule_excludes_a_combination_that_cannot_be_built(tmp_path: Path) -> None:
    head = '[defaults]\ndevice = "cpu"\nmode = "quality"\nd_model = 16\nn_heads = 1\n'
    # mqar-legacy (the old layout) lays out at vocab 64, n 64; Zoology's mqar needs vocab > n
    sweep = '[sweep]\nseq = [64]\nvariant = ["transformer"]\ntask = ["mqar-legacy", "bytes"]\n'
    sweep += "vocab = [64, 256]\n"
    rules = '[[exclude]]\ntask = "bytes"\nvocab = 64\nreason = "bytes needs 256 tokens"\n'
    rules += '[[exclude]]\ntask = "mqar-legacy"\nvocab = 256\nreason = "mqar at 64"\n'
    path = tmp_path / "q.toml"
    path.write_text(head + sweep + rules)
    plan = expand(load_suite(path), cuda_available=False)
    assert sorted((c.task, c.config.vocab) for c in plan.cells) == [
        ("bytes", 256),
        ("mqar-legacy", 64),
    ]
    assert sorted(r for _, r in plan.excluded) == ["bytes needs 256 tokens", "mqar at 64"]
    path.write_text(head + sweep)  # without the rule it is the error it always was
    with pytest.raises(SuiteError, match="task bytes needs vocab >= 256"):
        expand(load_suite(path), cuda_available=False)


def test_everything_excluded_is_an_error(tmp_path: Path) -> None:
    body = '[sweep]\nseq = [64]\nvariant = ["transformer"]\n[[exclude]]\nseq = [64]\n'
    with pytest.raises(SuiteError, match="no cells to run; 1 excluded"):
        plan_of(tmp_path, body)
