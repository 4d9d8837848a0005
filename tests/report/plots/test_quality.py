"""Quality sweeps: recall over the (n, pairs) grid, convergence against M, seeds pooled by hand."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, make_run

from hubbench.report.load import check_schema
from hubbench.report.plots import render, supported
from hubbench.report.plots.convergence import converged_counts
from hubbench.report.plots.pareto import front_of
from hubbench.report.plots.quality import lines, pool, quality_rows
from hubbench.report.plots.recall import grid_facets

CURVE = [float(u) for u in range(50, 1001, 50)]
GRID = ((64, 4), (64, 8), (128, 8))


def accuracy(variant: str, hubs: int | None, seq: int, kv: int, seed: int) -> float:
    """Made up: attention recalls everything, a hub model loses recall with fewer hubs."""
    if hubs is None:
        return 1.0 - 0.02 * seed
    return min(1.0, 0.3 + 0.04 * hubs - 0.002 * seq - 0.01 * kv + 0.05 * seed)


def quality_run(
    grid=GRID, hubs=(4, 8, 16), seeds=(0, 1, 2), leak: int | None = None, fail: bool = False
):
    """MQAR cells: a transformer and hub-gpt at every M, at each grid point and seed.

    `leak`: the hub-gpt config at that M is not causal; `fail`: its first cell at 128/8 is oom.
    """
    configs = [("transformer", None)] + [("hub-gpt", m) for m in hubs]
    cells, quality = [], []
    for seq, kv in grid:
        for variant, m in configs:
            for s in seeds:
                extra = {} if m is None else {"hubs": m}
                c = cell(variant, seq, mode="quality", device="cpu", dtype="fp32", batch=64,
                         seed=s, task="mqar", kv_pairs=kv, train_updates=1000, lr=1e-3,
                         **extra)  # fmt: skip
                leaks = leak is not None and m == leak
                if leaks:
                    c["causal"] = False
                a = accuracy(variant, m, seq, kv, s)
                cells.append(c)
                quality.append(dict(
                    eval_accuracy=a, baseline_quality=1 / 127, converged=a >= 0.99,
                    converge_threshold="eval_accuracy >= 0.99",
                    causal_check="not causal" if leaks else "pass", curve_updates=CURVE,
                    curve_eval=[a * u / 1000 for u in CURVE],
                    curve_train_loss=[5 - 4 * u / 1000 for u in CURVE],
                ))  # fmt: skip
    df = make_run(cells, suite="quality")
    for i, q in enumerate(quality):
        for k, v in q.items():
            df.at[i, k] = v
    if fail:
        at = [(c["variant"], c["seq"], c["kv_pairs"]) for c in cells]
        i = at.index(("hub-gpt", 128, 8))  # M=4, seed 0
        df.at[i, "status"] = "oom"
        df.at[i, "message"] = "oom: synthetic failure"
    return check_schema(df, "quality")


@pytest.fixture(scope="module")
def grid_run():
    return quality_run(leak=16, fail=True)


def test_pool_by_hand() -> None:
    p = pool([0.9, 0.8, 0.7])
    # sd 0.1, t(2) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.24844
    assert (p.mean, p.how, p.n) == (pytest.approx(0.8), "95% t", 3)
    assert p.high - p.mean == pytest.approx(0.24844, abs=1e-4)
    assert p.mean - p.low == pytest.approx(p.high - p.mean)
    two = pool([0.2, None, 0.4])  # a missing value is no seed
    assert (two.mean, two.low, two.high, two.how, two.n) == (pytest.approx(0.3), 0.2, 0.4,
                                                             "min-max", 2)  # fmt: skip
    assert pool([None, float("nan")]) is None


def test_lines_pool_seeds_and_leave_out_what_the_x_axis_sweeps(grid_run) -> None:
    rows = quality_rows(grid_run)
    found = lines(rows, ("seq", "kv_pairs"))
    assert [line.label for line in found] == ["transformer", "hub-gpt M=4", "hub-gpt M=8",
                                              "hub-gpt M=16"]  # fmt: skip
    assert all(len(line.rows) == 3 * len(GRID) for line in found)  # 3 seeds x 3 points
    assert [line.leaks for line in found] == [False, False, False, True]
    by_m = lines(rows, ("hubs",))  # seq now varies within a line's rows: it names the line
    assert len(by_m) == 3 * 2  # transformer, hub-gpt causal, hub-gpt not causal; at two n
    assert {"hub-gpt causal=True n=128", "hub-gpt causal=False n=64"} <= {x.label for x in by_m}


def test_converged_counts_take_ok_rows_with_a_verdict() -> None:
    rows = [
        {"status": "ok", "converged": True},
        {"status": "ok", "converged": False},
        {"status": "ok", "converged": None},
        {"status": "oom", "converged": True},
    ]
    assert converged_counts(rows) == (1, 2)


def test_kv_pairs_splits_facets_but_not_the_grid_facets(grid_run) -> None:
    from hubbench.report.series import facets

    assert len(facets(grid_run)) == 2  # kv_pairs 4 and 8
    (grid,) = grid_facets(grid_run)
    assert len(grid.df) == len(grid_run) and "kv_pairs" not in grid.split


def test_recall_draws_the_seed_means_over_the_grid(grid_run) -> None:
    assert supported("recall", grid_run) is None
    figures, _ = render(grid_run, ["recall"])
    (fig,) = figures
    assert fig.stem == "recall"
    ax = fig.figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64/4", "64/8", "128/8"]
    lines_by = {c.get_label(): c.lines[0] for c in ax.containers}
    lines_by |= {line.get_label(): line for line in ax.get_lines()}
    # hub-gpt M=4 at 64/4: 0.3 + 0.16 - 0.128 - 0.04 + 0.05 s = 0.292, 0.342, 0.392: mean 0.342
    m4 = lines_by["hub-gpt M=4"]
    assert m4.get_ydata()[0] == pytest.approx(0.342)
    assert "hub-gpt M=16 (leaks)" in lines_by
    assert lines_by["hub-gpt M=16 (leaks)"].get_markerfacecolor() == "white"
    assert "chance" in lines_by
    texts = [t.get_text() for t in ax.texts]
    assert "oom" in texts  # the failed seed at 128/8 is shown, the other seeds still pooled
    assert len(m4.get_ydata()) == 3
    noted = " ".join(texts).replace("\n", " ")
    assert "hub-gpt M=4 128/8 seed 0: oom (oom: synthetic failure)" in noted
    assert "run quality r0000001" in " ".join(t.get_text() for t in fig.figure.texts)
    note = ax.texts[-1].get_text().replace("\n", " ")
    assert "Trained: mqar, 1000 updates at lr 0.001." in note and "(leaks)" in note
    assert "95% t-intervals" in fig.caption


def test_recall_a_failed_point_without_ok_seeds_is_named_in_the_notes() -> None:
    df = quality_run(seeds=(0,), hubs=(8,))
    i = df.index[(df["variant"] == "hub-gpt") & (df["seq"] == 128)][0]
    df.loc[i, ["status", "message"]] = ["oom", "oom: synthetic failure"]
    figures, _ = render(df, ["recall"])
    note = figures[0].figure.axes[0].texts[-1].get_text()
    assert "Not measured" in note and "hub-gpt 128/8: oom" in note.replace("\n", " ")
    assert "min-max" in figures[0].caption


def test_recall_needs_two_grid_points() -> None:
    df = quality_run(grid=((64, 4),))
    assert "recall needs ok MQAR quality cells at two or more" in supported("recall", df)


def test_convergence_counts_seeds_at_every_m(grid_run) -> None:
    df = grid_run[grid_run["seq"] == 64]
    df = df[df["kv_pairs"] == 4]
    figures, _ = render(df, ["convergence"])
    (fig,) = figures
    ax = fig.figure.axes[0]
    drawn = {line.get_label(): line for line in ax.get_lines()}
    # M=16 is the config that leaks: causal tells the two lines apart once M is the x axis
    assert set(drawn) == {"hub-gpt causal=True", "hub-gpt causal=False (leaks)"}
    # at 64/4: M=4 0.292-0.392, M=8 0.452-0.552, M=16 0.612-0.712: no seed converges
    assert list(drawn["hub-gpt causal=True"].get_ydata()) == [0.0, 0.0]
    assert [t.get_text() for t in ax.texts if "/" in t.get_text()][:2] == ["0/3", "0/3"]
    note = ax.texts[-1].get_text().replace("\n", " ")
    assert "Without hubs (no M): transformer 1/3 converged" in note  # 1.0, 0.98, 0.96
    assert "eval_accuracy >= 0.99" in fig.caption


def test_convergence_fractions_by_hand() -> None:
    df = quality_run(grid=((64, 4),), hubs=(8, 32))
    # M=32: 0.3 + 1.28 - 0.128 - 0.04 >= 1: every seed converges; M=8: none
    figures, _ = render(df, ["convergence"])
    ax = figures[0].figure.axes[0]
    (line,) = [x for x in ax.get_lines() if x.get_label() == "hub-gpt"]
    assert list(line.get_ydata()) == [0.0, 1.0]
    assert {t.get_text() for t in ax.texts} >= {"0/3", "3/3"}


def test_convergence_needs_two_hubs_and_two_seeds() -> None:
    one_seed = quality_run(grid=((64, 4),), seeds=(0,))
    assert "convergence needs" in supported("convergence", one_seed)
    one_m = quality_run(grid=((64, 4),), hubs=(8,))
    assert "convergence needs" in supported("convergence", one_m)


def test_a_quality_run_by_default_draws_the_quality_kinds_and_skips_the_rest() -> None:
    figures, skipped = render(quality_run(leak=16, fail=True))
    kinds = {f.kind for f in figures}
    assert {"pareto", "curves", "recall", "convergence"} <= kinds
    assert "state" in skipped and "scaling" not in skipped  # seq varies: scaling draws
    assert all(reason for reason in skipped.values())


def test_pareto_splits_by_n_and_keeps_the_leak_off_each_front() -> None:
    df = quality_run(leak=16, grid=((64, 4), (128, 4)))
    df.loc[df["variant"] == "transformer", "eval_accuracy"] = 0.1  # fast but poor: hubs on front
    figures, _ = render(df, ["pareto"])
    assert [f.stem for f in figures] == ["pareto-mqar-64", "pareto-mqar-128"]
    for f, n in zip(figures, (64, 128), strict=True):
        ax = f.figure.axes[0]
        assert f"Trained: n = {n}, mqar, 4 key-value pairs, 1000 updates at lr 0.001." in f.caption
        assert not any(f"n={n}" in lb or "seq=" in lb for lb in ax.get_legend_handles_labels()[1])
        (front,) = [x for x in ax.get_lines() if x.get_label() == "Pareto front"]
        # hub-gpt M=4 and M=8 beat the transformer on accuracy; M=16 would beat both, but leaks
        m8 = 0.3 + 0.32 - 0.002 * n - 0.04 + 0.05
        m16 = m8 + 0.32
        ys = list(front.get_ydata())
        assert max(ys) == pytest.approx(m8) and not any(y == pytest.approx(m16) for y in ys)
        assert min(ys) == pytest.approx(0.1)  # the fastest stays on the front


def test_the_front_leaves_out_the_points_that_leak() -> None:
    points = [(1.0, 0.9), (2.0, 0.5), (3.0, 0.4), (1.5, 0.99), (0.5, 0.2)]
    # counted, (1.5, .99) would beat (1.0, .9) and join the front; it leaks, so it does not
    assert front_of(points, [False] * 5, higher=True) == [3, 1, 2]
    assert front_of(points, [False, False, False, True, False], higher=True) == [0, 1, 2]
    # bits per byte: lower is better; the leak at the fastest, best point is dropped
    bpb = [(1.0, 2.0), (2.0, 2.5), (3.0, 1.0)]
    assert front_of(bpb, [False, False, True], higher=False) == [0, 1]
    assert front_of(bpb, [True, True, True], higher=False) == []


def test_pareto_and_curves_tell_a_hub_sweep_apart(grid_run) -> None:
    figures, _ = render(grid_run, ["pareto", "curves"])
    for f in figures:
        ax = f.figure.axes[0]
        labels = ax.get_legend_handles_labels()[1]
        hubs = [lb for lb in labels if lb.startswith("hub-gpt")]
        assert hubs[:2] == ["hub-gpt M=4", "hub-gpt M=8"] and hubs[2] == "hub-gpt M=16 (leaks)"
        if f.kind == "curves":
            colours = {line.get_color() for line in ax.get_lines()}
        else:
            colours = {c.lines[0].get_color() for c in ax.containers}
        assert len(colours) == 4  # transformer and three shades, one per M
    pareto = next(f for f in figures if f.kind == "pareto" and f.stem.endswith("128"))
    note = pareto.figure.axes[0].texts[-1].get_text().replace("\n", " ")
    assert "Not measured (not drawn): hub-gpt M=4 seed 0: oom" in note


def test_bytes_pareto_says_lower_is_better_and_fronts_the_lowest() -> None:
    df = quality_run(grid=((64, 4),), hubs=(8,), seeds=(0,))
    df["task"] = "bytes"
    df["kv_pairs"] = None
    df["eval_accuracy"] = None
    df["bits_per_byte"] = [2.0 if v == "transformer" else 1.5 for v in df["variant"]]
    df["baseline_quality"] = 4.5
    figures, _ = render(df, ["pareto"])
    ax = figures[0].figure.axes[0]
    assert "lower is better" in ax.get_ylabel()
    assert "unigram model" in ax.get_legend_handles_labels()[1]
    (front,) = [x for x in ax.get_lines() if x.get_label() == "Pareto front"]
    assert sorted(front.get_ydata()) == [1.5, 2.0]  # slower but lower, and faster but higher


def test_quality_captions_name_only_lines_that_are_drawn() -> None:
    """No 'dashed line is chance' when the rows record no chance level, no front or hollow
    points in the words when the figure has none."""
    with_chance = check_schema(quality_run(hubs=(4, 8)), "quality")
    without = with_chance.assign(baseline_quality=float("nan"))
    for df, chance in ((with_chance, True), (without, False)):
        figures, _ = render(df, ["recall", "pareto"])
        for r in figures:
            labels = [ln.get_label() for ln in r.figure.axes[0].get_lines()]
            assert ("chance" in labels) == chance, r.stem
            assert ("dashed line is chance" in r.caption) == chance, r.caption
            assert "hollow" not in r.caption, r.caption  # no config leaks here


def test_a_run_with_recall_free_ceilings_names_its_dashed_line_so() -> None:
    """An MQAR row's baseline_quality is the recall-free ceiling once the row records its rule
    (issue 30): the figures must not call that line chance."""
    df = check_schema(quality_run(hubs=(4, 8)), "quality")
    df = df.assign(recall_free_rule=["most frequent unrevealed value"] * len(df))
    figures, _ = render(df, ["recall", "pareto"])
    mqar = [r for r in figures if "bits" not in r.caption]
    assert mqar
    for r in mqar:
        labels = [ln.get_label() for ln in r.figure.axes[0].get_lines()]
        assert "recall-free ceiling" in labels and "chance" not in labels, r.stem
        assert "dashed line is recall-free ceiling" in r.caption, r.caption
