"""Figures for a paper: single-n charts, labelled log ticks, stable names, never-ran series,
crossover lines, captions, and text that stays text in SVG and PDF."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from synthetic_runs import cell, grid, make_run

from hubbench.errors import ReportError
from hubbench.report.fits import crossover
from hubbench.report.load import check_schema
from hubbench.report.plots import plot_run, render
from hubbench.report.plots.ticks import nice_ticks
from hubbench.report.series import build_series

MULTI = (512, 2048, 8192, 32768)
SINGLE = (1024,)
FLASH = "attention backend 'flash' needs the flash-attn package: pip install 'hubbench[flash]'"


def paper_run(seqs: tuple[int, ...]):
    """Every figure kind in one GPU-like run, three facets: bf16 forward (the four variants and a
    flash backend that never ran), fp32 forward (a hubs x topk sweep) and decode (state bytes)."""
    cells = grid(seqs=seqs)
    cells += [cell(v, n, attention="flash") for v in ("transformer", "jamba") for n in seqs]
    cells += grid(("transformer",), seqs, dtype="fp32")
    cells += [
        cell("hub-gpt", n, dtype="fp32", hubs=m, topk=k)
        for n in seqs
        for m in (4, 16)
        for k in (32, 128)
    ]
    cells += grid(("transformer", "hub-gpt"), seqs, mode="decode")
    status = {(v, "flash", n): "skipped" for v in ("transformer", "jamba") for n in seqs}
    df = check_schema(make_run(cells, status=status), "paper")
    df.loc[df["status"] == "skipped", "message"] = FLASH
    decode = df["mode"] == "decode"
    kv = np.where(df["variant"] == "transformer", 4096.0, 64.0)
    df["state_bytes"] = np.where(decode, kv * df["seq"] + 300_000, np.nan)
    return df


@pytest.fixture(scope="module", params=["multi", "single"])
def rendered(request):
    df = paper_run(MULTI if request.param == "multi" else SINGLE)
    figures, skipped = render(df)
    for r in figures:
        r.figure.canvas.draw()  # tick labels are set at draw time
    return request.param, df, figures, skipped


SHARED = [
    "throughput-fwd-bf16", "throughput-fwd-fp32", "throughput-decode-bf16",
    "speedup-fwd-bf16", "speedup-fwd-fp32", "speedup-decode-bf16",
    "heatmap-hub-gpt-fwd-fp32",
    "memory-fwd-bf16", "memory-fwd-fp32", "memory-decode-bf16",
    "state-decode-bf16",
]  # fmt: skip
SCALING = ["scaling-fwd-bf16", "scaling-fwd-fp32", "scaling-decode-bf16"]


def test_every_kind_renders_with_stable_file_names(rendered):
    which, _, figures, skipped = rendered
    stems = [r.stem for r in figures]
    want = SHARED if which == "single" else [*SHARED[:3], *SCALING, *SHARED[3:]]
    assert sorted(stems) == sorted(want)
    assert len(set(stems)) == len(stems)
    quality = {"pareto", "curves", "recall", "convergence", "frontier"}  # no quality in it
    assert set(skipped) == ({"scaling"} | quality if which == "single" else quality)


def _labelled(axis) -> list[tuple[float, str]]:
    """(value, text) of every tick, major or minor, that is inside the view and has a label."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
        for t in ticks:
            text = t.label1.get_text()
            if text and t.label1.get_visible() and lo <= t.get_loc() <= hi:
                out.append((t.get_loc(), text))
    return out


def _data(ax, name: str) -> list[float]:
    """Values drawn in data coordinates along one axis (points and whisker caps)."""
    values = []
    for line in ax.get_lines():
        if line.get_gid() == "crossover" or line.get_transform() != ax.transData:
            continue
        data = line.get_xdata() if name == "x" else line.get_ydata()
        values += [float(v) for v in np.atleast_1d(data) if np.isfinite(v) and v > 0]
    return values


def test_every_log_axis_has_labelled_ticks_around_the_data(rendered):
    _, _, figures, _ = rendered
    for r in figures:
        logs = 0
        for ax in r.figure.axes:
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                if axis.get_scale() != "log":
                    continue
                logs += 1
                labels = _labelled(axis)
                assert len(labels) >= 2, (r.stem, name, labels)
                if name == "x" and "length n" in ax.get_xlabel():
                    continue  # the n axis: its ticks are the measured n themselves
                ticks, data = [v for v, _ in labels], _data(ax, name)
                assert data, (r.stem, name)
                assert max(data) <= max(ticks) * (1 + 1e-9), (r.stem, name, max(data), ticks)
                assert min(data) >= min(ticks) * (1 - 1e-9), (r.stem, name, min(data), ticks)
        assert logs or r.kind == "heatmap", r.stem


@pytest.mark.parametrize(
    "lo, hi, binary",
    [(104 * 2**20, 108 * 2**20, True), (0.97, 1.02, False), (3.1, 3.1, False),
     (1234, 2150, False), (6.5e5, 4.6e6, False), (1e3, 6.4e10, True), (5e-4, 0.4, False)],
)  # fmt: skip
def test_nice_ticks_bracket_any_range(lo, hi, binary):
    for most in (2, 3, 5, 8):
        ticks = nice_ticks(lo, hi, binary=binary, most=most)
        assert len(ticks) >= 2 and ticks == sorted(ticks) and len(ticks) <= max(most, 3) + 1
        assert ticks[0] <= lo * (1 + 1e-9) and ticks[-1] >= hi * (1 - 1e-9)


def test_narrow_memory_axis_is_labelled_in_mib():
    """The case from the issue: peak memory over 104-108 MiB had no tick label at all."""
    cells = grid(("transformer", "hub-gpt"), (512, 1024))
    df = check_schema(make_run(cells), "narrow")
    df["peak_mem_bytes"] = [104 * 2**20 + k * 2**20 for k in range(len(df))]
    (fig,), _ = render(df, ["memory"])
    fig.figure.canvas.draw()
    texts = [t for _, t in _labelled(fig.figure.axes[0].yaxis)]
    assert len(texts) >= 2 and all(t.endswith("MiB") for t in texts), texts


def _legend(r) -> list[str]:
    leg = r.figure.axes[0].get_legend()
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


def _notes(r) -> list[str]:
    texts = [t.get_text() for ax in r.figure.axes for t in ax.texts]
    return [" ".join(line.split()) for t in texts for line in t.split("\n\n")]


def test_never_ran_series_take_no_legend_slot_and_one_footnote(rendered):
    _, _, figures, _ = rendered
    for r in figures:
        if r.kind == "heatmap" or "fwd-bf16" not in r.stem:
            continue
        labels = _legend(r) + [t.get_text() for t in r.figure.axes[0].get_yticklabels()]
        assert not [lb for lb in labels if "· flash" in lb], (r.stem, labels)
        marks = [ln for ln in r.figure.axes[0].get_lines() if ln.get_marker() == "x"]
        assert not marks, r.stem  # the only non-ok cells are the never-ran flash ones
        text = " ".join(" ".join(_notes(r)).split())
        assert text.count("Not run:") == 1, (r.stem, text)
        assert (
            "Not run: transformer · flash, jamba · flash (attention backend 'flash' needs the "
            "flash-attn package)." in text
        ), text


def test_series_with_some_failed_cells_keep_their_marks():
    df = check_schema(make_run(grid(seqs=MULTI), status={("hub-gpt", "sdpa", 8192): "oom"}), "x")
    (r,), _ = render(df, ["throughput"])
    assert "hub-gpt" in _legend(r)
    marks = [ln for ln in r.figure.axes[0].get_lines() if ln.get_marker() == "x"]
    assert len(marks) == 1 and "oom" in [t.get_text() for t in r.figure.axes[0].texts]


def test_single_n_is_one_row_per_series_in_display_order():
    df = paper_run(SINGLE)
    figures, _ = render(df, ["throughput", "speedup"])
    r = next(f for f in figures if f.stem == "throughput-fwd-bf16")
    ax = r.figure.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    facet_df = df[(df["mode"] == "fwd") & (df["dtype"] == "bf16")]
    ran = [s.label for s in build_series(facet_df) if not (s.rows["status"] == "skipped").all()]
    assert rows == ran
    points = [ln for ln in ax.get_lines() if ln.get_marker() not in ("None", "", "|", None)]
    ys = sorted({float(np.atleast_1d(ln.get_ydata())[0]) for ln in points if len(ln.get_ydata())})
    assert ys == [float(y) for y in range(len(ran))]  # one row each, none on top of another
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    values = [t.get_text() for t in ax.texts if re.fullmatch(r"[\d.]+M", t.get_text())]
    assert len(values) == len(ran)  # every row has its median written beside it
    sp = next(f for f in figures if f.stem == "speedup-fwd-bf16")
    rows = [" ".join(t.get_text().split()) for t in sp.figure.axes[0].get_yticklabels()]
    assert "hub-gpt over transformer · naive" in rows  # a long label breaks after "over"
    assert not [r for r in rows if "· flash" in r]


def test_crossover_is_drawn_at_its_n():
    cells = grid(("transformer", "hub-gpt"), (512, 1024, 2048, 4096))
    df = check_schema(make_run(cells, noise=0.005), "cross")
    series = {s.label: s for s in build_series(df)}
    hub, naive = series["hub-gpt"], series["transformer · naive"]
    both = hub.ok.merge(naive.ok, on="seq", suffixes=("_h", "_b"))
    expected = crossover(
        both["seq"].astype(float), both["time_median_s_h"], both["time_median_s_b"]
    )
    assert expected.kind == "cross" and 1024 < expected.n < 2048  # the cost model's ~1.5k
    figures, _ = render(df, ["throughput", "scaling"])
    for r in figures:
        ax = r.figure.axes[0]
        lines = [ln for ln in ax.get_lines() if ln.get_gid() == "crossover"]
        assert len(lines) == 1, r.stem  # vs sdpa the hub never overtakes below 4k
        assert list(lines[0].get_xdata()) == pytest.approx([expected.n] * 2)
        labels = [t.get_text() for t in ax.texts if t.get_gid() == "crossover-label"]
        assert labels == [f"hub-gpt > transformer · naive, {expected.text()}"]
        assert f"overtakes transformer · naive at {expected.text()}" in r.caption


def test_every_figure_has_a_caption(rendered):
    which, _, figures, _ = rendered
    for r in figures:
        assert r.caption and r.caption != r.stem and r.caption.endswith("."), r.stem
        assert "NVIDIA H200" in r.caption and "batch 8" in r.caption, r.caption
        if which == "single" and r.kind != "heatmap":
            assert "n = 1k" in r.caption, r.caption
    by_kind = {r.kind: r.caption for r in figures if r.kind == "heatmap" or "fwd-bf16" in r.stem}
    assert "p10–p90" in by_kind["throughput"]
    assert by_kind["throughput"].startswith("Median throughput (tokens/s) ")
    assert by_kind["memory"].startswith("Peak memory (CUDA allocated) ")
    for r in figures:  # "Throughput (throughput (tokens/s))": a word said twice in a row
        assert not re.search(r"\b(\w+) \(\1\b", r.caption, re.IGNORECASE), r.caption
    assert "95% bootstrap" in by_kind["speedup"]
    assert "hubs M × council budget k" in by_kind["heatmap"]
    if which == "multi":
        assert (
            "exponent" in by_kind["scaling"]
            and "Dashed lines: hub-gpt overtakes" in (by_kind["scaling"])
        )


@pytest.fixture(scope="module")
def vector_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("vector")
    df = check_schema(make_run(grid(seqs=MULTI)), "vector")
    plot_run(df, out, kinds=["throughput"], formats=("svg", "pdf"))
    return out


def test_svg_text_is_text(vector_files):
    svg = (vector_files / "throughput.svg").read_text()
    for label in ("sequence length n (tokens)", "throughput (tokens/s)"):
        assert re.search(r"<text[^>]*>" + re.escape(label) + "</text>", svg), label
    assert "<dc:date>" not in svg  # no creation date: the same run gives the same file


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) missing")
def test_pdf_text_is_selectable(vector_files):
    text = subprocess.run(
        ["pdftotext", str(vector_files / "throughput.pdf"), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for label in ("sequence length n (tokens)", "throughput (tokens/s)", "Throughput"):
        assert label in text, label


def test_unknown_format_names_the_valid_ones(tmp_path):
    df = check_schema(make_run(grid(seqs=MULTI)), "formats")
    with pytest.raises(ReportError, match=r"^unknown image format 'tiff'; valid: png, svg, pdf$"):
        plot_run(df, tmp_path, formats=("pdf", "tiff"))
    written = plot_run(df, tmp_path, kinds=["memory"], formats=("pdf",)).written
    assert [p.name for p in written] == ["memory.pdf"] and math.isfinite(written[0].stat().st_size)
