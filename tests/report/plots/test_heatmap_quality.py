"""Heatmaps of quality sweeps: quality panels beside throughput, seeds pooled into each cell,
leaks marked, one file name per figure; the throughput-only heatmap as it was."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_runs import cell, make_run

from hubbench.report.load import check_schema
from hubbench.report.plots import plot_run, render
from hubbench.report.plots.heatmap import heat_groups
from hubbench.report.series import facets

HUBS, TOPK, SEQS, SEEDS = (4, 8, 16), (4, 8), (64, 128), (0, 1, 2)


def accuracy(m: int, k: int, seq: int, seed: int) -> float:
    """Made up: more hubs and a bigger council recall more; seeds differ by 0.05."""
    return min(1.0, 0.3 + 0.04 * m + 0.02 * k + 0.05 * seed - 0.001 * seq)


def bits(m: int, k: int, seed: int) -> float:
    return 3.5 - 0.05 * m - 0.02 * k - 0.01 * seed


def quality_sweep(
    tasks=("mqar",), chunks=(16,), seeds=SEEDS, leak=None, check="not causal", oom=()
):
    """hub-gpt over HUBS x TOPK x SEQS x seeds for each task and chunk.

    leak: the (M, k) config whose trained model is not causal (`check`; "not causal" builds it
    with causal=False); oom: (task, seq, M, k, seed) cells that ran out of memory.
    """
    cells, quality = [], []
    for task in tasks:
        for chunk in chunks:
            for seq in SEQS:
                for m in HUBS:
                    for k in TOPK:
                        for s in seeds:
                            c = cell("hub-gpt", seq, mode="quality", device="cpu", dtype="fp32",
                                     batch=64, seed=s, task=task, train_updates=1000, lr=1e-3,
                                     kv_pairs=4 if task == "mqar" else None, hubs=m, topk=k,
                                     chunk=chunk)  # fmt: skip
                            leaks = (m, k) == leak
                            if leaks and check == "not causal":
                                c["causal"] = False
                            q = {"causal_check": check if leaks else "pass"}
                            if task == "mqar":
                                a = accuracy(m, k, seq, s)
                                q.update(eval_accuracy=a, converged=a >= 0.99,
                                         converge_threshold="eval_accuracy >= 0.99",
                                         routing_precision=0.1 + 0.01 * m + 0.01 * k)  # fmt: skip
                            else:
                                b = bits(m, k, s)
                                q.update(bits_per_byte=b, converged=b < 3.0,
                                         converge_threshold="bits_per_byte < 4.684")  # fmt: skip
                            cells.append(c)
                            quality.append(q)
    df = make_run(cells, suite="quality")
    for i, q in enumerate(quality):
        for name, v in q.items():
            df.at[i, name] = v
    at = [(c["task"], c["seq"], c["hubs"], c["topk"], c["seed"]) for c in cells]
    for key in oom:
        i = at.index(key)
        df.at[i, "status"] = "oom"
        df.at[i, "message"] = "oom: synthetic failure"
    return check_schema(df, "quality")


def _heatmaps(df):
    figures, _ = render(df, ["heatmap"])
    return figures


def _panels(fig):
    """The heatmap panels (not the colour bars), by title."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _cell_texts(ax, m: int, k: int) -> list[str]:
    """The annotation texts drawn in the cell of hubs m, topk k."""
    i, j = HUBS.index(m), TOPK.index(k)
    return [
        t.get_text()
        for t in ax.texts
        if round(t.get_position()[0]) == j and abs(t.get_position()[1] - i) < 0.5
    ]


def _note(fig) -> str:
    return " ".join(" ".join(t.get_text() for t in fig.texts).split())


def test_quality_panels_sit_beside_throughput() -> None:
    (fig,) = _heatmaps(quality_sweep())
    panels = _panels(fig.figure)
    want = {
        f"{what} · n = {n}"
        for what in ("train tokens/s", "MQAR accuracy", "routing precision")
        for n in SEQS
    }
    assert set(panels) == want
    assert len(fig.figure.axes) == 3 * len(SEQS) + 3  # three rows of panels, a colour bar each
    bars = [ax.get_ylabel() for ax in fig.figure.axes if not ax.get_title()]
    assert bars == ["training throughput (tokens/s)", "held-out MQAR accuracy", "routing precision"]
    assert "held-out MQAR accuracy" in fig.caption and "mean over its seeds" in fig.caption
    # brighter is better: higher accuracy is the top of viridis' bright end, not reversed
    image = panels["MQAR accuracy · n = 64"].images[0]
    assert not image.get_cmap().name.endswith("_r")


def test_bytes_rows_get_bits_per_byte_with_the_colours_reversed() -> None:
    (fig,) = _heatmaps(quality_sweep(tasks=("bytes",)))
    panels = _panels(fig.figure)
    assert set(panels) == {
        f"{w} · n = {n}" for w in ("train tokens/s", "bits per byte") for n in SEQS
    }
    image = panels["bits per byte · n = 64"].images[0]
    assert image.get_cmap().name.endswith("_r")  # lower is better: the lowest is the brightest
    mean = sum(bits(16, 8, s) for s in SEEDS) / len(SEEDS)
    assert f"{mean:.3f}" in _cell_texts(panels["bits per byte · n = 64"], 16, 8)


def test_a_cell_shows_the_mean_over_its_seeds() -> None:
    (fig,) = _heatmaps(quality_sweep())
    ax = _panels(fig.figure)["MQAR accuracy · n = 128"]
    values = [accuracy(8, 4, 128, s) for s in SEEDS]
    mean = sum(values) / 3
    converged = sum(v >= 0.99 for v in values)
    assert _cell_texts(ax, 8, 4) == [f"{100 * mean:.1f}%", f"{converged}/3 conv."]
    (i, j) = HUBS.index(8), TOPK.index(4)
    assert ax.images[0].get_array()[i, j] == pytest.approx(mean)
    top = [accuracy(16, 8, 64, s) for s in SEEDS]  # some seeds converge there
    texts = _cell_texts(_panels(fig.figure)["MQAR accuracy · n = 64"], 16, 8)
    assert texts[1] == f"{sum(v >= 0.99 for v in top)}/3 conv." and texts[1] != "0/3 conv."
    assert "mean over its ok seeds (up to 3)" in _note(fig.figure)


def test_a_seed_that_did_not_run_leaves_the_mean_of_the_rest() -> None:
    df = quality_sweep(oom=[("mqar", 128, 4, 4, 0)] + [("mqar", 128, 8, 8, s) for s in SEEDS])
    (fig,) = _heatmaps(df)
    ax = _panels(fig.figure)["MQAR accuracy · n = 128"]
    mean = (accuracy(4, 4, 128, 1) + accuracy(4, 4, 128, 2)) / 2
    assert _cell_texts(ax, 4, 4) == [f"{100 * mean:.1f}%", "0/2 conv."]
    assert _cell_texts(ax, 8, 8) == ["oom"]  # every seed failed: hatched with its status
    note = _note(fig.figure)
    assert "Hatched cells did not run: M=8 k=8 n=128: oom (seeds 0, 1, 2)." in note
    assert "Seeds that did not run (their cells show the rest): M=4 k=4 n=128: oom (seed 0)" in note


@pytest.mark.parametrize("check", ["not causal", "fail: 2/3 checks (future tokens)"])
def test_a_leak_is_marked_and_kept_out_of_the_colour_scale(check) -> None:
    df = quality_sweep(leak=(16, 8), check=check)
    (fig,) = _heatmaps(df)  # a non-causal config stays in the grid, not a figure of its own
    panels = _panels(fig.figure)
    assert len(panels) == 3 * len(SEQS)
    i, j = HUBS.index(16), TOPK.index(8)
    for title, ax in panels.items():
        texts = _cell_texts(ax, 16, 8)
        assert texts[0] == "LEAK", (title, texts)
        assert np.ma.getmaskarray(ax.images[0].get_array())[i, j]  # not coloured as a value
        hatched = [p for p in ax.patches if p.get_hatch() == "xx"]
        assert len(hatched) == 1 and hatched[0].get_xy() == (j - 0.5, i - 0.5)
    accuracy_ax = panels["MQAR accuracy · n = 64"]
    mean = sum(accuracy(16, 8, 64, s) for s in SEEDS) / 3
    assert _cell_texts(accuracy_ax, 16, 8) == ["LEAK", f"({100 * mean:.1f}%)"]
    assert accuracy_ax.images[0].norm.vmax < mean  # the leak's perfect recall does not set it
    note = _note(fig.figure)
    assert "LEAK" in note and f"M=16 k=8 n=64: {check} (seeds 0, 1, 2 of 3)" in note
    assert "LEAK cells failed the causality check" in fig.caption


def test_one_seed_failing_the_check_marks_its_cell() -> None:
    df = quality_sweep()
    row = df[(df["hubs"] == 4) & (df["topk"] == 4) & (df["seq"] == 64) & (df["seed"] == 1)]
    df.loc[row.index, "causal_check"] = "fail: future tokens"
    (fig,) = _heatmaps(df)
    ax = _panels(fig.figure)["MQAR accuracy · n = 64"]
    assert _cell_texts(ax, 4, 4)[0] == "LEAK"
    assert "M=4 k=4 n=64: fail: future tokens (seed 1 of 3)" in _note(fig.figure)


def test_seeds_no_longer_give_three_figures_of_one_name(tmp_path) -> None:
    """The bug: seed is a series field, so each seed made a grid of its own, all three written
    as heatmap-hub-gpt.png over one another."""
    df = quality_sweep()
    assert len(heat_groups(df)) == 1
    out = plot_run(df, tmp_path, kinds=["heatmap"], formats=("png",))
    assert [p.name for p in out.written] == ["heatmap-hub-gpt-mqar.png"]


@pytest.mark.slow  # about 3.5 s: four grids drawn, eight files written
def test_every_heatmap_of_a_run_has_its_own_file_name(tmp_path) -> None:
    df = quality_sweep(tasks=("mqar", "bytes"), chunks=(16, 32))
    figures = _heatmaps(df)
    stems = [r.stem for r in figures]
    assert len(stems) == 4 and len(set(stems)) == 4, stems
    for task in ("mqar", "bytes"):
        for chunk in ("C16", "C32"):
            assert sum(task in s and chunk in s for s in stems) == 1, stems
    out = plot_run(df, tmp_path, kinds=["heatmap"], formats=("png", "svg"))
    assert len({p.name for p in out.written}) == len(out.written) == 8
    # one facet with both chunks: the stems tell the grids apart by C
    (facet,) = facets(quality_sweep(chunks=(16, 32)))
    assert [s for s, _ in heat_groups(facet.df)] == ["hub-gpt-C16", "hub-gpt-C32"]


def test_the_throughput_heatmap_keeps_its_one_row_and_its_name(tmp_path) -> None:
    cells = [cell("hub-gpt", n, hubs=m, topk=k) for n in (1024, 4096) for m in (4, 8)
             for k in (32, 64)]  # fmt: skip
    df = check_schema(make_run(cells, suite="hubs"), "hubs")
    (fig,) = _heatmaps(df)
    assert fig.stem == "heatmap-hub-gpt"
    assert set(_panels(fig.figure)) == {"throughput (tokens/s) · n = 1k",
                                        "throughput (tokens/s) · n = 4k"}  # fmt: skip
    assert len(fig.figure.axes) == 3
    texts = [t for ax in fig.figure.axes for t in _texts(ax)]
    assert "LEAK" not in texts and not any("conv." in t for t in texts)
    assert _note(fig.figure).endswith("Brighter is better in every panel.")
    assert fig.caption.startswith("Median throughput (tokens/s) of hub-gpt over hubs M")


def test_one_seed_is_not_called_a_mean_over_seeds() -> None:
    (r,) = _heatmaps(quality_sweep(seeds=(0,)))
    assert "seeds" not in r.caption and "up to 1" not in _note(r.figure), r.caption
    (pooled,) = _heatmaps(quality_sweep())
    assert "each cell is the mean over its seeds (up to 3)" in pooled.caption
