"""The throughput heatmap's colours claim no more than the rounds allow: cells within noise of
their n's best take its colour and read '≈ best'; only cells that differ beyond their intervals
take their own."""

from __future__ import annotations

import numpy as np
from synthetic_runs import cell, make_run

from hubbench.report.load import check_schema
from hubbench.report.plots import render
from hubbench.report.plots.heatmap import TIE_TEXT

HUBS, TOPK = (4, 8, 16), (32, 40, 128)  # k=128 costs twice the others: a real difference


def _sweep(noise: float):
    cells = [cell("hub-gpt", 4096, hubs=m, topk=k) for m in HUBS for k in TOPK]
    return check_schema(make_run(cells, suite="hubs", noise=noise, rounds=5, drift=0.05), "hubs")


def _panel(noise: float):
    (r,), _ = render(_sweep(noise), ["heatmap"])
    ax = r.figure.axes[0]  # the panel; the colour bar's axes come after it
    colours = np.asarray(ax.images[0].get_array())  # (M, k): the value each cell's colour shows
    marks = {
        (round(t.get_position()[1] + 0.05), round(t.get_position()[0])): t.get_text()
        for t in ax.texts
        if t.get_fontsize() < 7  # the small second line under a cell's value
    }
    note = " ".join(t.get_text() for t in r.figure.texts)
    return r, colours, marks, " ".join(note.split())


def test_cells_within_noise_of_the_best_take_its_colour():
    r, colours, marks, note = _panel(noise=0.2)  # per-step noise that hides a 10% difference
    best = max(marks, key=lambda ij: colours[ij])
    assert marks[best] == "best"
    tied = [ij for ij, text in marks.items() if text == "≈ best"]
    assert tied and all(colours[ij] == colours[best] for ij in tied)
    far = [(i, 2) for i in range(len(HUBS))]  # k=128: beyond any interval
    assert not set(far) & set(marks)
    assert all(colours[ij] < 0.6 * colours[best] for ij in far)
    assert TIE_TEXT in note
    assert "≈ best cells are within noise of the best" in r.caption
    values = [t.get_text() for t in r.figure.axes[0].texts if t.get_fontsize() >= 7]
    assert len(set(values)) > 3  # each cell still reads its own median


def test_cells_that_differ_beyond_their_intervals_keep_their_own_colours():
    r, colours, marks, note = _panel(noise=0.002)
    assert not marks and "≈" not in note and "≈" not in r.caption
    assert len(np.unique(colours)) == colours.size  # nine medians, nine colours


def test_cells_with_too_few_samples_to_resample_are_not_called_ties():
    cells = [cell("hub-gpt", 4096, hubs=m, topk=k) for m in HUBS for k in TOPK]
    df = check_schema(make_run(cells, suite="hubs", noise=0.2, samples=2), "hubs")
    (r,), _ = render(df, ["heatmap"])
    assert "≈" not in r.caption  # two samples: no interval, so no claim that cells are alike
