"""`hubbench run`: plan a suite, print the plan or measure it (or profile it), show the rows.

Parsing and rendering only: suites are read and expanded by hubbench.suite, cells run by
hubbench.runner, rows stored by hubbench.store. A dry run imports neither torch nor pandas.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.cli.common import LIST_HELP, RESULTS_HELP, console

if TYPE_CHECKING:
    from rich.console import Console

    from hubbench.runner import RunResult
    from hubbench.suite import Plan


def plan_suite(
    suite_name: str,
    *,
    axes: Mapping[str, list[str] | None],
    sets: list[str] | None = None,
    measure: Mapping[str, float | int | None] | None = None,
) -> Plan:
    """The suite's cells after the command line's overrides, every one validated."""
    from hubbench import suite as suites

    loaded = suites.load_suite(suite_name)
    overrides = suites.parse_overrides(sets or [], **axes)
    return suites.expand(loaded, overrides, suites.measure_overrides(**(measure or {})))


def _profile(plan: Plan, out: Console) -> None:
    from rich.markup import escape

    from hubbench.cli.profile import render_profile
    from hubbench.errors import UnavailableError
    from hubbench.profile import profile_cell

    for cell in plan.cells:
        try:
            result = profile_cell(
                cell.variant,
                cell.config,
                mode=cell.mode,
                batch=cell.batch,
                seq=cell.seq,
                device=cell.device,
                compile=cell.compile,
            )
        except UnavailableError as exc:
            label = escape(cell.label(plan.varying))
            out.print(f"[dim]skipped {label}: {escape(str(exc))}[/]", highlight=False)
            continue
        render_profile(result, out)


def _run_with_progress(
    plan: Plan, results: Path, resume: bool, builder: str, out: Console
) -> RunResult:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from hubbench.runner import run_plan

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
        transient=True,
    )
    task = progress.add_task("starting worker", total=None)

    def on_start(position: int, total: int, cell: Any) -> None:
        progress.update(
            task,
            total=total,
            completed=position,
            description=escape(f"cell {position + 1}/{total}: {cell.label(plan.varying)}"),
        )

    def on_done(row: Mapping[str, Any]) -> None:
        progress.advance(task)
        if row["status"] not in ("ok", "skipped"):
            progress.console.print(
                f"[yellow]{row['status']}[/] cell {row['cell_index']} "
                + escape(f"{row['variant']} n={row['seq']}: {row['message']}"),
                highlight=False,
                soft_wrap=True,
            )

    with progress:
        return run_plan(
            plan, results, resume=resume, builder=builder, on_start=on_start, on_done=on_done
        )


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        suite: str = typer.Argument(..., help="Suite name (see `hubbench list`) or a .toml path."),
        seq: list[str] = typer.Option(None, "--seq", "-n", help=f"Sequence lengths ({LIST_HELP})."),
        variant: list[str] = typer.Option(None, "--variant", help=f"Variants ({LIST_HELP})."),
        device: list[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
        dtype: list[str] = typer.Option(None, "--dtype", help=f"fp32, bf16, fp16 ({LIST_HELP})."),
        mode: list[str] = typer.Option(None, "--mode", help=f"fwd, fwd_bwd, train ({LIST_HELP})."),
        batch: list[str] = typer.Option(None, "--batch", "-b", help=f"Batch sizes ({LIST_HELP})."),
        sets: list[str] = typer.Option(
            None, "--set", "-s", help="Any field: key=v1,v2 (repeatable), e.g. hubs=4,8,16."
        ),
        repeats: int = typer.Option(None, "--repeats", help="Timed steps per cell (at least)."),
        warmup: int = typer.Option(None, "--warmup", help="Untimed steps before timing."),
        min_time: float = typer.Option(
            None, "--min-time", help="Keep timing a cell until this many seconds are timed."
        ),
        timeout: float = typer.Option(None, "--timeout", help="Per-cell timeout in seconds."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the suite's latest run: skip its measured cells."
        ),
        results_dir: Path = typer.Option(None, "--results-dir", help=RESULTS_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells; run nothing."),
        profile: bool = typer.Option(
            False, "--profile", help="Trace each cell with torch.profiler instead of timing it."
        ),
        builder: str = typer.Option(
            "hubbench.models:build",
            "--builder",
            help="MODULE:FUNCTION or FILE.py:FUNCTION that builds a model from (variant, config).",
        ),
    ) -> None:
        """Run a benchmark suite: one row per cell, saved to results/<suite>/<stamp>-<id>.parquet.

        Overrides replace a suite's values for a field; every cell is validated first.

        Examples:
          hubbench run throughput --seq 1024
          hubbench run hubs --set hubs=4,8 --set topk=32,64 --dry-run
          hubbench run scaling --device cuda --dtype bf16
          hubbench run throughput --resume
        """
        from rich.markup import escape

        out = console()
        plan = plan_suite(
            suite,
            axes={"seq": seq, "variant": variant, "device": device, "dtype": dtype, "mode": mode,
                  "batch": batch},
            sets=sets,
            measure={"repeats": repeats, "warmup": warmup, "min_time_s": min_time,
                     "timeout_s": timeout},
        )  # fmt: skip
        notes = []
        if plan.excluded:
            reasons = sorted({reason for _, reason in plan.excluded})
            notes.append(
                f"{len(plan.excluded)} cell(s) excluded by the suite: {'; '.join(reasons)}"
            )
        if plan.merged:
            notes.append(f"{plan.merged} combination(s) merged: their fields do not apply")
        if dry_run:
            from hubbench.cli.tables import plan_table

            out.print(plan_table(plan))
            for note in notes:
                out.print(f"[dim]{escape(note)}[/]", highlight=False)
            return
        if profile:
            _profile(plan, out)
            return

        from hubbench import store
        from hubbench.cli.tables import rows_table

        results = store.results_dir(results_dir)
        store.check_writable(results)
        err = console(stderr=True)
        outcome = _run_with_progress(plan, results, resume, builder, err)
        if outcome.resumed_from is not None:
            notes.append(
                f"resumed {outcome.resumed_from.name}: {outcome.skipped_done} cell(s) "
                "already measured"
            )
        elif resume:
            notes.append("--resume: no earlier run of this suite; started a new one")
        title = f"{plan.suite.name} run {outcome.run_id} ({len(outcome.new_rows)} new rows)"
        if outcome.new_rows:
            out.print(rows_table(outcome.new_rows, escape(title)))
        for note in notes:
            out.print(f"[dim]{escape(note)}[/]", highlight=False)
        if outcome.interrupted:
            kept = (
                f"{len(outcome.rows)} finished row(s) kept in {outcome.path}; continue with "
                "--resume"
                if outcome.rows
                else "no cell had finished; nothing was written"
            )
            err.print(f"[yellow]interrupted[/]: {escape(kept)}", highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        out.print(
            escape(f"wrote {outcome.path}  (pandas.read_parquet('{outcome.path}'))"),
            highlight=False,
            soft_wrap=True,
        )
