"""`hubbench run`: plan a suite, print the plan or measure it (or profile it), show the rows.

Parsing and rendering only: suites are read and expanded by hubbench.plan, cells run by
hubbench.run.runner, rows stored by hubbench.store. A dry run imports neither torch nor pandas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.cli.common import LIST_HELP, RESULTS_HELP, console
from hubbench.errors import ConfigError, HubbenchError

if TYPE_CHECKING:
    from rich.console import Console

    from hubbench.plan.suite import Plan
    from hubbench.run.eta import Progress
    from hubbench.run.rows import CellState
    from hubbench.run.runner import RunResult


def plan_suite(
    suite_name: str,
    *,
    axes: Mapping[str, list[str] | None],
    sets: list[str] | None = None,
    measure: Mapping[str, float | int | None] | None = None,
) -> Plan:
    """The suite's cells after the command line's overrides, every one validated.

    Planning imports the plug-in mixers in play (their options are fields); each is imported in
    a child process first (hubbench.verify.isolated), so one that exits, crashes or hangs at
    import is an error naming it, not a run or dry run that ends with exit 0 and no word.
    """
    from hubbench import plan as suites
    from hubbench.verify.isolated import IMPORT_TIMEOUT, vet_plugins

    timeout = (measure or {}).get("timeout_s") or IMPORT_TIMEOUT
    vet_plugins(plugin_specs(suite_name, axes.get("mixer"), sets), float(timeout))
    loaded = suites.load_suite(suite_name)
    axis = loaded.axes.get("mixer")
    overrides = suites.parse_overrides(sets or [], axis.values if axis else (), **axes)
    overrides = suites.with_mixers(loaded, overrides)
    return suites.expand(loaded, overrides, suites.measure_overrides(**(measure or {})))


def plugin_specs(suite_name: str, mixers: list[str] | None, sets: list[str] | None) -> list[str]:
    """The plug-in specs a run names, read without importing them: --mixer, --set mixer= and
    the suite file's. A suite or option that does not parse names none here: planning then
    says what is wrong with it."""
    import tomllib

    from hubbench.plan.fields import parse_assignments, split_list
    from hubbench.plan.find import find_suite
    from hubbench.plan.suite import suite_mixers

    specs: list[str] = []
    with contextlib.suppress(HubbenchError, OSError, ValueError):
        specs += split_list(mixers or [], "--mixer")
    with contextlib.suppress(HubbenchError):
        specs += parse_assignments(sets or [], "--set").get("mixer", [])
    with contextlib.suppress(HubbenchError, OSError, ValueError):
        specs += suite_mixers(tomllib.loads(find_suite(suite_name).read_text("utf-8")))
    return specs


def _profile(plan: Plan, out: Console) -> None:
    from rich.markup import escape

    from hubbench.cli.profile import profile_guarded, render_profile
    from hubbench.errors import UnavailableError

    for cell in plan.cells:
        try:  # a plug-in's cell in a child process, as `hubbench profile` runs it
            result = profile_guarded(
                cell.variant,
                cell.config,
                cell.measure.timeout_s,
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


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _round_line(row: Mapping[str, Any], state: CellState, progress: Progress, label: str) -> str:
    """'[ 7/30] hub-gpt n=2048 round 2/5: ok 27.2k tok/s (1m03s elapsed, ~2m10s left)'."""
    from hubbench.report.format import si

    width = len(str(progress.total))
    total = state.cell.measure.rounds
    what = f"{label} round {len(state.rounds) + (state.failure is not None)}/{total}"
    if row["status"] in ("ok", "partial"):  # partial: this round is fine, more are to come
        result = f"ok {si(row['tokens_per_s'])} tok/s"
    else:
        result = f"{row['status']}: {row['message']}"
    clock = f"{_clock(progress.elapsed_s)} elapsed, ~{_clock(progress.remaining_s)} left"
    return f"[{progress.done:>{width}}/{progress.total}] {what}: {result} ({clock})"


def kept_line(outcome: RunResult, plan: Plan) -> str:
    """What an interrupted run left on disk: its rows by status (a partial row has rounds still
    to measure), the cells it never reached, and whether --resume has anything to do (failed
    cells are not retried, unless lost with their job)."""
    from collections import Counter

    if not outcome.rows:
        return "no cell had finished; nothing was written"
    counts = Counter("complete" if r["status"] == "ok" else str(r["status"]) for r in outcome.rows)
    first = ("complete", "partial")
    parts = [f"{counts[s]} {s}" for s in first if counts[s]]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in first]
    sides = {str(r["cell_id"]).partition("/")[2] for r in outcome.rows} - {""}
    wanted = {c.cell_id + (f"/{s}" if s else "") for c in plan.cells for s in sides or {""}}
    unstarted = len(wanted - {r["cell_id"] for r in outcome.rows})
    if unstarted:
        parts.append(f"{unstarted} cell(s) not started")
    lost = any(r.get("job_lost") for r in outcome.rows)  # lost with their job: run again
    rest = "--resume measures the rest" if counts["partial"] or unstarted or lost else "done"
    return f"{len(outcome.rows)} row(s) kept in {outcome.path}: {', '.join(parts)}; {rest}"


def _run_with_progress(
    plan: Plan,
    results: Path,
    resume: bool,
    builder: str,
    out: Console,
    executor: Any = None,
    sides: Any = (),
) -> RunResult:
    """A live bar on a terminal; one line per finished round otherwise (CI logs, pipes)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from hubbench.run.runner import run_plan

    live = out.is_terminal
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[clock]}"),
        console=out,
        transient=True,
        disable=not live,
    )
    task = bar.add_task("starting worker", total=None, clock="")

    def label_of(state: CellState) -> str:
        side = f" [{state.side.name}]" if state.side else ""
        return state.cell.label(plan.varying) + side

    def on_start(state: CellState, progress: Any) -> None:
        label = label_of(state)
        round_ = f"round {len(state.rounds) + 1}/{state.cell.measure.rounds}"
        clock = f"~{_clock(progress.remaining_s)} left"
        bar.update(task, total=progress.total, completed=progress.done, clock=clock,
                   description=escape(f"{label} {round_}"))  # fmt: skip

    def on_done(row: Mapping[str, Any], state: CellState, progress: Any) -> None:
        bar.update(task, completed=progress.done)
        line = escape(_round_line(row, state, progress, label_of(state)))
        if not live:
            out.print(line, highlight=False, soft_wrap=True)
        elif row["status"] not in ("ok", "partial", "skipped"):
            bar.console.print(f"[yellow]{line}[/]", highlight=False, soft_wrap=True)

    def on_jobs(counts: Any) -> None:
        if live:
            bar.update(task, description=escape(counts.line()))
        else:
            out.print(escape(counts.line()), highlight=False, soft_wrap=True)

    with bar:
        return run_plan(
            plan,
            results,
            resume=resume,
            builder=builder,
            executor=executor,
            on_start=on_start,
            on_done=on_done,
            on_jobs=on_jobs,
            sides=sides,
        )


def _ab_ref(against: str | None, resume: bool, results_dir: Path | None, suite: str) -> str | None:
    """The baseline of a same-run A/B: --against REF, or with --resume alone the latest run's
    baseline commit when that run is an A/B; None for an ordinary run. Read before anything is
    built, so that what an A/B cannot do is refused first."""
    if against is not None or not resume:
        return against
    from hubbench import store
    from hubbench.run.against import resumed_baseline

    return resumed_baseline(store.results_dir(results_dir), suite)


def _sides(ref: str | None, builder: str) -> list:
    """The code versions of a same-run A/B against ref (its worktree built); none for None."""
    from hubbench.run.against import sides

    return sides(ref, builder) if ref else []


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        suite: str = typer.Argument(..., help="Suite name (see `hubbench list`) or a .toml path."),
        seq: list[str] = typer.Option(None, "--seq", "-n", help=f"Sequence lengths ({LIST_HELP})."),
        variant: list[str] = typer.Option(None, "--variant", help=f"Variants ({LIST_HELP})."),
        mixer: list[str] = typer.Option(
            None,
            "--mixer",
            help="Plug-in mixer FILE.py:Class or module:Class (repeatable): adds mixer-gpt "
            "(and mixer-jamba when the suite has jamba) built around it, shown as Class-gpt "
            "(Class-jamba); its options via --set.",
        ),
        device: list[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
        dtype: list[str] = typer.Option(None, "--dtype", help=f"fp32, bf16, fp16 ({LIST_HELP})."),
        mode: list[str] = typer.Option(
            None, "--mode", help=f"fwd, fwd_bwd, train, prefill, decode ({LIST_HELP})."
        ),
        batch: list[str] = typer.Option(None, "--batch", "-b", help=f"Batch sizes ({LIST_HELP})."),
        threads: list[str] = typer.Option(
            None, "--threads", help=f"torch intra-op threads ({LIST_HELP}; default: half the CPUs)."
        ),
        sets: list[str] = typer.Option(
            None, "--set", "-s", help="Any field: key=v1,v2 (repeatable), e.g. hubs=4,8,16."
        ),
        rounds: int = typer.Option(
            None, "--rounds", help="Timing blocks per cell, interleaved across cells."
        ),
        repeats: int = typer.Option(None, "--repeats", help="Timed steps per round (at least)."),
        warmup: int = typer.Option(None, "--warmup", help="Untimed steps per round (at least)."),
        min_time: float = typer.Option(
            None, "--min-time", help="Keep timing a round until this many seconds are timed."
        ),
        timeout: float = typer.Option(
            None, "--timeout", help="Timeout per cell and round, in seconds."
        ),
        decode_tokens: list[str] = typer.Option(
            None, "--decode-tokens", help=f"Decode mode: tokens per timed step ({LIST_HELP})."
        ),
        task: list[str] = typer.Option(
            None, "--task", help=f"Quality mode: mqar | bytes ({LIST_HELP})."
        ),
        data: list[str] = typer.Option(
            None,
            "--data",
            help=f"Quality mode, task bytes: a text file, or pydoc | shakespeare ({LIST_HELP}).",
        ),
        nproc: list[str] = typer.Option(
            None,
            "--nproc",
            help=f"Processes per cell under torchrun, data-parallel (DDP; {LIST_HELP}).",
        ),
        nnodes: list[str] = typer.Option(
            None,
            "--nnodes",
            help=f"Nodes per cell, nproc processes each (--executor slurm; {LIST_HELP}).",
        ),
        cuda_graphs: list[str] = typer.Option(
            None,
            "--cuda-graphs",
            help="Prefill and decode on CUDA: off (default) | auto | on, each timed call "
            f"replayed as one CUDA graph; on,off puts both side by side ({LIST_HELP}).",
        ),
        executor: str = typer.Option(
            None,
            "--executor",
            help="local (default) | submitit-local | slurm: where the cells run (docs/cluster.md).",
        ),
        cells_per_job: int = typer.Option(None, "--cells-per-job", help="Cells per job."),
        parallelism: int = typer.Option(
            None,
            "--parallelism",
            help="Jobs at once (submitit-local: processes on this host, default 1; slurm: the "
            "array's limit, default 16; the local executor runs one).",
        ),
        partition: str = typer.Option(None, "--partition", help="Slurm partition."),
        job_time: int = typer.Option(None, "--job-time", help="Time limit per job, minutes."),
        gpus_per_job: int = typer.Option(
            None, "--gpus-per-job", help="GPUs per job (default: nproc of its cells on CUDA)."
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Continue the suite's latest run: cells with rounds left get them; complete and "
            "failed cells are kept as they are.",
        ),
        results_dir: Path = typer.Option(None, "--results-dir", help=RESULTS_HELP),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells; run nothing."),
        wide: bool = typer.Option(
            False, "--wide", help="Print every column, wider than the terminal if need be."
        ),
        profile: bool = typer.Option(
            False, "--profile", help="Trace each cell with torch.profiler instead of timing it."
        ),
        builder: str = typer.Option(
            "hubbench.models:build",
            "--builder",
            help="MODULE:FUNCTION or FILE.py:FUNCTION that builds a model from (variant, config).",
        ),
        against: str = typer.Option(
            None,
            "--against",
            help="Same-run A/B: measure every cell under this code and under REF (branch, tag, "
            "sha, HEAD~1; checked out into a cached worktree), rounds paired; judge it with "
            "`hubbench gate --ab RUN`.",
        ),
    ) -> None:
        """Run a benchmark suite: one row per cell, saved to results/<suite>/<stamp>-<id>.parquet.

        Overrides replace a suite's values for a field; every cell is validated first.

        Examples:
          hubbench run throughput --seq 1024
          hubbench run hubs --set hubs=4,8 --set topk=32,64 --dry-run
          hubbench run scaling --device cuda --dtype bf16
          hubbench run throughput --resume
          hubbench run ci --against main
          hubbench run decode --mode decode --batch 1 --seq 1024,16384
          hubbench run quality --task bytes --data corpus.txt --variant transformer,hub-gpt
          hubbench run ci --executor submitit-local --cells-per-job 2
          hubbench run scaling --executor slurm --partition gpu --job-time 120
          hubbench run ci --nproc 1,2
          hubbench run ci --executor slurm --nnodes 2 --nproc 4 --device cuda
          hubbench run throughput --seq 512,1024 \\
            --mixer examples/sliding_window.py:SlidingWindowAttention --set window=64,128
        """
        from rich.markup import escape

        out = console()
        plan = plan_suite(
            suite,
            axes={"seq": seq, "variant": variant, "device": device, "dtype": dtype, "mode": mode,
                  "batch": batch, "threads": threads, "decode_tokens": decode_tokens,
                  "task": task, "data": data, "mixer": mixer, "nproc": nproc,
                  "nnodes": nnodes, "cuda_graphs": cuda_graphs},
            sets=sets,
            measure={"rounds": rounds, "repeats": repeats, "warmup": warmup,
                     "min_time_s": min_time, "timeout_s": timeout},
        )  # fmt: skip
        notes = []
        if plan.excluded:
            reasons = sorted({reason for _, reason in plan.excluded})
            notes.append(
                f"{len(plan.excluded)} cell(s) excluded by the suite: {'; '.join(reasons)}"
            )
        if plan.merged:
            notes.append(f"{plan.merged} combination(s) merged: their fields do not apply")
        from hubbench.plan.executor import check_cells, make_spec

        spec = make_spec(plan.suite.executor, kind=executor, cells_per_job=cells_per_job,
                         parallelism=parallelism, partition=partition, time_min=job_time,
                         gpus_per_job=gpus_per_job)  # fmt: skip
        ab_ref = _ab_ref(against, resume, results_dir, plan.suite.name)
        if ab_ref is not None and against is None and spec.kind != "local":
            raise ConfigError(
                f"--resume continues {plan.suite.name}'s latest run, a same-run A/B against "
                f"{ab_ref[:12]}, which measures both code versions in this process' workers: "
                "add --executor local",
                ("executor",),
            )
        check_cells(spec, plan.cells, ab=ab_ref is not None)  # the run's checks, dry or not
        if dry_run or spec.kind != "local":
            notes.append(spec.describe())
        if dry_run:
            from hubbench.cli.tables import print_plan

            print_plan(out, plan, wide)
            for note in notes:
                out.print(f"[dim]{escape(note)}[/]", highlight=False)
            return
        if profile:
            _profile(plan, out)
            return
        from hubbench import store
        from hubbench.cli.tables import print_rows
        from hubbench.plan.fields import oversubscribed
        from hubbench.report.noise import noise

        results = store.results_dir(results_dir)
        store.check_writable(results)
        err = console(stderr=True)
        sides = _sides(ab_ref, builder)  # refused first
        # submitit-local jobs run side by side on this host: their threads add up
        at_once = min(spec.jobs_at_once, len(plan.cells)) if spec.kind == "submitit-local" else 1
        busy = oversubscribed(max(c.threads * c.nproc for c in plan.cells) * at_once)
        if busy:
            err.print(f"[yellow]warning:[/] {escape(busy)}", highlight=False, soft_wrap=True)
        if sides:
            cand, base = sides
            said = f"candidate {(cand.commit or 'outside git')[:12]} (this tree) against "
            said += f"baseline {(base.commit or '')[:12]} ({base.root})"
            err.print(escape(f"same-run A/B: {said}"), highlight=False, soft_wrap=True)
        outcome = _run_with_progress(plan, results, resume, builder, err, spec, sides)
        if outcome.resumed_from is not None:
            notes.append(
                f"resumed {outcome.resumed_from.name}: {outcome.skipped_done} cell(s) already "
                "measured in full or failed (not retried); the others continued where they stopped"
            )
        elif resume:
            notes.append("--resume: no earlier run of this suite; started a new one")
        for data in outcome.edited_data:
            notes.append(
                f"--resume: {data} changed since this run trained on it: its cells are new cells "
                "(data_digest), not pooled with the seeds of its old content"
            )
        title = f"{plan.suite.name} run {outcome.run_id} ({len(outcome.new_rows)} new rows)"
        if outcome.new_rows:
            print_rows(out, outcome.new_rows, escape(title), wide)
        level = noise(outcome.rows)
        if level is not None:
            notes.append(level.line())
        for note in notes:
            out.print(f"[dim]{escape(note)}[/]", highlight=False)
        if outcome.interrupted:
            kept = kept_line(outcome, plan)
            err.print(f"[yellow]interrupted[/]: {escape(kept)}", highlight=False, soft_wrap=True)
            raise typer.Exit(130)
        out.print(
            escape(f"wrote {outcome.path}  (pandas.read_parquet('{outcome.path}'))"),
            highlight=False,
            soft_wrap=True,
        )
