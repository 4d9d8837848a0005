"""Quality rows pooled over seeds (hubbench.report.seeds): configs, the Pareto front with the
leak kept off it; the pareto and curves kinds draw them and the seed table shows them."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, make_run

from hubbench.report.load import check_schema
from hubbench.report.plots import render, supported
from hubbench.report.seeds import configs, pareto_front

CURVE = [float(u) for u in range(50, 1001, 50)]


def quality_cell(variant: str, seed: int, accuracy: float, causal: str = "pass", **kw):
    c = cell(variant, 64, mode="quality", device="cpu", dtype="fp32", batch=64, seed=seed,
             task="mqar", kv_pairs=4, train_updates=1000, lr=1e-3, **kw)  # fmt: skip
    quality = dict(eval_accuracy=accuracy, baseline_quality=1 / 127, causal_check=causal,
                   converged=accuracy >= 0.99, curve_updates=CURVE,
                   curve_eval=[accuracy * u / 1000 for u in CURVE],
                   curve_train_loss=[5 - 4 * u / 1000 for u in CURVE])  # fmt: skip
    return c, quality


@pytest.fixture(scope="module")
def quality_run():
    made = (
        [quality_cell("transformer", s, a) for s, a in ((0, 0.9), (1, 0.8), (2, 0.7))]
        + [quality_cell("hub-gpt", s, a) for s, a in ((0, 0.5), (1, 0.6), (2, 0.4))]
        + [quality_cell("hub-gpt", 0, 1.0, causal="not causal", causal_v=False)]
    )
    cells = []
    for c, _ in made:
        c.pop("causal_v", None)
        cells.append(c)
    cells[-1]["causal"] = False
    df = make_run(cells, suite="quality")
    for i, (_, q) in enumerate(made):
        for k, v in q.items():
            df.at[i, k] = v
    return check_schema(df, "quality")


def test_pareto_front_by_hand() -> None:
    pts = [(1.0, 0.9), (2.0, 0.5), (3.0, 0.4), (1.5, 0.3), (2.0, 0.5)]
    assert pareto_front(pts, higher=True) == [0, 1, 4, 2]  # (1.5, .3) is beaten; ties stay
    assert pareto_front([(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (2.5, 2.6)], higher=False) == [1, 2]


def test_seeds_pool_into_configs_and_the_leak_is_flagged(quality_run) -> None:
    found = {c.label: c for c in configs(quality_run)}
    assert sorted(len(c.rows) for c in found.values()) == [1, 3, 3]
    leaking = [c for c in found.values() if c.leaks]
    assert len(leaking) == 1 and "causal=False" in leaking[0].label


def test_both_kinds_draw_and_the_leak_stays_off_the_front(quality_run) -> None:
    assert supported("pareto", quality_run) is None and supported("curves", quality_run) is None
    figures, _ = render(quality_run, ["pareto", "curves"])
    pareto = next(f for f in figures if f.kind == "pareto")
    ax = pareto.figure.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert any(lb.endswith("(leaks)") for lb in labels)
    # counted, the leaking config (accuracy 1.0) would be on the front; drawn, it is not
    points = [(c.rows[0]["tokens_per_s"], max(r["eval_accuracy"] for r in c.rows))
              for c in configs(quality_run)]  # fmt: skip
    assert 2 in pareto_front(points, higher=True)
    fronts = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert all(1.0 not in list(line.get_ydata()) for line in fronts)
    curves = next(f for f in figures if f.kind == "curves")
    assert len(curves.figure.axes[1].get_lines()) == 7  # one line per seed


def test_a_throughput_run_has_no_quality_figures() -> None:
    df = check_schema(make_run([cell("transformer", 1024)]), "throughput")
    assert "quality" in supported("pareto", df)


def test_the_html_results_table_has_the_quality_columns(quality_run) -> None:
    from hubbench.report.html import build_html
    from hubbench.report.runtable import QUALITY_HEADERS

    page = build_html(quality_run)
    table = page[page.index("<h2>Results</h2>") : page.index("<h2>Environment</h2>")]
    for header in QUALITY_HEADERS:
        assert f"<th>{header}</th>" in table
    assert table.count("<tr") == 1 + len(quality_run)
    # the scores and the verdicts, the leaking model's included
    assert ">90.0%<" in table and ">40.0%<" in table and "not causal" in table
    assert '<td class="ok">pass</td>' in table and '<td class="fail">not causal</td>' in table
    assert "per training update" in table


def test_the_seed_table_pools_seeds_by_hand(quality_run) -> None:
    from hubbench.report.runtable import seed_table

    rows = [dict(r) for _, r in quality_run.iterrows()]
    rows[4]["status"], rows[4]["message"] = "timeout", "over 3600 s"  # hub-gpt seed 1 failed
    table = seed_table(rows)
    assert table is not None
    got = {r.cells[0]: r for r in table.rows}
    headers = [c.header for c in table.columns]

    def cells(row, *names: str) -> tuple[str, ...]:
        return tuple(row.cells[headers.index(n)] for n in names)

    # the run has no no-MLP reference: its one MQAR point's recipe failed, said in a column
    assert {cells(r, "recipe") for r in table.rows} == {("no reference",)}
    # transformer 0.9 / 0.8 / 0.7: mean 0.8, sd 0.1, t(2) 4.303 -> half-width 0.2484
    assert list(got) == ["transformer causal=True", "hub-gpt causal=True", "hub-gpt causal=False"]
    t = got["transformer causal=True"]
    assert cells(t, "seeds", "quality", "conv") == ("3", "80.0% ± 24.8%", "0/3")
    assert t.status == "ok"
    # hub-gpt: seeds 0 and 2 ok (0.5, 0.4) -> [min, max]; seed 1 counted, not pooled
    hub = got["hub-gpt causal=True"]
    assert cells(hub, "seeds", "quality", "conv") == ("2 ok of 3", "45.0% [40.0%, 50.0%]", "0/3")
    assert hub.status != "ok"
    assert hub.cells[-1] == "pass"
    leak = got["hub-gpt causal=False"]
    assert cells(leak, "seeds", "quality", "conv") == ("1", "100.0%", "1/1")
    assert leak.cells[-1] == "not causal 1/1"


def test_no_seed_table_without_replicates_and_the_exports_carry_it(quality_run) -> None:
    from hubbench.report.export import to_markdown
    from hubbench.report.runtable import seed_table

    rows = [dict(r) for _, r in quality_run.iterrows()]
    assert seed_table([rows[0], rows[3]]) is None  # one seed of each config
    assert seed_table([{**rows[0], "mode": "fwd"}, {**rows[1], "mode": "fwd"}]) is None
    # seeds of another task or another grid point at the same n are other configs
    assert seed_table([rows[0], {**rows[1], "task": "bytes", "bits_per_byte": 2.0}]) is None
    assert seed_table([rows[0], {**rows[1], "kv_pairs": 8}]) is None
    kv = seed_table([rows[0], {**rows[1], "kv_pairs": 8}, {**rows[2], "kv_pairs": 8}])
    assert kv is not None and [r.cells[0] for r in kv.rows] == [
        "transformer kv_pairs=4", "transformer kv_pairs=8"]  # fmt: skip
    md = to_markdown(rows, "quality")
    assert "#### over seeds" in md and "80.0% ± 24.8%" in md


def test_a_failed_recipe_is_said_by_the_gate_and_the_reports_headline(quality_run) -> None:
    """Issue 30: where the no-MLP attention reference did not solve a point (here it is not in
    the run at all: the transformer rows have an MLP), the gate's notes and the HTML headline say
    the recipe failed; the gate still judges the rules it was given."""
    from hubbench.plan.rules import GateRule
    from hubbench.report.gate import gate_ratios
    from hubbench.report.html import build_html

    rule = GateRule("transformer accuracy", "eval_accuracy", {"variant": "transformer"}, {},
                    min=0.5, kind="value")  # fmt: skip
    result = gate_ratios(quality_run, [rule], "quality")
    assert result.passed  # mean 0.8 >= 0.5
    assert any(n.startswith("recipe failed at mqar") for n in result.notes), result.notes
    page = build_html(quality_run)
    assert "Recall (MQAR)" in page and "recipe failed at mqar" in page
