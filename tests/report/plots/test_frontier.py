"""frontier: MQAR accuracy against decode state and training tokens/s, one point per config with
its seeds pooled, the learning rate chosen on the validation split before anything is drawn."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, make_run

from hubbench.report.load import check_schema
from hubbench.report.plots import render, supported
from hubbench.report.plots.frontier import chosen_facets, has_frontier
from hubbench.report.plots.registry import KINDS

# (variant, hubs, state bytes at n = 128, accuracy at lr 1e-3, at lr 3e-3)
CONFIGS = (("transformer", None, 131072, 1.0, 0.6), ("hub-gpt", 8, 55008, 0.4, 0.7),
           ("hub-gpt", 4, 30000, 0.2, 0.25))  # fmt: skip


def frontier_run(leak: bool = False, spread: int = 0):
    cells, values = [], []
    for variant, hubs, state, a1, a3 in CONFIGS:
        for seed in (0, 1, 2):
            for lr, acc in ((1e-3, a1), (3e-3, a3)):
                extra = {} if hubs is None else {"hubs": hubs}
                cells.append(cell(variant, 128, mode="quality", device="cpu", dtype="fp32",
                                  batch=64, seed=seed, task="mqar", kv_pairs=8,
                                  train_updates=3000, lr=lr, mlp_ratio=0.0, n_layers=2,
                                  n_heads=1, d_model=64, vocab=8192, **extra))  # fmt: skip
                a = acc - 0.01 * seed
                ceiling = 0.146 + 0.002 * seed * spread  # each seed's set has its own
                values.append(dict(
                    eval_accuracy=a, val_accuracy=a, baseline_quality=ceiling,
                    recall_free_ceiling=ceiling, recall_free_rule="rank",
                    recall_free_uniform=0.125, decode_state_bytes=state, converged=a >= 0.99,
                    causal_check="not causal" if (leak and hubs == 4) else "pass",
                ))  # fmt: skip
    df = make_run(cells, suite="quality")
    for i, v in enumerate(values):
        for k, x in v.items():
            df.at[i, k] = x
    return check_schema(df, "quality")


def test_the_rate_grid_does_not_split_the_facets_and_each_seed_keeps_one_row() -> None:
    df = frontier_run()
    [facet] = chosen_facets(df)
    assert len(facet.df) == len(CONFIGS) * 3  # one chosen rate per config and seed
    chosen = facet.df[facet.df["variant"] == "transformer"]
    assert set(chosen["eval_accuracy"].round(2)) == {1.0, 0.99, 0.98}  # lr 1e-3 won there
    hub8 = facet.df[(facet.df["variant"] == "hub-gpt") & (facet.df["hubs"] == 8)]
    assert set(hub8["eval_accuracy"].round(2)) == {0.7, 0.69, 0.68}  # lr 3e-3 won there


def test_the_figure_draws_one_point_per_config_on_both_panels(tmp_path) -> None:
    df = frontier_run(leak=True)
    assert has_frontier(df) and supported("frontier", df) is None
    facet = chosen_facets(df)[0]
    figured = KINDS["frontier"].draw(facet)
    left, right = figured.fig.axes[:2]
    points = [c.lines[0] for c in left.containers]  # each errorbar's marker line
    xs_left = sorted(round(float(line.get_xdata()[0])) for line in points)
    assert xs_left == sorted(state for _, _, state, _, _ in CONFIGS)
    ys = sorted(round(float(line.get_ydata()[0]), 3) for line in points)
    assert ys == [pytest.approx(0.24), pytest.approx(0.69), pytest.approx(0.99)]
    hollow = [line for line in points if line.get_markerfacecolor() in ("white", (1, 1, 1, 1))]
    assert len(hollow) == 1  # the leaking config
    text = " ".join(figured.notes)
    assert "seeds 0, 1, 2" in text and "0.001, 0.003" in text and "recall-free ceiling" in text
    assert "(leaks)" in text or "Hollow" in text
    assert len(right.containers) == len(CONFIGS)
    labels = left.get_legend_handles_labels()[1]
    assert "transformer (reference)" in labels and not any("hub-gpt (ref" in x for x in labels)
    rendered, skipped = render(df, kinds=["frontier"])
    assert len(rendered) == 1 and not skipped
    rendered[0].figure.savefig(tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_a_failed_recipe_is_said_under_the_figure() -> None:
    df = frontier_run()
    df.loc[df["variant"] == "transformer", ["eval_accuracy", "val_accuracy"]] = 0.5
    figured = KINDS["frontier"].draw(chosen_facets(df)[0])
    assert any(n.startswith("recipe failed at mqar n=128 kv_pairs=8") for n in figured.notes)
    assert "recipe failed" in figured.caption


def test_a_throughput_run_has_no_frontier() -> None:
    df = make_run([cell("transformer", 512)])
    assert not has_frontier(df) and chosen_facets(df) == []


def _only(variants: set[str], run_id: str, utc_time: str, shift: float = 0.0):
    df = frontier_run()
    df = df[df["variant"].isin(variants)].copy()
    df["run_id"], df["utc_time"] = run_id, utc_time
    df["eval_accuracy"] -= shift
    df["val_accuracy"] -= shift
    return df


def test_the_axes_and_legend_read_as_they_should() -> None:
    """State in binary bytes (not '131k'), the ceiling's value in the legend, configs first."""
    figured = KINDS["frontier"].draw(chosen_facets(frontier_run())[0])
    left = figured.fig.axes[0]
    figured.fig.canvas.draw()
    ticks = [t.get_text() for t in left.get_xticklabels() if t.get_text()]
    assert ticks and all(t.endswith("KiB") for t in ticks), ticks
    assert "128 KiB" in ticks
    labels = left.get_legend().get_texts()
    names = [t.get_text() for t in labels]
    assert names[-2:] == ["solved (99%)", "recall-free ceiling (14.6%)"]
    assert names[0] == "transformer (reference)" and len(names) == len(CONFIGS) + 2
    text = " ".join(figured.notes)
    assert "the j-th query answered with the j-th value" in text and "(rank)" not in text


def test_the_ceiling_is_the_seeds_mean_like_the_points_with_their_range() -> None:
    """Seeds 0, 1, 2 with ceilings 14.6%, 14.8%, 15.0%: the line at their mean (14.8%), not at
    the highest, and the legend names the range."""
    figured = KINDS["frontier"].draw(chosen_facets(frontier_run(spread=1))[0])
    left = figured.fig.axes[0]
    names = [t.get_text() for t in left.get_legend().get_texts()]
    assert names[-1] == "recall-free ceiling (14.8%; seeds 14.6%-15.0%)"
    dashed = [ln for ln in left.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(0.148)


def test_a_lone_config_sits_on_a_labelled_tick() -> None:
    """The reference alone (its runs before the other mixers'): 128 KiB is a tick, not a point
    between '125 KiB' and '130 KiB'."""
    df = _only({"transformer"}, "aaaa0001", "2026-12-06T11:00:00Z")
    figured = KINDS["frontier"].draw(chosen_facets(df)[0])
    figured.fig.canvas.draw()
    left = figured.fig.axes[0]
    assert "128 KiB" in [t.get_text() for t in left.get_xticklabels()]
    low, high = left.get_xlim()
    assert low <= 65536 and high >= 262144  # an octave either side


def test_another_run_of_other_mixers_is_drawn_beside_the_reference() -> None:
    """The way the oryx-gdn / gdn-gpt run joins the reference's: `hubbench plot REF OTHER`."""
    import pandas as pd

    ref = _only({"transformer"}, "aaaa0001", "2026-12-06T11:00:00Z")
    other = _only({"hub-gpt"}, "bbbb0002", "2026-12-06T14:00:00Z")
    other["chunk"] = 4  # a series field the other run set: no second figure for it
    [facet] = chosen_facets(pd.concat([ref, other], ignore_index=True))
    figured = KINDS["frontier"].draw(facet)
    names = [t.get_text() for t in figured.fig.axes[0].get_legend().get_texts()]
    assert names[0] == "transformer (reference)"
    assert sum(n.startswith("hub-gpt") for n in names) == 2
    assert len(figured.fig.axes[0].containers) == len(CONFIGS)


def test_a_rerun_replaces_the_earlier_run_instead_of_being_picked_from() -> None:
    """Two runs of the same reference cells: the later (worse on validation) one is drawn, not
    the best of both."""
    import pandas as pd

    early = _only({"transformer"}, "aaaa0001", "2026-12-06T10:00:00Z")
    late = _only({"transformer"}, "cccc0003", "2026-12-06T12:00:00Z", shift=0.3)
    [facet] = chosen_facets(pd.concat([early, late], ignore_index=True))
    assert set(facet.df["run_id"]) == {"cccc0003"} and len(facet.df) == 3
    assert sorted(facet.df["eval_accuracy"].round(2)) == [0.68, 0.69, 0.7]
    notes = " ".join(KINDS["frontier"].draw(facet).notes)
    assert "Not drawn: run aaaa0001" in notes and "cccc0003" not in notes


def test_a_run_read_only_for_the_rate_choice_is_named() -> None:
    """The reference's rates in two runs (as 1d0942ed and d2e22edd): where no seed chose one
    run's rate, the title names the other run only; the notes say the first was read."""
    import pandas as pd

    df = _only({"transformer"}, "aaaa0001", "2026-12-06T10:00:00Z")
    low = df[df["lr"] == 1e-3].copy()  # lr 1e-3 wins every transformer seed (CONFIGS)
    high = df[df["lr"] == 3e-3].copy()
    high["run_id"] = "dddd0004"
    [facet] = chosen_facets(pd.concat([low, high], ignore_index=True))
    assert set(facet.df["run_id"]) == {"aaaa0001"}
    notes = " ".join(KINDS["frontier"].draw(facet).notes)
    assert "Run dddd0004: read for the learning-rate choice, no seed chose its rate" in notes
    assert "Not drawn" not in notes


def test_the_run_notes_stay_within_their_facet() -> None:
    """Two runs at one MQAR point but another budget are two facets (the review's case: docs'
    run beside a 1500-update one): neither facet's notes name the other's run."""
    import pandas as pd

    a = _only({"transformer"}, "aaaa0001", "2026-12-06T10:00:00Z")
    b = _only({"transformer"}, "bbbb0002", "2026-12-06T12:00:00Z")
    b["train_updates"] = 1500
    facets = chosen_facets(pd.concat([a, b], ignore_index=True))
    assert len(facets) == 2
    for facet in facets:
        [own] = set(facet.df["run_id"])
        other = ({"aaaa0001", "bbbb0002"} - {own}).pop()
        assert other not in " ".join(KINDS["frontier"].draw(facet).notes)
