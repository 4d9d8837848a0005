"""Plug-in mixers (hubbench.plan.plugins): specs, the contract, planning, building, the
checks, a run.

`test_a_plugin_runs_next_to_the_built_in_variants` is the one test here that starts a worker; it
and the causality check of two models per mixer are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from hubbench import models, store
from hubbench.cli import app
from hubbench.errors import ConfigError, SuiteError
from hubbench.plan import expand, load_suite, mixer_info, parse_overrides, with_mixers
from hubbench.plan.plugins import PluginError, display_name, inspect_mixer, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SWA = f"{ROOT / 'examples' / 'sliding_window.py'}:SlidingWindowAttention"
MIXERS = ROOT / "tests" / "plugins" / "mixers.py"


def spec(name: str) -> str:
    return f"{MIXERS}:{name}"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# ----------------------------------------------------------------------------- specs, contract


def test_specs_parse_as_files_or_modules() -> None:
    file = parse_spec("examples/sliding_window.py:SlidingWindowAttention")
    assert (file.is_file, file.target, file.name) == (
        True,
        "examples/sliding_window.py",
        "SlidingWindowAttention",
    )
    module = parse_spec("mypkg.layers:Mixer")
    assert (module.is_file, module.target, module.name) == (False, "mypkg.layers", "Mixer")
    assert display_name("a/b.py:Foo") == "Foo" and display_name(None) is None


def test_the_docs_name_plugin_rows_as_the_tables_do() -> None:
    """Issue 27: rows read 'SlidingWindowAttention-gpt' where the README said only mixer-gpt."""
    from hubbench.plan.variants import display_name as row_name

    shown = row_name("mixer-gpt", "examples/sliding_window.py:SlidingWindowAttention")
    assert shown == "SlidingWindowAttention-gpt"
    for doc in ("README.md", "docs/reference.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert f"`{shown}" in text and "`mixer-gpt`" in text, doc
    run = typer.main.get_command(app).commands["run"]
    [mixer] = [p for p in run.params if p.name == "mixer"]
    assert "mixer-gpt" in mixer.help and "shown as Class-gpt" in mixer.help


@pytest.mark.parametrize("text", ["no_colon", "file.py:", ":Class", "file.py:not-an-id", "a b:C"])
def test_a_malformed_spec_is_one_line(text: str) -> None:
    with pytest.raises(PluginError, match=r"expected FILE\.py:Class|neither a \.py file"):
        parse_spec(text)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("NoContract", "constructor lacks d_model, n_heads, causal"),
        ("NotAModule", "not an nn.Module subclass"),
        ("Missing", "has no Missing"),
    ],
)
def test_a_class_outside_the_contract_is_refused(name: str, match: str) -> None:
    with pytest.raises(PluginError, match=match):
        inspect_mixer(spec(name))


def test_import_failures_name_the_spec(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match=r"importing .*broken.py failed: ModuleNotFoundError"):
        inspect_mixer(f"{broken}:X")
    with pytest.raises(PluginError, match="no file"):
        inspect_mixer(f"{tmp_path / 'absent.py'}:X")
    with pytest.raises(PluginError, match="cannot import not_a_module_anywhere"):
        inspect_mixer("not_a_module_anywhere:X")


def test_the_example_declares_its_options_and_flops() -> None:
    info = inspect_mixer(SWA)
    assert info.name == "SlidingWindowAttention"
    assert {n: (o.type, o.default) for n, o in info.options.items()} == {"span": (int, 128)}
    assert info.analytic and not info.decodable
    with pytest.raises(PluginError, match=r"no option.*wdw; valid: span"):
        info.check_options({"wdw": 3}, "here")


# ----------------------------------------------------------------------------- planning


def test_mixer_adds_plugin_twins_and_its_options_sweep() -> None:
    loaded = load_suite("throughput")
    overrides = parse_overrides(["span=32,64"], seq="128", mixer=SWA)
    plan = expand(loaded, with_mixers(loaded, overrides), cuda_available=False)
    plugged = [c for c in plan.cells if c.variant.startswith("mixer-")]
    assert sorted((c.variant, c.config.mixer_options) for c in plugged) == [
        ("mixer-gpt", '{"span":32}'),
        ("mixer-gpt", '{"span":64}'),
        ("mixer-jamba", '{"span":32}'),
        ("mixer-jamba", '{"span":64}'),
    ]
    assert all(c.config.mixer == SWA for c in plugged)
    assert len(plan.cells) == 8 + 4  # the built-in cells are not multiplied by span
    # a default spelled out is the same cell as the default left out
    ids = {
        c.cell_id
        for opts in ([], ["span=128"])
        for c in expand(
            loaded,
            with_mixers(loaded, parse_overrides(opts, seq="128", mixer=SWA)),
            cuda_available=False,
        ).cells
        if c.variant == "mixer-gpt"
    }
    assert len(ids) == 1


def test_plugin_options_are_typed_and_checked() -> None:
    with pytest.raises(SuiteError, match="span"):
        parse_overrides(["span=wide"], seq="128", mixer=SWA)
    with pytest.raises(SuiteError, match="unknown field 'span'"):
        parse_overrides(["span=64"], seq="128")  # no plug-in: no such field
    with pytest.raises(SuiteError, match="constructor lacks"):
        parse_overrides([], seq="128", mixer=spec("NoContract"))
    # --set mixer=SPEC brings its options too
    axes = parse_overrides([f"mixer={SWA}", "span=16"], seq="128")
    assert axes["span"].values == (16,)


def plugin_ids(mixer: str, *sets: str, variant: str = "mixer-gpt") -> set[str]:
    loaded = load_suite("throughput")
    overrides = parse_overrides(list(sets), seq="128", mixer=mixer, variant=variant)
    cells = expand(loaded, with_mixers(loaded, overrides), cuda_available=False).cells
    return {c.cell_id for c in cells if c.variant == "mixer-gpt"}


def test_equal_builds_are_one_cell_and_edited_code_a_new_one(tmp_path: Path) -> None:
    float_default = spec("FloatDefault")  # gain: float = 1 (an int default)
    assert (
        plugin_ids(float_default)
        == plugin_ids(float_default, "gain=1")
        == plugin_ids(float_default, "gain=1.0")
    )
    source = tmp_path / "m.py"
    source.write_text(MIXERS.read_text())
    rel = Path("x") / ".." / source.relative_to(tmp_path)
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        same = plugin_ids(f"{rel}:CausalMean"), plugin_ids("./m.py:CausalMean")
        assert same[0] == same[1]
        mixer_info.cache_clear()
        source.write_text(source.read_text() + "\n# edited\n")
        assert plugin_ids("m.py:CausalMean") != same[0]  # the digest moved
    finally:
        os.chdir(here)
        mixer_info.cache_clear()


def test_mixer_with_variants_that_cannot_take_it_is_an_error() -> None:
    with pytest.raises(SuiteError, match="needs a plug-in variant"):
        plugin_ids(SWA, variant="transformer")


def test_a_plugin_variant_needs_its_mixer() -> None:
    loaded = load_suite("throughput")
    overrides = parse_overrides([], seq="128", variant="mixer-gpt")
    with pytest.raises(SuiteError, match="needs mixer="):
        expand(loaded, overrides, cuda_available=False)


# ----------------------------------------------------------------------------- building


def test_the_model_is_built_around_the_plugin_with_its_flops() -> None:
    opts = json.dumps({"span": 16})
    gpt = models.build_model("mixer-gpt", mixer=SWA, mixer_options=opts, d_model=32, n_heads=2)
    assert gpt.layer_kinds == ["mixer"] * 4
    hybrid = models.build_model(
        "mixer-jamba", mixer=SWA, mixer_options=opts, d_model=32, n_layers=4
    )
    assert hybrid.layer_kinds == ["mamba", "mamba", "mixer", "mamba"]
    idx = torch.randint(0, 256, (2, 40))
    assert gpt(idx).shape == (2, 40, 256)
    swa = gpt.blocks[0].mixer.inner
    per_layer = swa.analytic_flops(40)
    transformer = models.build_model("transformer", d_model=32, n_heads=2)
    attention = transformer.blocks[0].mixer.analytic_flops(40)
    rest = transformer.flops_analytic(1, 40, "fwd") - 4 * attention
    assert gpt.flops_analytic(1, 40, "fwd") == pytest.approx(rest + 4 * per_layer)
    no_flops = models.build_model("mixer-gpt", mixer=spec("LeakyMean"), d_model=32, n_heads=2)
    assert no_flops.flops_analytic(1, 40, "fwd") is None  # counted FLOPs only


def test_a_wrong_shape_is_a_plugin_error() -> None:
    model = models.build_model("mixer-gpt", mixer=spec("WrongShape"), d_model=32, n_heads=2)
    with pytest.raises(PluginError, match=r"returned \(2, 8, 64\) for input \(2, 8, 32\)"):
        model(torch.randint(0, 256, (2, 8)))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("ReturnsInt64", r"mixer ReturnsInt64: forward returned int64 for a float32 input; a "
                         r"mixer returns float32"),
        ("ReturnsFloat64", r"mixer ReturnsFloat64: forward returned float64 for a float32 input"),
        ("Detached", r"mixer Detached: forward's result does not depend on its input through "
                     r"autograd"),
    ],
)  # fmt: skip
def test_a_result_the_model_cannot_train_is_a_plugin_error(name: str, match: str) -> None:
    """An int64 result gave an ok row that trained nothing; a float64 one a torch error naming no
    mixer; a detached one trained everything but the mixer, silently (issue 33, item 5)."""
    model = models.build_model("mixer-gpt", mixer=spec(name), d_model=32, n_heads=2)
    idx = torch.randint(0, 256, (2, 8))
    with pytest.raises(PluginError, match=match):
        model.loss(idx, idx)
    if name == "Detached":
        with torch.no_grad():  # inference asks nothing of autograd: the result is fine there
            assert model(idx).shape == (2, 8, 256)


def test_a_plugin_under_autocast_may_return_the_autocast_dtype() -> None:
    model = models.build_model("mixer-gpt", mixer=SWA, d_model=32, n_heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randint(0, 256, (1, 8))).shape == (1, 8, 256)


def test_a_constructor_failure_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="constructor failed: ValueError: a causal span"):
        models.build_model("mixer-gpt", mixer=SWA, mixer_options='{"span": 0}')


def test_labels_name_the_mixer_and_its_options() -> None:
    from hubbench.report.load import describe

    row = {"variant": "mixer-gpt", "mixer": SWA, "mixer_options": '{"span":64}', "seq": 1024}
    assert describe(row, ["variant", "mixer", "mixer_options", "seq"]) == (
        "SlidingWindowAttention-gpt span=64 n=1k"
    )


# ----------------------------------------------------------------------------- checks, a run


@pytest.mark.slow
def test_verify_causal_passes_the_example_and_fails_a_leak(runner: CliRunner) -> None:
    ok = runner.invoke(app, ["verify", "causal", "--mixer", SWA, "--set", "span=4"])
    assert ok.exit_code == 0, ok.output
    assert "SlidingWindowAttention-gpt: causal: PASS" in ok.output
    assert "SlidingWindowAttention-jamba: causal: PASS" in ok.output
    leak = runner.invoke(app, ["verify", "causal", "--mixer", spec("LeakyMean")])
    assert leak.exit_code == 1, leak.output
    assert "LeakyMean-gpt: LEAKS THE FUTURE" in leak.output


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("WrongShape", "returned (2, 40, 64)"),
        ("Raises", "raised RuntimeError: this mixer is broken"),
    ],
)
def test_verify_names_a_broken_plugin(runner: CliRunner, name: str, match: str) -> None:
    result = runner.invoke(app, ["verify", "causal", "--mixer", spec(name)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: plug-in check(s) could not run:") and match in line


def test_verify_decode_says_a_plugin_without_decode_path(runner: CliRunner) -> None:
    result = runner.invoke(app, ["verify", "decode", "--mixer", SWA])
    assert result.exit_code == 2
    assert "has no incremental decode path" in result.stderr


def test_a_plugin_with_a_plain_dict_state_decodes(runner: CliRunner) -> None:
    result = runner.invoke(app, ["verify", "decode", "--mixer", spec("CausalMean")])
    assert result.exit_code == 0, result.output
    assert "CausalMean-gpt: decode: PASS" in result.output
    model = models.build_model("mixer-gpt", mixer=spec("CausalMean"), d_model=32, n_heads=2)
    _, state = model.prefill(torch.randint(0, 256, (2, 8)))
    assert state.bytes_by_kind() == {"mixer": 4 * 2 * 32 * 4}  # 4 layers x (2, 1, 32) fp32


def test_a_causal_false_flag_does_not_excuse_a_leaking_plugin(runner: CliRunner) -> None:
    result = runner.invoke(app, ["verify", "causal", "--mixer", spec("LeakyFlagged")])
    assert result.exit_code == 1, result.output
    assert "LeakyFlagged-gpt: LEAKS THE FUTURE" in result.output


def test_two_files_with_one_class_name_stay_apart_in_figures(tmp_path: Path) -> None:
    from rows import full_row

    from hubbench.report.series import build_series

    other = tmp_path / "v2.py"
    other.write_text(MIXERS.read_text())
    rows = [
        full_row(variant="mixer-gpt", mixer=m, mixer_options="{}", seq=64, status="ok")
        for m in (spec("CausalMean"), f"{other}:CausalMean")
    ]
    labels = [s.label for s in build_series(pd.DataFrame(rows))]
    assert len(set(labels)) == 2 and all(label.startswith("CausalMean-gpt (") for label in labels)


def test_profile_takes_a_plugin_and_names_its_failure(runner: CliRunner, tmp_path: Path) -> None:
    base = ["profile", "mixer-gpt", "--seq", "16", "--steps", "1", "--set", "d_model=32",
            "--set", "n_layers=1", "--out", str(tmp_path)]  # fmt: skip
    ok = runner.invoke(app, [*base, "--mixer", SWA, "--set", "span=8"])
    assert ok.exit_code == 0, ok.output
    broken = runner.invoke(app, [*base, "--mixer", spec("Raises")])
    assert broken.exit_code == 2
    assert "error: mixer Raises: raised RuntimeError: this mixer is broken" in broken.stderr
    with pytest.raises(ConfigError, match="needs a plug-in variant"):
        from hubbench.cli.profile import plugin_fields

        plugin_fields("transformer", {}, SWA)


TINY = """
description = "a plug-in next to a built-in variant"
[measure]
warmup = 1
repeats = 2
rounds = 1
timeout_s = 120
warmup_max_s = 1
[defaults]
mode = "fwd_bwd"
device = "cpu"
d_model = 32
n_layers = 2
n_heads = 2
[sweep]
seq = [32, 64]
variant = ["transformer"]
"""


@pytest.mark.slow
def test_a_plugin_runs_next_to_the_built_in_variants(runner: CliRunner, tmp_path: Path) -> None:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    results = tmp_path / "results"
    args = ["run", str(suite), "--results-dir", str(results), "--set", "span=16"]
    result = runner.invoke(app, [*args, "--mixer", f"{SWA},{spec('WrongShape')}"])
    assert result.exit_code == 0, result.output
    [path] = store.list_runs(results)
    df = pd.read_parquet(path)
    by = {
        (r.variant, r.mixer.rsplit(":", 1)[-1] if isinstance(r.mixer, str) else None, r.seq): r
        for r in df.itertuples()
    }
    assert set(by) == {
        (v, m, n)
        for n in (32, 64)
        for v, m in (("transformer", None), ("mixer-gpt", "SlidingWindowAttention"),
                     ("mixer-gpt", "WrongShape"))
    }  # fmt: skip
    swa = by[("mixer-gpt", "SlidingWindowAttention", 64)]
    assert swa.status == "ok" and swa.tokens_per_s > 0
    assert swa.mixer_options == '{"span":16}' and swa.flops_per_step_analytic > 0
    broken = by[("mixer-gpt", "WrongShape", 32)]
    assert broken.status == "error" and "returned (1, 32, 64)" in broken.message
    plot = runner.invoke(
        app, ["plot", str(path), "--kind", "throughput", "--out", str(tmp_path / "plots")]
    )
    assert plot.exit_code == 0, plot.output
    svg = next((tmp_path / "plots").glob("throughput*.svg")).read_text()
    assert "SlidingWindowAttention-gpt" in svg
