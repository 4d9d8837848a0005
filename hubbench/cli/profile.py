"""`hubbench profile`: trace one variant's step and show where the time goes.

`render_profile` is shared with `hubbench run SUITE --profile`, which traces each cell through
`hubbench.profile.trace.profile_cell` and prints the same tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from hubbench.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from hubbench.profile import ProfileResult


def render_profile(result: ProfileResult, out: Console, wide: bool = False) -> None:
    """Stage breakdown, top operators and where the traces are, for one profiled cell; the
    tables fitted to the console (the operators' input shapes go first)."""
    from rich.markup import escape

    from hubbench.cli.fit import print_fitted
    from hubbench.cli.tables import OPS_DROP, OPS_KEEP, ops_table, stage_table
    from hubbench.report.format import binary_bytes, milliseconds

    summary = result.summary
    out.print(
        f"[bold]{escape(result.variant)}[/] {result.mode}, batch {result.batch} x seq "
        f"{result.seq} on {result.device}: {summary.steps} traced step(s), "
        f"[bold]{milliseconds(summary.step_s)} ms[/] per step under the profiler "
        "(overhead included; `hubbench run` times without it)",
        highlight=False,
    )
    see = "--wide shows them"
    print_fitted(out, stage_table(summary), ("stage", "time ms", "GPU ms", "share"),
                 ("", "CPU ms", "of which bwd ms"), wide=wide, see=see)  # fmt: skip
    for device in (False, True) if summary.device_ops else (False,):
        print_fitted(out, ops_table(summary, device), OPS_KEEP, OPS_DROP, wide=wide, see=see,
                     fold=("operator",))  # fmt: skip
    for device, peak in summary.peak_mem_bytes.items():
        out.print(f"peak {device} memory allocated while tracing: {binary_bytes(peak)}")
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    out.print(
        escape(
            f"trace: {result.trace_path}\n"
            f"  TensorBoard: tensorboard --logdir {result.out_dir}  (PyTorch Profiler tab, "
            f"run {result.run_name})\n"
            "  Perfetto: open that file at ui.perfetto.dev (or chrome://tracing), as it is"
        ),
        highlight=False,
        soft_wrap=True,
    )
    if result.memory_path:
        out.print(escape(f"memory timeline: {result.memory_path}"), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        variant: str = typer.Argument(..., help="Model variant (see `hubbench list`)."),
        seq: int = typer.Option(1024, "--seq", "-n", help="Sequence length."),
        batch: int = typer.Option(1, "--batch", "-b", help="Batch size."),
        sets: list[str] = typer.Option(
            None, "--set", "-s", help="Model config field, key=value (repeatable)."
        ),
        mode: str = typer.Option(
            "train", "--mode", help="train | fwd | fwd_bwd | prefill | decode."
        ),
        device: str = typer.Option("cpu", "--device", help="auto, cpu, cuda or cuda:N."),
        out: str = typer.Option("traces", "--out", help="Trace directory (TensorBoard logdir)."),
        steps: int = typer.Option(3, "--steps", help="Steps traced, after 1 wait + 1 warm-up."),
        memory: bool = typer.Option(False, "--memory", help="Record memory; write its timeline."),
        top: int = typer.Option(15, "--top", help="Operators listed (one line each)."),
        wide: bool = typer.Option(
            False, "--wide", help="Print every column, wider than the terminal if need be."
        ),
        decode_tokens: int = typer.Option(
            64, "--decode-tokens", help="Decode mode: tokens one traced step generates."
        ),
        mixer: str = typer.Option(
            None, "--mixer", help="Plug-in mixer FILE.py:Class for mixer-gpt / mixer-jamba."
        ),
        timeout: float = typer.Option(
            600.0, "--timeout", help="Seconds a plug-in's import, and then its trace, may take."
        ),
    ) -> None:
        """Trace one step of VARIANT with torch.profiler; show time per stage and top operators.

        Writes one gzipped trace that TensorBoard's PyTorch Profiler plugin opens (`tensorboard
        --logdir traces`) and ui.perfetto.dev opens as it is.

        Examples:
          hubbench profile hub-gpt --seq 4096 --set hubs=8 --mode train
          hubbench profile mixer-gpt --mixer examples/sliding_window.py:SlidingWindowAttention
        """
        import math

        from hubbench.cli.common import console, single_values
        from hubbench.plan.fields import resolve_device
        from hubbench.plan.variants import check_length, make_config
        from hubbench.verify.isolated import vet_plugins

        if seq < 1 or batch < 1 or top < 1 or decode_tokens < 1:
            raise ConfigError(
                f"--seq, --batch, --top and --decode-tokens must be >= 1 "
                f"(got {seq}, {batch}, {top}, {decode_tokens})"
            )
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"--timeout must be > 0 seconds (got {timeout:g})")
        given = single_values(sets)
        spec = mixer or given.get("mixer")
        vet_plugins([spec] if spec else [], timeout)
        config = make_config(variant, **plugin_fields(variant, given, mixer))
        check_length(config, seq)
        result = profile_guarded(
            variant,
            config,
            timeout,
            mode=mode,
            batch=batch,
            seq=seq,
            device=resolve_device(device, "--device"),
            out_dir=out,
            steps=steps,
            memory=memory,
            top=top,
            decode_tokens=decode_tokens,
        )
        render_profile(result, console(), wide)


def profile_guarded(variant: str, config: Any, timeout: float, **options: Any) -> ProfileResult:
    """profile_cell(variant, config, **options); a plug-in's in a child process (its import,
    build and steps), so that one that exits, crashes or hangs is a PluginError naming it."""
    from hubbench.plan.plugins import display_name
    from hubbench.plan.variants import is_plugin
    from hubbench.profile import profile_cell
    from hubbench.verify.isolated import call_isolated

    if not is_plugin(variant):
        return profile_cell(variant, config, **options)
    name = display_name(getattr(config, "mixer", None)) or variant
    return call_isolated(f"mixer {name}", timeout, profile_cell, variant, config, **options)


def plugin_fields(variant: str, sets: dict[str, str], mixer: str | None) -> dict[str, str]:
    """`--set` fields for one variant, a plug-in's options folded into its mixer_options."""
    from hubbench.plan import mixer_info
    from hubbench.plan.fields import parse_text
    from hubbench.plan.plugins import encode_options, parse_spec
    from hubbench.plan.variants import is_plugin

    fields = dict(sets)
    if not is_plugin(variant):
        if mixer:
            raise ConfigError("--mixer needs a plug-in variant: mixer-gpt or mixer-jamba")
        return fields
    spec = mixer or fields.pop("mixer", None)
    if not spec:
        raise ConfigError(f"{variant}: give the plug-in mixer with --mixer FILE.py:Class")
    info = mixer_info(spec)
    options = {
        k: parse_text(fields.pop(k), info.options[k].type, f"--set {k}")
        for k in list(fields)
        if k in info.options
    }
    info.check_options(options, "--set")
    fields.update(mixer=parse_spec(spec).text, mixer_options=encode_options(info.complete(options)))
    return fields
