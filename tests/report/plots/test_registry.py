"""The registry of figure kinds: what `render`, `plot --kind`, not_drawn and worth_saying read.
A kind registered from outside the package is drawn, named and skipped like the shipped ones."""

from __future__ import annotations

import pytest
from synthetic_runs import cell, make_run

from hubbench.errors import ReportError
from hubbench.report.load import check_schema
from hubbench.report.plots import KINDS, Kind, not_drawn, register, render, supported
from hubbench.report.plots.figure import Figured, new_figure, title
from hubbench.report.plots.registry import kind

SHIPPED = ("throughput", "scaling", "speedup", "heatmap", "memory", "state",
           "pareto", "curves", "recall", "convergence", "frontier")  # fmt: skip


def test_the_shipped_kinds_in_drawing_order() -> None:
    assert tuple(KINDS) == SHIPPED
    assert all(k.name == name and k.hint.startswith(name) for name, k in KINDS.items())
    with pytest.raises(ReportError, match="unknown plot kind 'heat'; valid: throughput, "):
        kind("heat")
    with pytest.raises(ValueError, match="registered twice"):
        register(KINDS["memory"])


def _dots(facet) -> Figured:
    fig = new_figure()
    fig.add_axes((0.1, 0.2, 0.8, 0.6)).plot(facet.df["seq"], facet.df["tokens_per_s"], "o")
    title(fig, "Dots", facet)
    return Figured(fig, "", ["One dot per cell."], "Tokens/s of every cell.")


def test_a_kind_is_one_registration() -> None:
    register(Kind("dots", _dots, lambda df: len(df) > 2, hint="dots needs three cells: run more",
                  lacks="fewer than three cells", modes=frozenset({"fwd"})))  # fmt: skip
    try:
        _drawn_named_and_skipped_like_the_others()
    finally:
        del KINDS["dots"]


def _drawn_named_and_skipped_like_the_others() -> None:
    df = check_schema(make_run([cell("transformer", n) for n in (512, 1024, 2048)]), "dots")
    figures, _ = render(df, ["dots"])
    assert [(f.kind, f.stem, f.caption) for f in figures] == [
        ("dots", "dots", "Tokens/s of every cell.")
    ]
    two = check_schema(make_run([cell("transformer", n) for n in (512, 1024)]), "dots")
    assert supported("dots", two).startswith("dots needs three cells: run more (run ")
    with pytest.raises(ReportError, match="dots needs three cells"):
        render(two, ["dots"])
    _, skipped = render(two)
    assert "dots" in skipped and "dots (fewer than three cells)" in not_drawn(skipped, two)
    decode = two.assign(mode="decode")
    assert "dots" not in not_drawn(render(decode)[1], decode)  # a decode run could not give it


def test_plot_help_names_every_kind() -> None:
    """`hubbench plot --kind`'s help lists the kinds by hand: a kind registered here is named."""
    import typer

    from hubbench.cli import app

    command = typer.main.get_command(app).commands["plot"]  # type: ignore[attr-defined]
    (option,) = [p for p in command.params if "--kind" in p.opts]
    assert [k for k in KINDS if k not in option.help.split()] == []
