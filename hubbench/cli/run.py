"""`hubbench run`, `hubbench results`, `hubbench env`; also `suites_table()` for `hubbench list`.

Parsing and rendering only: suites are read and expanded by hubbench.suite, cells run by
hubbench.runner, rows stored by hubbench.store. Heavy imports stay inside the commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.errors import HubbenchError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from hubbench.suite import Plan

RESULTS_HELP = "Results directory (default: $HUBBENCH_RESULTS or ./results)."
# Cell fields that may tell two rows of one table apart, besides variant, attention and seq.
DETAIL_FIELDS = (
    "mode", "device", "dtype", "batch", "d_model", "n_layers", "n_heads", "vocab", "sdpa_kernel",
    "mamba_impl", "hubs", "topk", "neighbours", "chunk", "replace", "causal", "compile",
)  # fmt: skip
STATUS_STYLE = {"ok": "green", "skipped": "dim", "oom": "yellow", "timeout": "yellow"}


# ----------------------------------------------------------------------------- rendering


def _console(stderr: bool = False) -> Console:
    """Rich console; logs and pipes get 160 columns instead of Rich's default 80."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def _fmt_mem(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit, size in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if value >= size:
            return f"{value / size:,.1f}{unit}"
    return f"{value:.0f}B"


def _fmt_ms(value: Any) -> str:
    """Milliseconds to about three significant digits: 2,224 / 264 / 54.1 / 5.92."""
    if value is None:
        return "-"
    ms = float(value) * 1e3
    decimals = 0 if ms >= 100 else 1 if ms >= 10 else 2
    return f"{ms:,.{decimals}f}"


def _clean(value: Any) -> Any:
    """pandas / numpy nulls and scalars -> Python (rows may come from a DataFrame)."""
    from hubbench.report.load import norm_value

    return norm_value(value)


def _varying(rows: Sequence[Mapping[str, Any]], fields: Iterable[str]) -> list[str]:
    """Fields with two or more non-null values (null only marks a field that does not apply)."""
    out = []
    for f in fields:
        values = {repr(v) for r in rows if (v := _clean(r.get(f))) is not None}
        if len(values) > 1:
            out.append(f)
    return out


def rows_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """One line per cell: what ran, its status, speed, spread, memory and MFU."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    details = _varying(rows, DETAIL_FIELDS)
    table = Table(
        title=title,
        title_justify="left",
        caption="attention: the kernel that ran (dim: requested, did not run); ms: median step; "
        "mem: peak over the timed steps (G/M = GiB/MiB)",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("variant", style="bold cyan", no_wrap=True)
    table.add_column("attention", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for name in details:
        table.add_column(name, justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("tok/s", justify="right", style="bold", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("p10-p90", justify="right", no_wrap=True)
    table.add_column("mem", justify="right", no_wrap=True)
    table.add_column("MFU", justify="right", no_wrap=True)
    failed = any(r.get("status") != "ok" for r in rows)
    if failed:
        table.add_column("message", overflow="fold", max_width=60)
    previous = None
    for r in rows:
        ran = r.get("backend_attention")
        attention = ran or (f"[dim]{r['attention']}[/]" if r.get("attention") else "-")
        status = r.get("status") or "?"
        style = STATUS_STYLE.get(status, "red")
        ok = status == "ok"
        spread = (
            f"{_fmt_ms(r.get('time_p10_s'))}-{_fmt_ms(r.get('time_p90_s'))}"
            if ok and r.get("time_p10_s") is not None
            else "-"
        )
        mfu = r.get("mfu")
        numbers = [
            f"{r['tokens_per_s']:,.0f}" if ok and r.get("tokens_per_s") else "-",
            _fmt_ms(r.get("time_median_s")) if ok else "-",
            spread,
            _fmt_mem(r.get("peak_mem_bytes")) if ok else "-",
            f"{100 * mfu:.1f}%" if mfu is not None else "-",
        ]
        if failed:
            message = None if ok else str(r.get("message") or "")
            shown = "(as above)" if message and message == previous else escape(message or "")
            numbers.append(f"[{style}]{shown}[/]")
            previous = message or previous
        table.add_row(
            str(r.get("cell_index", "")),
            str(r.get("variant")),
            attention,
            str(r.get("seq")),
            *["-" if r.get(f) is None else str(r.get(f)) for f in details],
            f"[{style}]{status}[/]",
            *numbers,
        )
    return table


def plan_table(plan: Plan) -> Table:
    from rich.table import Table

    idents = [{**c.identity, "warmup": c.warmup, "repeats": c.repeats} for c in plan.cells]
    fields = _varying(idents, ("attention", *DETAIL_FIELDS, "warmup", "repeats"))
    first = idents[0]
    same = [
        f"{f}={first.get(f)}"
        for f in ("mode", "device", "dtype", "batch", "warmup", "repeats")
        if f not in fields
    ]
    table = Table(
        title=f"{plan.suite.name}: {len(plan.cells)} cells",
        title_justify="left",
        caption="every cell: " + " ".join(same),
        caption_justify="left",
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("variant", style="bold cyan", no_wrap=True)
    table.add_column("n", justify="right")
    for name in fields:
        table.add_column(name)
    table.add_column("cell_id", style="dim", no_wrap=True)
    for cell, ident in zip(plan.cells, idents, strict=True):
        table.add_row(
            str(cell.index),
            cell.variant,
            str(cell.seq),
            *["-" if ident.get(f) is None else str(ident.get(f)) for f in fields],
            cell.cell_id,
        )
    return table


def suites_table() -> Table:
    """Every suite with its description, swept axes and its cell count on this machine."""
    from rich.markup import escape
    from rich.table import Table

    from hubbench import suite as suites

    table = Table(title="suites (hubbench run SUITE)", show_lines=True)
    table.add_column("suite", style="bold cyan")
    table.add_column("description")
    table.add_column("sweep axes (dim: the cuda overlay)")
    table.add_column("cells here", justify="right")
    for name, path in suites.available_suites().items():
        try:
            s = suites.load_suite(path)
            axes = "\n".join(
                f"{k}: {', '.join(map(str, v))}" for k, v in suites.suite_axes(s).items()
            )
            for kind, overlay in s.device_axes.items():
                swept = {k: a.values for k, a in overlay.items()}
                axes += f"\n[dim]{kind}: " + "; ".join(
                    f"{k}={','.join(map(str, v))}" for k, v in swept.items()
                )
                axes += "[/]"
            count = str(len(suites.expand(s).cells))
            table.add_row(name, escape(s.description), axes, count)
        except HubbenchError as exc:
            table.add_row(name, f"[red]invalid: {escape(str(exc))}[/]", "", "")
    return table


def env_table(env: Mapping[str, Any], title: str = "environment") -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in env.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


# ----------------------------------------------------------------------------- commands


def _plan(
    suite_name: str,
    *,
    seq: str | None = None,
    variant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    mode: str | None = None,
    batch: str | None = None,
    sets: list[str] | None = None,
    repeats: int | None = None,
    warmup: int | None = None,
    min_time: float | None = None,
    timeout: float | None = None,
) -> Plan:
    from hubbench import suite as suites

    loaded = suites.load_suite(suite_name)
    overrides = suites.parse_overrides(
        sets or [], seq=seq, variant=variant, device=device, dtype=dtype, mode=mode, batch=batch
    )
    measure = suites.measure_overrides(
        repeats=repeats, warmup=warmup, min_time_s=min_time, timeout_s=timeout
    )
    return suites.expand(loaded, overrides, measure)


def _profile(plan: Plan, console: Console) -> None:
    try:
        from hubbench.profile import profile_cell
    except ModuleNotFoundError as exc:
        raise HubbenchError(
            "--profile needs hubbench/profile.py, which this install does not have"
        ) from exc
    from rich.markup import escape

    from hubbench.cli.profile import render_profile
    from hubbench.errors import UnavailableError

    for cell in plan.cells:
        try:
            result = profile_cell(
                cell.variant,
                cell.model_fields,
                mode=cell.mode,
                batch=cell.batch,
                seq=cell.seq,
                device=cell.device,
                compile=cell.compile,
            )
        except UnavailableError as exc:
            console.print(
                f"[dim]skipped {cell.label(plan.varying)}: {escape(str(exc))}[/]", highlight=False
            )
            continue
        render_profile(result, console)


def _run_with_progress(plan: Plan, results: Path, resume: bool, console: Console) -> Any:
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
        console=console,
        transient=True,
    )
    task = progress.add_task("starting worker", total=None)

    def on_start(position: int, total: int, cell: Any) -> None:
        progress.update(
            task,
            total=total,
            completed=position,
            description=f"cell {position + 1}/{total}: {cell.label(plan.varying)}",
        )

    def on_done(row: Mapping[str, Any]) -> None:
        progress.advance(task)
        if row["status"] not in ("ok", "skipped"):
            progress.console.print(
                f"[yellow]{row['status']}[/] cell {row['cell_index']} {row['variant']} "
                f"n={row['seq']}: {escape(str(row['message']))}",
                highlight=False,
                soft_wrap=True,
            )

    with progress:
        return run_plan(plan, results, resume=resume, on_start=on_start, on_done=on_done)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        suite: str = typer.Argument(..., help="Suite name (see `hubbench list`) or a .toml path."),
        seq: str = typer.Option(None, "--seq", "-n", help="Sequence lengths, e.g. 512,1024."),
        variant: str = typer.Option(None, "--variant", help="Variants, e.g. hub-gpt,transformer."),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
        dtype: str = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (comma list)."),
        mode: str = typer.Option(None, "--mode", help="fwd, fwd_bwd or train (comma list)."),
        batch: str = typer.Option(None, "--batch", "-b", help="Batch sizes (comma list)."),
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
    ) -> None:
        """Run a benchmark suite: one row per cell, saved to results/<suite>/<stamp>-<id>.parquet.

        Overrides replace a suite's values for a field; every cell is validated first.

        Examples:
          hubbench run throughput --seq 1024
          hubbench run hubs --set hubs=4,8 --set topk=32,64 --dry-run
          hubbench run scaling --device cuda --dtype bf16
          hubbench run throughput --resume
        """
        from hubbench import store

        console = _console()
        plan = _plan(
            suite, seq=seq, variant=variant, device=device, dtype=dtype, mode=mode, batch=batch,
            sets=sets, repeats=repeats, warmup=warmup, min_time=min_time, timeout=timeout,
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
            console.print(plan_table(plan))
            for note in notes:
                console.print(f"[dim]{note}[/]", highlight=False)
            return
        if profile:
            _profile(plan, console)
            return

        results = store.results_dir(results_dir)
        store.check_writable(results)
        err = _console(stderr=True)
        outcome = _run_with_progress(plan, results, resume, err)
        if outcome.resumed_from is not None:
            notes.append(
                f"resumed {outcome.resumed_from.name}: {outcome.skipped_done} cell(s) "
                "already measured"
            )
        elif resume:
            notes.append("--resume: no earlier run of this suite; started a new one")
        title = f"{plan.suite.name} run {outcome.run_id} ({len(outcome.new_rows)} new rows)"
        if outcome.new_rows:
            console.print(rows_table(outcome.new_rows, title))
        for note in notes:
            console.print(f"[dim]{note}[/]", highlight=False)
        if outcome.interrupted:
            err.print(
                f"[yellow]interrupted[/]: {len(outcome.rows)} finished row(s) kept in "
                f"{outcome.path}; continue with --resume",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130)
        console.print(
            f"wrote {outcome.path}  (pandas.read_parquet('{outcome.path}'))",
            highlight=False,
            soft_wrap=True,
        )

    @app.command("results")
    def results_cmd(
        run: str = typer.Argument(None, help="Run id (or prefix) or .parquet path."),
        suite: str = typer.Option(None, "--suite", help="List only this suite's runs."),
        results_dir: Path = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    ) -> None:
        """List stored runs, or show one run's rows.

        Examples:
          hubbench results
          hubbench results 3f9a12c4
          hubbench results results/throughput/20250101T120000Z-3f9a12c4.parquet
        """
        from rich.table import Table

        from hubbench import store

        console = _console()
        directory = store.results_dir(results_dir)
        if run is not None:
            df = store.read_run(run, directory)
            rows = df.to_dict("records")
            first = rows[0] if rows else {}
            title = (
                f"{first.get('suite')} run {first.get('run_id')}: {len(rows)} rows, "
                f"{first.get('device_name')}, torch {first.get('torch_version')}, "
                f"git {str(first.get('git_commit'))[:10]}"
                + (" (dirty)" if _clean(first.get("git_dirty")) else "")
            )
            console.print(rows_table(rows, title))
            return
        paths = store.list_runs(directory, suite)
        if not paths:
            console.print(f"no runs under {directory}/ (run `hubbench run SUITE`)")
            return
        table = Table(title=f"runs under {directory}/", title_justify="left")
        for col in ("suite", "run id", "started (UTC)", "rows", "status", "file"):
            table.add_column(col)
        for path in paths:
            info = store.run_info(path)
            status = ", ".join(f"{n} {s}" for s, n in sorted(info.status.items()))
            table.add_row(info.suite, info.run_id, info.stamp, str(info.rows), status, str(path))
        console.print(table)

    @app.command("env")
    def env_cmd(
        calibrate: bool = typer.Option(
            False, "--calibrate", help="Measure the matmul peak here and cache it for MFU."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Show the environment rows record, optional kernels, and the peak FLOP/s used for MFU.

        Examples:
          hubbench env
          hubbench env --calibrate --device cpu
        """
        import importlib.util

        from hubbench import env as envmod
        from hubbench.flops import peak_flops
        from hubbench.step import resolve_device
        from hubbench.suite import resolve_device as resolve_auto

        console = _console()
        dev = resolve_device(resolve_auto(device))
        info = {**envmod.host_env(), **envmod.torch_env()}
        info["device"] = f"{dev} ({envmod.device_name(dev)})"
        for package in ("flash_attn", "mamba_ssm", "causal_conv1d"):
            found = importlib.util.find_spec(package) is not None
            info[package] = "installed" if found else "not installed"
        if calibrate:
            with console.status(f"timing matmuls on {dev}"):
                envmod.calibrate(dev)
        calibration = envmod.load_calibration(dev)
        for dtype in ("fp32", "bf16", "fp16"):
            peak, source = peak_flops(dev.type, envmod.device_name(dev), dtype, calibration)
            info[f"peak {dtype}"] = (
                f"{peak / 1e12:,.2f} TFLOP/s ({source})"
                if peak
                else "unknown (no GPU table entry, not calibrated): MFU stays empty"
            )
        info["calibration file"] = str(envmod.calibration_path())
        console.print(env_table(info))
