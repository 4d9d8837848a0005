"""Issue 27's acceptance: a calibration stored from a loaded run never yields an MFU (or a
fraction of the speed of light) over 100% unflagged, in the run table, the HTML report, the
headline or the speedup figure."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import grid, make_run

from hubbench.measure import calibration as cal
from hubbench.measure.cell import execute_cell
from hubbench.measure.env import host_env, torch_env
from hubbench.measure.metrics import RoundResult
from hubbench.measure.process import load_builder
from hubbench.plan.cell import Cell
from hubbench.plan.runfields import Measure
from hubbench.plan.variants import make_config
from hubbench.report import format as fmt
from hubbench.report.headline import headline, ratio_lines, table
from hubbench.report.html import build_html
from hubbench.report.plots import render
from hubbench.report.runtable import run_table
from hubbench.run.rows import CellState, make_row

BUILDER = f"{Path(__file__).resolve().parent.parent / 'builders.py'}:build_tiny"
LOADED = "2026-01-02T03:04:05Z"  # the date the stale calibration carries
PERCENT = re.compile(r"\d+\.\d%")  # what fmt.fraction prints


def _loaded_calibration() -> None:
    """What `env --calibrate --force` stores beside busy loops: peaks far below the real ones."""
    load = {"sentinel_s": 0.02, "sentinel_spread": 0.6, "cpu_share": 0.3, "load_average": 3.1,
            "busy": "the noise sentinel varied 60% over 5 readings"}  # fmt: skip
    cal.save_calibration(cal.calibration_key("cpu"), {
        "fp32": {"flops_per_s": 1e6, "what": "best of 5 2048x2048 fp32 matmuls",
                 "utc_time": LOADED, "load": load},
        "memory": {"bytes_per_s": 1e6, "what": "best of 5 256 MiB copies",
                   "utc_time": LOADED, "load": load},
    })  # fmt: skip


def _measured_row() -> dict:
    """One real tiny cell, measured the way `hubbench run` measures it, against that peak."""
    cell = Cell(
        index=0, variant="transformer", mode="fwd_bwd", device="cpu", batch=1, seq=32,
        compile=False, threads=1,
        config=make_config("transformer", vocab=32, d_model=16, n_heads=2, n_layers=1),
        measure=Measure(warmup=1, warmup_min_s=0.0, warmup_max_s=0.0, repeats=2, rounds=1,
                        timeout_s=60.0),
    )  # fmt: skip
    answer = execute_cell(cell, load_builder(BUILDER))
    assert answer["outcome"]["status"] == "ok", answer["outcome"]
    state = CellState(cell, rounds=[RoundResult.from_json(answer["round"])])
    return make_row(state, "t", "r0000001", {**host_env(), **torch_env()})


@pytest.fixture(scope="module")
def loaded_row(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cal.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        _loaded_calibration()
        row = _measured_row()
    assert row["mfu"] > 1 and row["speed_of_light_fraction"] > 1  # what the issue saw
    assert row["peak_flops_source"].endswith(f"({LOADED}, busy machine)")
    return row


def test_the_run_table_flags_an_mfu_and_sol_over_100(loaded_row) -> None:
    data = run_table([loaded_row])
    headers = [c.header for c in data.columns]
    cells = dict(zip(headers, data.rows[0].cells, strict=True))
    assert cells["MFU"] == cells["SoL"] == fmt.OVER_PEAK
    assert len(fmt.OVER_PEAK) <= 7  # the columns stay narrow
    caption = data.caption()
    assert f"{fmt.OVER_PEAK}: MFU or SoL over 100%" in caption
    assert f"2048x2048 fp32 matmuls ({LOADED}, busy machine)" in caption  # which, and when
    assert "rerun `hubbench env --calibrate`" in caption


def test_the_html_report_flags_them_and_never_prints_the_percentage(loaded_row) -> None:
    page = build_html(pd.DataFrame([loaded_row]))
    results = page[page.index("<h2>Results</h2>") :]
    assert '<td class="num fail">&gt;100%!</td>' in results  # MFU, in red
    assert re.search(r'<td class="num fail">[\d.]+\w? \(&gt;100%!, compute\)</td>', results)
    for value in (loaded_row["mfu"], loaded_row["speed_of_light_fraction"]):
        assert fmt.fraction(value) not in page
    assert "faster than the speed of light" in results and LOADED in results
    assert "<code>hubbench env --calibrate</code>" in results


def test_a_row_within_its_peaks_prints_its_fractions(loaded_row) -> None:
    honest = {**loaded_row, "mfu": 0.253, "speed_of_light_fraction": 0.5}
    data = run_table([honest])
    cells = dict(zip([c.header for c in data.columns], data.rows[0].cells, strict=True))
    assert (cells["MFU"], cells["SoL"]) == ("25.3%", "50.0%")
    assert "MFU or SoL over 100%" not in data.caption()
    assert fmt.efficiency(1.0) == "100.0%" and fmt.efficiency(None) == "-"


# ----------------------------------------------------------------------------- ratios

SEQS = (1024, 4096, 16384)
SOURCE = f"calibrated: best of 5 2048x2048 fp32 matmuls ({LOADED}, busy machine)"


@pytest.fixture(scope="module")
def stale_run() -> pd.DataFrame:
    """hub-gpt against its baselines, the hub's cells at 4k and 16k divided by a peak 10x too
    low (as in issue 27: 18.9 GFLOP/s stored where quiet runs measure ~200): their MFU and
    speed-of-light fractions are over 1."""
    df = make_run(grid(variants=("transformer", "hub-gpt"), seqs=SEQS), rounds=4)
    over = (df["variant"] == "hub-gpt") & (df["seq"] >= 4096)
    for column in ("mfu", "speed_of_light_fraction", "speed_of_light_s"):
        df.loc[over, column] = df.loc[over, column] * 10
    df.loc[over, "speed_of_light_tokens_per_s"] /= 10
    df.loc[over, "peak_flops_source"] = SOURCE
    assert (df.loc[over, "speed_of_light_fraction"] > 1).all()
    return df


def test_the_headline_flags_the_ideal_of_a_cell_over_its_speed_of_light(stale_run) -> None:
    rows = headline(stale_run)
    head, lines = table(rows)
    ideal = [line[head.index("ideal")] for line in lines]
    best = [line[head.index("at n")] for line in lines]
    for at, shown in zip(best, ideal, strict=True):
        assert (shown == fmt.STALE_IDEAL) == (at in ("4k", "16k")), (at, shown)
    for line in ratio_lines(rows):
        if "n=4k" in line or "n=16k" in line:
            assert "ideal unknown (a cell beat its speed of light" in line
            assert not re.search(r"\d× ideal", line)


def test_the_speedup_figure_draws_no_ideal_from_a_too_low_peak(stale_run) -> None:
    figures, _ = render(stale_run, ["speedup"])
    ax = figures[0].figure.axes[0]
    ideals = [line for line in ax.get_lines() if ", ideal" in line.get_label()]
    assert ideals and all(list(line.get_xdata()) == [1024] for line in ideals)
    notes = " ".join(" ".join(t.get_text() for t in ax.texts).split())
    assert "No ideal is drawn where a cell ran faster than its speed of light" in notes
    assert "hub-gpt n=4k" in notes and LOADED in notes
    assert "No ideal is drawn" in figures[0].caption  # the report's figcaption says so too


def test_a_measured_ratio_above_an_honest_ideal_is_explained() -> None:
    """The ideal is the ratio at both speeds of light, no bound on the measured one: a baseline
    further from its own speed of light than the hub puts the measured ratio above it."""
    df = make_run(grid(variants=("transformer", "hub-gpt"), seqs=SEQS), rounds=4)
    base = df["variant"] == "transformer"
    df.loc[base, "speed_of_light_s"] /= 4  # the baseline reaches a quarter of what it did
    df.loc[base, "speed_of_light_fraction"] /= 4
    figures, _ = render(df, ["speedup"])
    texts = figures[0].figure.axes[0].texts
    notes = " ".join(" ".join(t.get_text() for t in texts).split())
    assert "Measured above the ideal (hub-gpt over transformer" in notes
    assert "No ideal is drawn" not in notes
