"""`hubbench profile`: trace one variant's step and show where the time goes.

`render_profile` is shared with `hubbench run SUITE --profile`, which traces each cell through
`hubbench.profile.profile_cell` and prints the same tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from hubbench.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from hubbench.profile import ProfileResult, TraceSummary


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """`--set key=value` pairs; values stay strings and `make_config` coerces them by type."""
    fields: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set hubs=8")
        fields[key.strip()] = value.strip()
    return fields


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def _bar(share: float, width: int = 20) -> str:
    return "█" * round(max(0.0, min(1.0, share)) * width)


def stage_table(summary: TraceSummary) -> Table:
    from rich.table import Table

    cuda = summary.basis == "cuda"
    table = Table(
        title="time per stage, per step",
        caption="a row excludes the labelled stages nested in it; bwd: its own backward",
        show_footer=True,
    )
    backward = any(r.device_backward_s if cuda else r.cpu_backward_s for r in summary.stages)
    table.add_column("stage", footer="step", style="bold")
    table.add_column("GPU ms" if cuda else "time ms", _ms(summary.step_s), justify="right")
    if backward:
        table.add_column("of which bwd ms", justify="right")
    table.add_column("share", f"{summary.total() / summary.step_s:.1%}", justify="right")
    table.add_column("", style="cyan")
    if cuda:
        table.add_column("CPU ms", justify="right")
    for row in summary.stages:
        share = summary.share(row)
        bwd = row.device_backward_s if cuda else row.cpu_backward_s
        cells = [row.name, _ms(summary.stage_time(row))]
        if backward:
            cells.append(_ms(bwd) if bwd else "")
        cells += [f"{share:.1%}", _bar(share)]
        if cuda:
            cells.append(_ms(row.cpu_s))
        table.add_row(*cells)
    return table


def ops_table(summary: TraceSummary, device: bool = False) -> Table:
    from rich.table import Table

    rows = summary.device_ops if device else summary.ops
    kind = "CUDA" if device else "CPU"
    table = Table(title=f"top operators by self {kind} time (per step)")
    table.add_column("operator", no_wrap=True, overflow="ellipsis", max_width=48)
    table.add_column("calls", justify="right")
    table.add_column(f"self {kind} ms", justify="right")
    table.add_column("of step", justify="right")
    table.add_column("total CPU ms", justify="right")
    table.add_column("input dims (heaviest)", overflow="fold", style="dim")
    for op in rows:
        own = op.self_device_s if device else op.self_s
        table.add_row(
            op.name,
            f"{op.calls:g}",
            _ms(own),
            f"{own / summary.step_s:.1%}" if summary.step_s else "",
            _ms(op.total_s),
            op.shape,
        )
    return table


def render_profile(result: ProfileResult, console: Console) -> None:
    """Stage breakdown, top operators and where the traces are, for one profiled cell."""
    summary = result.summary
    console.print(
        f"[bold]{result.variant}[/] {result.mode}, batch {result.batch} x seq {result.seq} "
        f"on {result.device}: {summary.steps} traced step(s), "
        f"[bold]{_ms(summary.step_s)} ms[/] per step under the profiler "
        "(overhead included; `hubbench run` times without it)",
        highlight=False,
    )
    console.print(stage_table(summary))
    console.print(ops_table(summary))
    if summary.device_ops:
        console.print(ops_table(summary, device=True))
    for device, peak in summary.peak_mem_bytes.items():
        console.print(f"peak {device} memory allocated while tracing: {peak / 2**20:,.1f} MiB")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(
        f"TensorBoard: tensorboard --logdir {result.out_dir}  (PyTorch Profiler tab, "
        f"run {result.run_name})\n"
        f"trace:    {result.trace_path}\n"
        f"Perfetto: {result.perfetto_path}  (ui.perfetto.dev or chrome://tracing)",
        highlight=False,
        soft_wrap=True,
    )
    if result.memory_path:
        console.print(f"memory timeline: {result.memory_path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        variant: str = typer.Argument(..., help="Model variant (see `hubbench list`)."),
        seq: int = typer.Option(1024, "--seq", "-n", help="Sequence length."),
        batch: int = typer.Option(1, "--batch", "-b", help="Batch size."),
        sets: list[str] = typer.Option(
            None, "--set", "-s", help="Model config field, key=value (repeatable)."
        ),
        mode: str = typer.Option("train", "--mode", help="train | fwd | fwd_bwd."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        out: str = typer.Option("traces", "--out", help="Trace directory (TensorBoard logdir)."),
        steps: int = typer.Option(3, "--steps", help="Steps traced, after 1 wait + 1 warm-up."),
        memory: bool = typer.Option(False, "--memory", help="Record memory; write its timeline."),
        top: int = typer.Option(15, "--top", help="Operators listed."),
    ) -> None:
        """Trace one step of VARIANT with torch.profiler; show time per stage and top operators.

        Writes a trace that TensorBoard's PyTorch Profiler plugin opens (`tensorboard --logdir
        traces`) and a .perfetto.json for ui.perfetto.dev.

        Example: hubbench profile hub-gpt --seq 4096 --set hubs=8 --mode train
        """
        from rich.console import Console

        from hubbench.profile import profile_cell

        result = profile_cell(
            variant,
            parse_sets(sets),
            mode=mode,
            batch=batch,
            seq=seq,
            device=device,
            out_dir=out,
            steps=steps,
            memory=memory,
            top=top,
        )
        render_profile(result, Console())
