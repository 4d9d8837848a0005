"""Suite files: parsing, validation with file-and-key messages, overrides, expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbench.errors import SuiteError
from hubbench.plan import (
    available_suites,
    expand,
    load_suite,
    measure_overrides,
    parse_overrides,
)
from hubbench.plan.cell import Cell

SHIPPED = ("throughput", "scaling", "hubs", "replace", "ci", "decode")

BASE = """
description = "test suite"
[measure]
warmup = 1
repeats = 2
[defaults]
device = "cpu"
mode = "fwd"
d_model = 32
n_layers = 2
n_heads = 2
"""


def write(tmp_path: Path, body: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE + body)
    return path


def plan_of(tmp_path: Path, body: str, **kw):
    return expand(load_suite(write(tmp_path, body)), cuda_available=False, **kw)


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


def test_available_suites_lists_the_shipped_ones() -> None:
    assert set(SHIPPED) <= set(available_suites())


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


# ----------------------------------------------------------------------------- bad input


def test_unknown_suite_lists_available() -> None:
    with pytest.raises(SuiteError, match=r"unknown suite 'nope'; available: .*throughput"):
        load_suite("nope")


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


def test_impossible_shape_names_file_and_keys_before_running(tmp_path: Path) -> None:
    path = tmp_path / "shape.toml"
    path.write_text(
        '[defaults]\nd_model = 32\nvariant = "transformer"\n[sweep]\nseq = [64]\nn_heads = [2, 3]\n'
    )
    with pytest.raises(SuiteError) as info:
        expand(load_suite(path), cuda_available=False)
    message = str(info.value)
    assert "shape.toml: sweep.n_heads" in message and "shape.toml: defaults.d_model" in message
    assert "d_model=32 is not divisible by n_heads=3" in message


def test_topk_above_seq_is_an_error(tmp_path: Path) -> None:
    body = '[sweep]\nvariant = ["hub-gpt"]\nseq = [64]\ntopk = [16, 128]\n'
    with pytest.raises(SuiteError, match=r"sweep\.topk.*topk=128 exceeds seq=64"):
        plan_of(tmp_path, body)


def test_bad_choice_value_is_an_error(tmp_path: Path) -> None:
    body = '[sweep]\nvariant = ["transformer"]\nseq = [64]\nattention = ["sdpa", "fast"]\n'
    with pytest.raises(SuiteError, match=r"sweep\.attention.*attention='fast' is not valid"):
        plan_of(tmp_path, body)
    with pytest.raises(SuiteError, match=r"unknown variant 'gpt5'"):
        plan_of(tmp_path, '[sweep]\nvariant = ["gpt5"]\nseq = [64]\n')
    with pytest.raises(SuiteError, match=r"--mode.*unknown mode 'infer'"):
        plan_of(
            tmp_path,
            '[sweep]\nvariant = ["transformer"]\nseq = [64]\n',
            overrides=parse_overrides(mode="infer"),
        )


def test_missing_seq_or_variant(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="no seq given"):
        plan_of(tmp_path, '[sweep]\nvariant = ["transformer"]\n')


def test_bad_measure_values(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[measure]\nrepeats = 0\n")
    with pytest.raises(SuiteError, match=r"measure\.repeats must be >= 1"):
        load_suite(path)
    with pytest.raises(SuiteError, match=r"--timeout must be > 0"):
        measure_overrides(timeout_s=0)
    with pytest.raises(SuiteError, match=r"--timeout: expected a finite number"):
        measure_overrides(timeout_s=float("inf"))


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


# ----------------------------------------------------------------------------- expansion


def test_fields_that_do_not_apply_do_not_multiply_cells(tmp_path: Path) -> None:
    body = (
        '[sweep]\nseq = [64]\nvariant = ["transformer", "hub-gpt", "hub-jamba"]\n'
        'attention = ["naive", "sdpa"]\nhubs = [4, 8]\n'
    )
    plan = plan_of(tmp_path, body)
    by_variant: dict[str, list[Cell]] = {}
    for cell in plan.cells:
        by_variant.setdefault(cell.variant, []).append(cell)
    assert len(by_variant["transformer"]) == 2  # attention only
    assert len(by_variant["hub-gpt"]) == 2  # hubs only: replace=1 leaves no attention layer
    assert len(by_variant["hub-jamba"]) == 2
    t = by_variant["transformer"][0].model_config
    assert "hubs" not in t  # transformer has no such field: null in its row
    h = by_variant["hub-gpt"][0].model_config
    assert h["attention"] is None and h["sdpa_kernel"] is None and h["hubs"] in (4, 8)
    assert plan.merged == 2 * 1 + 2 * 1 + 2 * 1  # t x hubs, hub-gpt x attn, hub-jamba x attn


def test_hub_gpt_with_partial_replace_keeps_attention(tmp_path: Path) -> None:
    body = (
        '[sweep]\nseq = [64]\nvariant = ["hub-gpt"]\nreplace = [0.5, 1.0]\n'
        'attention = ["naive", "sdpa"]\n'
    )
    plan = plan_of(tmp_path, body)
    pairs = sorted(
        (c.model_config["replace"], c.model_config["attention"] or "-") for c in plan.cells
    )
    assert pairs == [(0.5, "naive"), (0.5, "sdpa"), (1.0, "-")]


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
    sweep = '[sweep]\nseq = [64]\nvariant = ["transformer"]\ntask = ["mqar", "bytes"]\n'
    sweep += "vocab = [64, 256]\n"
    rules = '[[exclude]]\ntask = "bytes"\nvocab = 64\nreason = "bytes needs 256 tokens"\n'
    rules += '[[exclude]]\ntask = "mqar"\nvocab = 256\nreason = "mqar at 64"\n'
    path = tmp_path / "q.toml"
    path.write_text(head + sweep + rules)
    plan = expand(load_suite(path), cuda_available=False)
    assert sorted((c.task, c.config.vocab) for c in plan.cells) == [("bytes", 256), ("mqar", 64)]
    assert sorted(r for _, r in plan.excluded) == ["bytes needs 256 tokens", "mqar at 64"]
    path.write_text(head + sweep)  # without the rule it is the error it always was
    with pytest.raises(SuiteError, match="task bytes needs vocab >= 256"):
        expand(load_suite(path), cuda_available=False)


def test_everything_excluded_is_an_error(tmp_path: Path) -> None:
    body = '[sweep]\nseq = [64]\nvariant = ["transformer"]\n[[exclude]]\nseq = [64]\n'
    with pytest.raises(SuiteError, match="no cells to run; 1 excluded"):
        plan_of(tmp_path, body)


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


def test_device_overlay_and_auto(tmp_path: Path) -> None:
    body = (
        '[sweep]\nseq = [64]\nvariant = ["transformer"]\n'
        '[defaults.cuda]\ndtype = "bf16"\n[sweep.cuda]\nseq = [256, 512]\n'
        "[measure.cuda]\nrepeats = 9\n"
    )
    text = BASE.replace('device = "cpu"', 'device = "auto"') + body
    path = tmp_path / "auto.toml"
    path.write_text(text)
    suite = load_suite(path)
    cpu = expand(suite, cuda_available=False)
    assert [(c.device, c.seq, c.model_config["dtype"], c.measure.repeats) for c in cpu.cells] == [
        ("cpu", 64, "fp32", 2)
    ]
    cuda = expand(suite, cuda_available=True)
    assert [(c.device, c.seq, c.model_config["dtype"], c.measure.repeats) for c in cuda.cells] == [
        ("cuda", 256, "bf16", 9),
        ("cuda", 512, "bf16", 9),
    ]
    # --device cuda without a GPU still expands: the runner turns the cells into skipped rows
    forced = expand(suite, parse_overrides(device="cuda"), cuda_available=False)
    assert {c.device for c in forced.cells} == {"cuda"}
    with pytest.raises(SuiteError, match="unknown device 'tpu'"):
        expand(suite, parse_overrides(device="tpu"), cuda_available=False)


def test_cell_identity_and_json_round_trip(tmp_path: Path) -> None:
    body = '[sweep]\nseq = [64]\nvariant = ["hub-gpt"]\n'
    suite = load_suite(write(tmp_path, body))
    a = expand(suite, cuda_available=False).cells[0]
    b = expand(suite, {}, measure_overrides(repeats=9), cuda_available=False).cells[0]
    assert a.cell_id == b.cell_id  # how carefully it is measured is not part of the identity
    c = expand(suite, parse_overrides(["hubs=4"]), cuda_available=False).cells[0]
    assert c.cell_id != a.cell_id
    explicit = expand(suite, parse_overrides(["hubs=8"]), cuda_available=False).cells[0]
    assert explicit.cell_id == a.cell_id  # 8 is the default: same cell either way
    assert Cell.from_json(a.to_json()) == a
    assert a.model_config["hubs"] == 8 and a.model_config["attention"] is None


def test_inference_modes_are_checked_when_planned(tmp_path: Path) -> None:
    hub = '[sweep]\nvariant = ["hub-gpt"]\nseq = [256]\n'

    def plan(body: str, mode: str = "decode", **axes: str):
        return plan_of(tmp_path, body, overrides=parse_overrides(mode=mode, **axes))

    cells = plan(hub + "chunk = [32, 64]\n").cells
    assert [c.config.chunk for c in cells] == [32, 64]  # 64 tokens per step: both fit
    with pytest.raises(SuiteError, match=r"decode_tokens=64 must be a multiple of chunk=128"):
        plan(hub + "chunk = [128]\n")
    assert plan(hub + "chunk = [128]\n", decode_tokens="256").cells[0].decode_tokens == 256
    with pytest.raises(SuiteError, match=r"mode decode needs a causal model"):
        plan(hub + "causal = [false]\n")
    with pytest.raises(SuiteError, match=r"mode prefill does not run compiled"):
        plan('[sweep]\nvariant = ["transformer"]\nseq = [64]\ncompile = [true]\n', "prefill")
    with pytest.raises(SuiteError, match=r"--decode-tokens: .*decode_tokens must be >= 1"):
        plan(hub, decode_tokens="0")
    assert plan(hub, "fwd", decode_tokens="0").cells  # it does not apply to other modes
    no_hub = '[sweep]\nvariant = ["hub-gpt"]\nseq = [256]\nreplace = [0.0]\nchunk = [48]\n'
    assert plan(no_hub).cells  # chunk is inert without a HubRouter layer: no multiple check
    # other modes ignore it: no extra cells, no field in their identity
    cells = plan('[sweep]\nvariant = ["transformer"]\nseq = [64]\ndecode_tokens = [32, 64]\n',
                 "fwd,decode").cells  # fmt: skip
    assert sorted((c.mode, c.identity.get("decode_tokens")) for c in cells) == [
        ("decode", 32), ("decode", 64), ("fwd", None)]  # fmt: skip


def test_the_decode_suite_plans_on_cpu() -> None:
    plan = expand(load_suite("decode"), cuda_available=False)
    modes = {c.mode for c in plan.cells}
    assert modes == {"prefill", "decode"} and {c.batch for c in plan.cells} == {1, 8}
    assert max(c.seq for c in plan.cells) == 16384
    assert all(c.seq <= 4096 for c in plan.cells if c.batch == 8)


def test_cell_ids_of_the_ci_suite_are_pinned() -> None:
    """Ids join runs across versions (compare, gate --baseline): a new cell field must leave the
    ids of cells it does not apply to alone (these were computed before decode_tokens existed)."""
    plan = expand(load_suite("ci"), cuda_available=False)
    assert [c.cell_id for c in plan.cells] == [
        "db953a10d6da", "bf1eba24e12e", "162b5348506b",
        "3a119e6093ac", "8a19e6ebab94", "9d646d8e6d3f",
    ]  # fmt: skip
    decode = expand(load_suite("decode"), cuda_available=False).cells[0]
    assert decode.identity["decode_tokens"] == 64 and decode.cell_id == "3f99e0a22b6a"
