"""Expansion into cells (hubbench.plan.expand): what multiplies cells, what is checked when a cell
is planned, devices, identities."""

from __future__ import annotations

from pathlib import Path

import pytest
from suite_files import BASE, plan_of, write

from hubbench.errors import SuiteError
from hubbench.plan import expand, load_suite, measure_overrides, parse_overrides
from hubbench.plan.cell import Cell


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
