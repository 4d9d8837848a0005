"""`hubbench plot` and `hubbench report`: figures and the one-page HTML report of stored runs.

Thin layer: parse options, call hubbench.report, print with Rich. Nothing here runs a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from hubbench.cli.common import LIST_HELP, RESULTS_HELP, console, listed

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

    from hubbench.report.headline import HeadlineRow


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_cmd)
    app.command("report")(report_cmd)


def plot_cmd(
    runs: list[str] | None = typer.Argument(
        None,
        help="Run ids, .parquet paths or 'latest' (default: the latest run); several are pooled, "
        "every row kept.",
    ),
    kind: list[str] | None = typer.Option(
        None,
        "--kind",
        "-k",
        help=f"throughput | scaling | speedup | heatmap | memory | state | pareto | curves | "
        f"recall | convergence | frontier ({LIST_HELP}; "
        "default: every kind the data supports).",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: plots/<run_id>)."
    ),
    image_format: list[str] | None = typer.Option(
        None,
        "--format",
        help=f"png, svg and/or pdf ({LIST_HELP}; default: png,svg). SVG and PDF keep their text "
        "as text (editable, selectable).",
    ),
    results_dir: Path | None = typer.Option(None, "--results-dir", help=RESULTS_HELP),
) -> None:
    """Plot runs: tokens/s, scaling, speedups, hubs x topk heatmaps, memory, decode state.

    Example: hubbench plot --kind scaling,speedup --out plots/
    """
    from rich.markup import escape

    from hubbench.report.load import load_runs
    from hubbench.report.plots import DEFAULT_FORMATS, not_drawn, plot_run

    df = load_runs(runs, results_dir)
    out_dir = out or Path("plots") / "+".join(str(r) for r in dict.fromkeys(df["run_id"]))
    formats = listed(image_format, "--format") or DEFAULT_FORMATS
    outcome = plot_run(df, out_dir, kinds=listed(kind, "--kind"), formats=formats)
    printer = console()
    for path in outcome.written:
        printer.print(f"[green]wrote[/] {escape(str(path))}", highlight=False)
    missing = not_drawn(outcome.skipped, df)
    if missing:  # one line; a kind asked for by --kind raises with the suite that gives it
        printer.print(f"[yellow]not drawn:[/] {escape(missing)}; --kind KIND says which suite "
                      "gives it", highlight=False)  # fmt: skip
    if any(path.stem.startswith("scaling") for path in outcome.written):
        table = fits_table_rich(df)
        if table.row_count:  # series with fewer than 3 n have none; the figure says why
            printer.print(table)


def fits_table_rich(df: pd.DataFrame) -> Table:
    """The scaling exponents with their intervals, as `plot` prints them."""
    from rich.markup import escape
    from rich.table import Table

    from hubbench.report.format import fmt_seq
    from hubbench.report.plots import fits_table

    table = Table(title="scaling exponents (95% CI)", title_justify="left")
    for name, justify in (("figure", "left"), ("series", "left"), ("exponent", "right"),
                          ("fitted n", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for figure, label, fit in fits_table(df):
        span = f"{fmt_seq(fit.n_lo)}-{fmt_seq(fit.n_hi)}"
        table.add_row(escape(figure), escape(label), fit.text(), span)
    return table


def report_cmd(
    run: str | None = typer.Argument(None, help="Run id or .parquet path (default: latest)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="HTML file (default: reports/<run_id>.html)."
    ),
    results_dir: Path | None = typer.Option(None, "--results-dir", help=RESULTS_HELP),
) -> None:
    """Write one self-contained HTML page for a run and print its headline.

    The page: headline, figures, ratio gate, results, environment.
    The headline: each hub variant's best speedup, crossover and losses.

    Example: hubbench report latest --out reports/latest.html
    """
    from rich.markup import escape

    from hubbench.report.headline import headline, ratio_lines
    from hubbench.report.html import write_report
    from hubbench.report.load import load_run

    df = load_run(run, results_dir)
    name = f"{df['run_id'].iloc[0]}.html"
    target = out or Path("reports") / name
    if target.is_dir():  # a folder given as --out: the report goes into it
        target = target / name
    from hubbench import store

    write_report(df, target, card_dir=store.results_dir(results_dir) / "verify")
    printer = console()
    printer.print(f"[green]wrote[/] {escape(str(target))}", highlight=False)
    from hubbench.report.headline import quality_headline
    from hubbench.report.load import plain_rows

    for line in quality_headline(plain_rows(df)):  # MQAR: recipe verdicts, or accuracy vs ceilings
        printer.print(escape(line), highlight=False)
    rows = headline(df)
    if rows:
        from hubbench.cli.fit import print_fitted

        print_fitted(printer, headline_table(rows), HEADLINE_KEEP, HEADLINE_DROP,
                     see="the report's page shows them")  # fmt: skip
        for line in ratio_lines(rows):
            printer.print(escape(line), highlight=False)


HEADLINE_KEEP = ("figure", "hub", "against", "best speedup [95% CI]", "at n")
HEADLINE_DROP = ("not compared", "ideal", "hub slower at (CI below 1)", "hub faster from")


def headline_table(rows: list[HeadlineRow]) -> Table:
    """The report's headline in the terminal (the same cells as the page)."""
    from rich.markup import escape
    from rich.table import Table

    from hubbench.report.headline import table

    head, lines = table(rows)
    out = Table(title="headline (hub tokens/s over its baselines')", title_justify="left")
    for h in head:
        numeric = ("best speedup [95% CI]", "ideal", "at n")
        out.add_column(h, justify="right" if h in numeric else "left", no_wrap=h in numeric)
    for line in lines:
        out.add_row(*map(escape, line))
    return out
