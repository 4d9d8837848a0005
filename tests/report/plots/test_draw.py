"""Figures: every kind renders, gaps stay visible, facets never mix, missing data is explained."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_runs import cell, grid, make_run

from hubbench.errors import ReportError
from hubbench.report.load import check_schema
from hubbench.report.plots import not_drawn, plot_run, render, supported
from hubbench.report.series import build_series, facets
from hubbench.report.style import series_style

SEQS = (1024, 4096, 16384)
FAILED = {("transformer", "naive", 16384): "oom", ("hub-jamba", None, 4096): "skipped"}


@pytest.fixture(scope="module")
def throughput_run():
    return check_schema(make_run(grid(seqs=SEQS), status=FAILED), "throughput")


@pytest.fixture(scope="module")
def hubs_run():
    cells = [
        cell("hub-gpt", n, hubs=m, topk=k) for n in (1024, 4096) for m in (4, 8) for k in (32, 64)
    ]
    df = make_run(cells, suite="hubs", status={("hub-gpt", "sdpa", 4096): "oom"})
    df.loc[df["seq"] == 1024, "status"] = "ok"  # only the 4k cells fail
    return check_schema(df, "hubs")


def _title(fig):
    """The figure-level title and subtitle lines."""
    return "\n".join(t.get_text() for t in fig.texts)


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def test_every_supported_kind_is_written(tmp_path, throughput_run):
    out = plot_run(throughput_run, tmp_path, formats=("png",))
    names = sorted(p.name for p in out.written)
    assert names == ["memory.png", "scaling.png", "speedup.png", "throughput.png"]
    assert all(p.stat().st_size > 20_000 for p in out.written)
    assert "run `hubbench run hubs`" in out.skipped["heatmap"]


def test_failed_cells_are_marked_and_footnoted(throughput_run):
    figures, _ = render(throughput_run, ["throughput"])
    texts = _texts(figures[0].figure)
    assert "oom" in texts and "skipped" in texts
    note = " ".join(next(t for t in texts if t.startswith("Median tokens/s")).split())
    assert "transformer · naive n=16k: oom" in note and "hub-jamba n=4k: skipped" in note
    title = _title(figures[0].figure)
    for word in ("Throughput", "NVIDIA H200", "bf16", "forward", "batch 8"):
        assert word in title


def test_scaling_legend_has_exponents_and_crossovers(throughput_run):
    figures, _ = render(throughput_run, ["scaling"])
    fig = figures[0].figure
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(lbl.startswith("transformer · sdpa:flash") and "n^{" in lbl for lbl in labels)
    # naive fails at 16k and hub-jamba is skipped at 4k: two points each, no slope claimed
    assert "transformer · naive  (2 points: no exponent)" in labels
    assert "hub-jamba  (2 points: no exponent)" in labels
    notes = " ".join(" ".join(_texts(fig)).split())
    assert "No exponent fitted: transformer · naive 2 points (n = 1k, 4k); hub-jamba 2 points " \
        "(n = 1k, 16k); a slope needs 3." in notes  # fmt: skip
    assert "Crossover (dashed lines), hub-gpt faster from:" in notes
    assert "vs transformer · naive: between 1k and 4k (2 points: not interpolated)" in notes
    assert "hub-jamba faster from: vs jamba" in notes


def test_two_lengths_give_no_exponent_and_no_crossover_line():
    """The ci suite's shape: every series at two n. The figure says why it fits nothing."""
    df = check_schema(make_run(grid(("transformer", "hub-gpt"), (256, 16384))), "ci")
    (sc,), _ = render(df, ["scaling"])
    ax = sc.figure.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["transformer · naive", "transformer · sdpa:flash", "hub-gpt"]
    texts = " ".join(" ".join(_texts(sc.figure)).split())
    assert "No exponent fitted: 2 points per series (n = 256, 16k), a slope needs 3." in texts
    assert "between 256 and 16k (2 points: not interpolated)" in texts
    assert "Exponents:" not in texts and "(dashed lines)" not in texts
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "crossover"]
    assert "no exponent is fitted: 2 points per series" in sc.caption
    assert "legend gives" not in sc.caption and "Dashed" not in sc.caption


def test_speedup_names_its_baseline(throughput_run):
    figures, _ = render(throughput_run, ["speedup"])
    labels = [t.get_text() for t in figures[0].figure.axes[0].get_legend().get_texts()]
    assert "hub-gpt over transformer · naive (native)" in labels
    assert "hub-gpt over transformer · sdpa:flash (optimised)" in labels
    assert "hub-jamba over jamba · naive (native)" in labels
    assert not any("over jamba" in lbl and "hub-gpt" in lbl for lbl in labels)


def test_mixed_dtypes_become_separate_figures(tmp_path):
    df = check_schema(
        make_run(grid(("transformer", "hub-gpt"), SEQS) + grid(("hub-gpt",), SEQS, dtype="fp32")),
        "mixed",
    )
    assert [f.slug for f in facets(df)] == ["bf16", "fp32"]
    figures, _ = render(df, ["throughput"])
    assert [r.stem for r in figures] == ["throughput-bf16", "throughput-fp32"]


def test_heatmap_over_hubs_and_topk(tmp_path, hubs_run):
    out = plot_run(hubs_run, tmp_path, kinds=["heatmap"], formats=("png", "svg"))
    assert sorted(p.name for p in out.written) == ["heatmap-hub-gpt.png", "heatmap-hub-gpt.svg"]
    figures, _ = render(hubs_run, ["heatmap"])
    texts = _texts(figures[0].figure)
    assert texts.count("oom") == 4 and any("Hatched cells did not run" in t for t in texts)


def test_explicit_kind_without_data_says_what_would_produce_it(throughput_run, hubs_run):
    with pytest.raises(
        ReportError, match=r"heatmap needs several hubs x topk values: run `hubbench run hubs`"
    ):
        render(throughput_run, ["heatmap"])
    with pytest.raises(ReportError, match="speedup needs a hub variant and its baseline"):
        render(hubs_run, ["speedup"])
    one_seq = check_schema(make_run(grid(seqs=(1024,))), "one")
    assert "scaling needs" in supported("scaling", one_seq)
    no_mem = throughput_run.assign(peak_mem_bytes=np.nan)
    assert "memory needs peak_mem_bytes" in supported("memory", no_mem)
    with pytest.raises(ReportError, match="unknown plot kind 'pie'"):
        render(throughput_run, ["pie"])


def test_not_drawn_names_only_kinds_the_runs_modes_could_give(throughput_run):
    skipped = dict.fromkeys(("heatmap", "state", "pareto", "curves"), "the long hint")
    assert not_drawn(skipped, throughput_run) == "heatmap (no hubs × topk grid)"
    decode = throughput_run.assign(mode="decode")
    assert not_drawn(skipped, decode) == "heatmap (no hubs × topk grid); state (no state bytes)"
    quality = throughput_run.assign(mode="quality")
    assert not_drawn(skipped, quality).endswith("curves (no learning curves)")
    assert not_drawn({}, throughput_run) == ""


def test_only_failed_cells_is_an_error():
    df = check_schema(
        make_run([cell("hub-gpt", 1024)], status={("hub-gpt", "sdpa", 1024): "error"}), "x"
    )
    with pytest.raises(ReportError, match="no ok cells"):
        render(df)


def test_styles_are_fixed_per_variant_and_backend(throughput_run):
    series = build_series(throughput_run)
    by_label = {s.label: s.style for s in series}
    assert by_label["transformer · naive"] == series_style("transformer", "naive")
    assert by_label["transformer · sdpa:flash"] == series_style("transformer", "sdpa")
    colours = [s.style.color for s in series]
    assert len(set(colours)) == len(colours)


def test_cpu_titles_name_the_thread_count():
    df = check_schema(make_run(grid(("hub-gpt",), SEQS, device="cpu"), extra={"threads": 1}), "cpu")
    figures, _ = render(df, ["throughput"])
    assert "NVIDIA H200 (1 thread) · bf16" in _title(figures[0].figure)


def test_rows_the_runner_makes_from_a_shipped_suite_plot_in_one_figure_per_kind():
    """Plan -> rows (the runner's own row assembly) -> figures, without measuring anything."""
    import pandas as pd

    from hubbench import schema
    from hubbench.measure.metrics import RoundResult
    from hubbench.plan import expand, load_suite
    from hubbench.run.rows import CellState, make_row

    plan = expand(load_suite("throughput"), cuda_available=False)
    env = dict.fromkeys(schema.names("env"))
    env.pop("utc_time")
    rows = []
    for c in plan.cells:
        state = CellState(c, device_name="cpu0")
        t = 1e-3 * c.seq * (2 if c.variant == "transformer" else 1)
        if c.model_config.get("attention") == "flash":
            state.failure = {"status": "skipped", "message": "no flash"}
        else:
            state.rounds = [
                RoundResult(samples_s=[t * (1 + 0.01 * k)] * 3, tokens=c.seq, warmup_s=0.1,
                            warmup_steps=3, warmup_capped=False, sentinel_s=0.01,
                            peak_mem_bytes=2**20 * c.seq, peak_mem_reserved_bytes=None,
                            mem_kind="cpu_rss", mem_baseline_bytes=0, flops_per_step=None,
                            flops_per_step_analytic=None, peak_flops_per_s=None,
                            peak_flops_source=None, params=1)
                for k in range(c.measure.rounds)
            ]  # fmt: skip
        rows.append(make_row(state, "throughput", "feed0001", env))
    df = check_schema(pd.DataFrame(rows), "throughput")
    figures, _ = render(df)
    assert sorted(f.stem for f in figures) == ["memory", "scaling", "speedup", "throughput"]


def test_state_plot_for_a_decode_run(tmp_path, throughput_run):
    df = throughput_run.copy()
    df["mode"] = "decode"
    per_token = {"transformer": 4096.0, "jamba": 512.0}  # KV bytes per token of context
    pairs = zip(df["variant"], df["seq"], strict=True)
    df["state_bytes"] = [int(per_token.get(v, 0.0) * n + 300_000) for v, n in pairs]
    figures, _ = render(df, ["state", "scaling"])
    state = next(f for f in figures if f.kind == "state")
    assert state.stem == "state"  # one facet: no suffix
    ax = state.figure.axes[0]
    assert ax.get_ylabel() == "state or KV cache per sequence"
    assert [t.get_text() for t in ax.get_yticklabels() if t.get_text()]  # labelled ticks
    scaling = next(f for f in figures if f.kind == "scaling")
    assert scaling.figure.axes[0].get_ylabel() == "time per generated token (median)"
    assert "run `hubbench run decode`" in render(throughput_run)[1]["state"]


def test_speedup_draws_the_ideal_ratio_dashed_in_the_pairs_colour(throughput_run):
    figures, _ = render(throughput_run, ["speedup"])
    ax = figures[0].figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    # naive and SDPA attention share their ceilings (same FLOPs and bytes): one line for both,
    # unless a side did not run somewhere (the fixture's naive transformer fails at 16k)
    assert "hub-jamba over jamba, ideal (native and optimised)" in lines
    assert "hub-jamba over jamba · naive (native), ideal" not in lines
    assert "hub-gpt over transformer · naive (native), ideal" in lines
    ideal = lines["hub-gpt over transformer · sdpa:flash (optimised), ideal"]
    measured = next(
        c
        for c in ax.containers
        if c.get_label() == "hub-gpt over transformer · sdpa:flash (optimised)"
    )
    assert ideal.get_linestyle() == "--"
    assert ideal.get_color() == measured.lines[0].get_color()
    seqs = sorted(set(throughput_run["seq"]))
    # synthetic ceilings: linear for the hub, x (1 + n/4096) for the baseline
    assert list(ideal.get_ydata()) == pytest.approx([1 + n / 4096 for n in seqs])


@pytest.mark.parametrize("seqs", [SEQS, (1024,)], ids=["lines", "rows"])
def test_speedup_captions_the_ideal_only_where_one_is_drawn(seqs):
    df = check_schema(make_run(grid(seqs=seqs)), "throughput")
    (drawn,), _ = render(df, ["speedup"])
    assert "the ideal ratio at both cells' speed of light" in drawn.caption or (
        "', ideal' rows: the ratio at both cells' speed of light" in drawn.caption
    )
    (bare,), _ = render(df.assign(speed_of_light_s=np.nan), ["speedup"])  # a CPU run: no peaks
    ax = bare.figure.axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert not [t for t in ax.get_yticklabels() if "ideal" in t.get_text()]
    assert "ideal" not in bare.caption and "dashed" not in bare.caption.lower()
    notes = " ".join(" ".join(_texts(bare.figure)).split())
    assert "No ideal is drawn: no cell has a speed of light" in notes
    assert "Dashed: the ideal" not in notes
