"""`hubbench compare` and `hubbench gate`: judge one run against another, or against its suite.

Exit codes come from the error boundary: 0 ok, 1 regression (GateFailure), 2 unusable input
(ReportError and friends).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.cli.common import LIST_HELP, RESULTS_HELP, console, listed

if TYPE_CHECKING:
    from hubbench.report.gate import GateResult

WIDE_HELP = "Print every column, wider than the terminal if need be."
SEE = "--wide shows them; {} writes every column"
RESAMPLES_HELP = "Bootstrap resamples per ratio (>= 100)."
CONFIDENCE_HELP = "Confidence level of the CI, in [0.5, 1)."
MIN_EFFECT_HELP = (
    "Smallest change called (e.g. 3% or 0.03): a CI must clear 1 ± this "
    "(default from A/A runs, see docs/measurement.md; baseline and --ab modes only for gate, whose "
    "ratio rules carry their own thresholds)."
)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("gate")(gate_cmd)


def _bootstrap(resamples: int, confidence: float, min_effect: str | None) -> dict[str, Any]:
    """The shared bootstrap options, checked."""
    from hubbench.report.compare import MIN_EFFECT
    from hubbench.report.format import percent
    from hubbench.report.ratios import check_settings

    check_settings(resamples, confidence)
    effect = MIN_EFFECT if min_effect is None else percent(min_effect, "--min-effect")
    return {"resamples": resamples, "confidence": confidence, "min_effect": effect}


def compare_cmd(
    run_a: str = typer.Argument(..., help="Run A (the reference): run id, .parquet or latest~N."),
    run_b: str = typer.Argument(..., help="Run B: run id, .parquet path or latest."),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        "-m",
        help=f"Metrics to compare ({LIST_HELP}; default: tokens_per_s,peak_mem_bytes).",
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write Markdown here."),
    output: str = typer.Option("table", "--format", help="table (Rich) or md (Markdown)."),
    min_effect: str | None = typer.Option(None, "--min-effect", help=MIN_EFFECT_HELP),
    resamples: int = typer.Option(2000, "--resamples", help=RESAMPLES_HELP),
    confidence: float = typer.Option(0.95, "--confidence", help=CONFIDENCE_HELP),
    results_dir: Path | None = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
) -> None:
    """Compare two runs cell by cell: B/A ratios with bootstrap CIs and a verdict per cell.

    Example: hubbench compare latest~1 latest --markdown compare.md
    """
    from rich.markup import escape

    from hubbench.errors import ReportError
    from hubbench.report.compare import DEFAULT_METRICS, compare_runs, to_markdown, to_rich
    from hubbench.report.load import load_run

    if output not in ("table", "md"):
        raise ReportError(f"--format {output!r}: valid are table, md")
    if markdown is not None:
        from hubbench.outputs import check_file

        check_file(markdown, "--markdown")
    options = _bootstrap(resamples, confidence, min_effect)
    cmp = compare_runs(
        load_run(run_a, results_dir),
        load_run(run_b, results_dir),
        listed(metric, "--metric") or DEFAULT_METRICS,
        **options,
    )
    md = to_markdown(cmp)
    if output == "md":
        typer.echo(md)
    else:
        from hubbench.cli.fit import print_fitted
        from hubbench.report.compare import rich_columns

        printer = console()
        print_fitted(
            printer, to_rich(cmp), *rich_columns(cmp), wide=wide, see=SEE.format("--format md")
        )
        for warning in cmp.warnings:
            printer.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if markdown is not None:
        from hubbench.outputs import write_text

        write_text(markdown, md, "--markdown")


def gate_cmd(
    baseline: str | None = typer.Option(
        None, "--baseline", help="Baseline run (id, .parquet or latest~N) to hold the candidate to."
    ),
    candidate: str | None = typer.Option(
        None, "--candidate", help="Candidate run (default: the latest run of the baseline's suite)."
    ),
    ratios: str | None = typer.Option(
        None, "--ratios", help="Gate the ratio rules of this run's suite ('latest' allowed)."
    ),
    ab: str | None = typer.Option(
        None,
        "--ab",
        help="Gate a same-run A/B (`run SUITE --against REF`): each cell's candidate against its "
        "baseline from paired rounds ('latest' allowed).",
    ),
    suite: str | None = typer.Option(
        None, "--suite", help="Suite (name or TOML) whose gate table applies (ratio mode)."
    ),
    metric: str = typer.Option("tokens_per_s", "--metric", help="Metric (baseline, --ab)."),
    max_regression: str = typer.Option(
        "5%", "--max-regression", help="Allowed worsening, e.g. 5% or 0.05 (baseline, --ab)."
    ),
    min_effect: str | None = typer.Option(None, "--min-effect", help=MIN_EFFECT_HELP),
    allow_env_mismatch: bool = typer.Option(
        False,
        "--allow-env-mismatch",
        help="Gate runs measured on different hosts, devices or torch versions anyway.",
    ),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Gate a candidate that lacks some baseline cells."
    ),
    summary: Path | None = typer.Option(
        None,
        "--summary",
        help="Write the Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set).",
    ),
    resamples: int = typer.Option(2000, "--resamples", help=RESAMPLES_HELP),
    confidence: float = typer.Option(0.95, "--confidence", help=CONFIDENCE_HELP),
    results_dir: Path | None = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
) -> None:
    """Fail (exit 1) when a metric regresses beyond noise; exit 2 when the input is unusable.

    A check fails only when its whole bootstrap CI lies beyond the threshold.

    Examples:
      hubbench gate --baseline results/baselines/ci.parquet --candidate latest --max-regression 5%
      hubbench gate --baseline latest~1 --candidate latest
      hubbench gate --ratios latest --summary gate.md
      hubbench gate --ab latest        # after: hubbench run ci --against main
    """  # fmt: skip
    from hubbench.errors import HubbenchError, ReportError
    from hubbench.report import gate
    from hubbench.report.format import percent
    from hubbench.report.summary import summary_targets, write_summary

    summary_targets(summary)  # an unwritable summary is unusable input: say so first
    try:
        if sum(x is not None for x in (baseline, ratios, ab)) != 1:
            raise ReportError(
                "give one of --baseline RUN (with --candidate RUN), --ratios RUN or --ab RUN"
            )
        options = _bootstrap(resamples, confidence, min_effect)
        if ab is not None:
            result = _gate_ab(ab, metric, percent(max_regression, "--max-regression"),
                              results_dir, **options)  # fmt: skip
        elif baseline is not None:
            result = _gate_baseline(
                baseline,
                candidate,
                metric,
                percent(max_regression, "--max-regression"),
                results_dir,
                allow_env_mismatch=allow_env_mismatch,
                allow_missing=allow_missing,
                **options,
            )
        else:
            del options["min_effect"]  # ratio rules carry their own thresholds
            result = _gate_ratios(ratios, suite, results_dir, **options)
    except HubbenchError as exc:  # unusable input: say why in the summary too, then exit 2
        write_summary(f"### hubbench gate: ⚠️ unusable input\n\n{exc}\n", summary)
        raise
    from hubbench.cli.fit import print_fitted

    printer = console()
    print_fitted(printer, gate.to_rich(result), *gate.rich_columns(result), wide=wide,
                 see=SEE.format("--summary FILE"))  # fmt: skip
    write_summary(gate.to_markdown(result), summary)
    for note in result.notes:
        printer.print(f"[yellow]note:[/] {note}", highlight=False)
    if not result.passed:
        names = ", ".join(c.name for c in result.failed[:5])
        more = f" (+{len(result.failed) - 5} more)" if len(result.failed) > 5 else ""
        raise gate.GateFailure(
            f"{len(result.failed)} check(s) regressed beyond noise: {names}{more}"
        )
    if result.held and result.machine is not None:  # exit 0: a slower machine says nothing
        printer.print(
            f"[yellow]gate inconclusive[/]: {result.held} check(s) would have regressed, but "
            f"{result.machine.words()}; see the note above",
            highlight=False,
        )
        return
    if result.masked and result.machine is not None:  # exit 0, as above: nothing was judged
        printer.print(
            f"[yellow]gate inconclusive[/]: {result.masked} check(s) would have passed, but "
            f"{result.machine.words()}, so a slowdown could hide behind it; see the note above",
            highlight=False,
        )
        return
    printer.print(f"[green]gate passed[/]: {len(result.checks)} check(s)", highlight=False)


def _gate_baseline(
    baseline: str,
    candidate: str | None,
    metric: str,
    max_regression: float,
    results_dir: Path | None,
    **options: Any,
) -> GateResult:
    from hubbench import store
    from hubbench.errors import ReportError, StoreError
    from hubbench.report.gate import gate_baseline
    from hubbench.report.load import load_run, run_label

    try:
        base = load_run(baseline, results_dir)
    except StoreError as exc:
        raise ReportError(
            f"baseline: {exc}; record one with `hubbench run <suite>` (and pin it by copying its "
            "parquet to results/baselines/, which is kept in git)"
        ) from exc
    if candidate is None or candidate == "latest":
        suites = sorted({str(s) for s in base["suite"]})
        where = store.results_dir(results_dir)
        cand_spec = store.latest_run(where, suites[0] if len(suites) == 1 else None)
        if cand_spec is None:
            raise ReportError(f"no candidate run of suite {', '.join(suites)} under {where}/")
    else:
        cand_spec = candidate
    cand = load_run(cand_spec, results_dir)
    from hubbench.report.gate_ab import is_ab

    for run, which in ((base, "baseline"), (cand, "candidate")):
        if is_ab(run):
            raise ReportError(
                f"the {which} ({run_label(run)}) is a same-run A/B, two code versions in one run: "
                "gate it with --ab RUN"
            )
    return gate_baseline(base, cand, metric, max_regression, **options)


def _gate_ab(
    ab: str, metric: str, max_regression: float, results_dir: Path | None, **options: Any
) -> GateResult:
    from hubbench.report.gate_ab import gate_ab
    from hubbench.report.load import load_run

    run = load_run(None if ab == "latest" else ab, results_dir)
    return gate_ab(run, metric, max_regression, **options)


def _gate_ratios(
    ratios: str, suite: str | None, results_dir: Path | None, **options: Any
) -> GateResult:
    from hubbench.report.gate import gate_ratios, load_rules
    from hubbench.report.load import load_run

    run = load_run(None if ratios == "latest" else ratios, results_dir)
    rules, name = load_rules(run, suite)
    return gate_ratios(run, rules, name, **options)
