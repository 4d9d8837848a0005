"""`hubbench verify causal`: prove (or refute) that each variant's output t ignores inputs after t.

Builds each variant small, in float64 and eval mode, and runs the checks of
`hubbench.verify.causality` (Jacobian, perturbation, prefix recompute, batch independence) through
`LanguageModel.forward_embeddings`. A variant whose config says `causal=false` is reported as
"non-causal (expected to leak)" and does not fail the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from hubbench.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

    from hubbench.verify.causality import CausalityReport
    from hubbench.verify.decoding import DecodeReport

# Small enough for ~30 s over all variants on 2 CPU cores; the hub fields make chunk boundaries
# (C-1, C, C+1, 2C-1, 2C, 2C+1) and several members fall inside the default sequence.
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0}
SMALL_HUB = {"hubs": 4, "topk": 4, "neighbours": 1, "chunk": 8}


@dataclass(frozen=True)
class Target:
    """One model a verify command checks: its label, variant and small config fields."""

    label: str
    variant: str
    fields: dict[str, object]


def variant_fields(
    variants: list[str], sets: dict[str, str], mixers: list[str] | None = None
) -> list[Target]:
    """Config fields per variant: the small defaults that apply, then `--set` where it applies.

    A `--set` key must be a field of at least one selected variant (or an option of a plug-in
    mixer); it is applied to those that have it (so `--set chunk=4` over all variants reaches
    the hub variants only). A plug-in variant is checked once per mixer in `mixers`.
    """
    from hubbench.plan import mixer_info, plugin_option_types
    from hubbench.plan.plugins import encode_options
    from hubbench.plan.variants import config_fields, display_name, is_plugin

    mixers = mixers or []
    plugin_option_types(mixers, "--mixer")  # the checks `run` makes: clashing names and types
    infos = [mixer_info(m) for m in mixers]
    valid = {v: set(config_fields(v)) for v in variants}
    known = set().union(*valid.values(), *(set(i.options) for i in infos))
    for key in sets:
        if key not in known:
            raise ConfigError(
                f"--set {key}: not a config field of {', '.join(variants)}; "
                f"valid: {', '.join(sorted(known))}"
            )
    out: list[Target] = []
    for v in variants:
        base = {**SMALL, **SMALL_HUB}
        chosen = {k: val for k, val in base.items() if k in valid[v]}
        chosen.update({k: val for k, val in sets.items() if k in valid[v]})
        if not is_plugin(v):
            out.append(Target(v, v, chosen))
            continue
        if not infos:
            raise ConfigError(f"{v}: give the plug-in mixer with --mixer FILE.py:Class")
        for info in infos:
            own = {k: _typed(info, k, val) for k, val in sets.items() if k in info.options}
            info.check_options(own, "--set")
            fields = {**chosen, "mixer": info.spec, "mixer_options": encode_options(own)}
            out.append(Target(display_name(v, info.spec), v, fields))
    return out


def _typed(info: Any, key: str, text: str) -> object:
    from hubbench.plan.fields import parse_text

    return parse_text(text, info.options[key].type, f"--set {key}")


def selected(
    variants: list[str] | None, sets: list[str] | None, mixers: list[str] | None = None
) -> list[Target]:
    """The variants a verify command checks (default: every built-in variant; with --mixer,
    the plug-in variants built around each mixer), each with its small config fields."""
    from hubbench.cli.common import single_values
    from hubbench.plan.fields import split_list
    from hubbench.plan.variants import REGISTRY, get_spec, is_plugin

    specs = split_list(mixers or [])
    if variants:
        names = list(variants)
        if specs and not any(is_plugin(v) for v in names):
            raise ConfigError(
                f"--mixer needs a plug-in variant among {', '.join(names)}: add mixer-gpt or "
                "mixer-jamba, or leave the variants out"
            )
    elif specs:
        names = [v for v in REGISTRY if is_plugin(v)]
    else:
        names = [v for v in REGISTRY if not is_plugin(v)]
    for name in names:
        get_spec(name)  # unknown variant -> ConfigError listing the valid ones
    return variant_fields(names, single_values(sets), specs)


MIXER_HELP = "Plug-in mixer FILE.py:Class or module:Class (repeatable): check models built on it."


def _guarded(target: Target, check: Any, out: Any, broken: list[str]) -> tuple[Any, Any] | None:
    """(model, check(model)) for one target; a plug-in that raises while it is built or
    checked is noted in `broken` by name and None returned (a built-in's error propagates)."""
    from rich.markup import escape

    from hubbench.models import build
    from hubbench.plan.variants import is_plugin, make_config

    try:
        model = build(target.variant, make_config(target.variant, **target.fields))
        return model, check(model)
    except (Exception, SystemExit) as exc:
        if not is_plugin(target.variant):
            raise
        broken.append(_plugin_failure(target, exc))
        out.print(f"[bold]{target.label}[/]: [bold red]ERROR[/] {escape(broken[-1])}")
        return None


def _raise_broken(broken: list[str]) -> None:
    if broken:
        from hubbench.plan.plugins import PluginError

        raise PluginError(f"plug-in check(s) could not run: {'; '.join(broken)}")


def _plugin_failure(target: Target, exc: BaseException) -> str:
    """A plug-in that raised during a check: one line naming it (the check cannot pass)."""
    from hubbench.errors import HubbenchError

    if isinstance(exc, HubbenchError):
        return f"{target.label}: {exc}"
    lines = str(exc).strip().splitlines()
    return f"{target.label}: raised {type(exc).__name__}: {lines[0] if lines else ''}".rstrip()


def _leak(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def verdict(report: CausalityReport, causal: bool) -> str:
    if report.passed:
        return "[green]causal: PASS[/]"
    if causal:
        return "[bold red]LEAKS THE FUTURE[/]"
    return "[yellow]non-causal (expected to leak)[/]"


def report_table(variant: str, fields: dict, report: CausalityReport, causal: bool) -> Table:
    from rich.table import Table

    shown = ", ".join(f"{k}={v}" for k, v in fields.items())
    table = Table(
        title=f"{variant}: {shown}",
        caption=f"seq {report.n}, seeds {list(report.seeds)}, t in {list(report.times)}",
        title_justify="left",
    )
    table.add_column("check", style="bold")
    table.add_column("result")
    table.add_column("largest leak", justify="right")
    table.add_column("first leaking (t, s)")
    table.add_column("cases", justify="right")
    for r in report.results:
        ok = "[green]pass[/]" if r.passed else ("[red]FAIL[/]" if causal else "[yellow]leaks[/]")
        table.add_row(r.name, ok, _leak(r.max_leak), r.describe_leak(), str(r.cases))
    return table


def register(app: typer.Typer) -> None:
    verify = typer.Typer(help="Correctness checks on the model variants.", no_args_is_help=True)
    app.add_typer(verify, name="verify")

    @verify.command("causal")
    def causal_cmd(
        variants: list[str] = typer.Argument(
            None, help="Variants to check (default: every registry variant)."
        ),
        seq: int = typer.Option(40, "--seq", "-n", help="Sequence length of the probes."),
        sets: list[str] = typer.Option(
            None, "--set", "-s", help="Model config field, key=value (repeatable)."
        ),
        seeds: int = typer.Option(3, "--seeds", help="Random inputs per check (seeds 0..N-1)."),
        batch: int = typer.Option(2, "--batch", "-b", help="Sequences per probe (>= 2)."),
        mixers: list[str] = typer.Option(None, "--mixer", help=MIXER_HELP),
    ) -> None:
        """Check that output t of each variant does not depend on inputs after t.

        In float64 and eval mode: Jacobian entries d y_t / d x_s (s > t) must be
        exactly zero; perturbing inputs after t must leave outputs up to t alone;
        running on x[:t+1] must reproduce them; and sequences of a batch must
        not influence each other. Positions include chunk boundaries.

        Exits 1 if a variant that claims to be causal leaks; configs with
        causal=false are reported as expected to leak.

        Example: hubbench verify causal hub-gpt transformer --seq 40 --set chunk=8
        """
        from hubbench.cli.common import console
        from hubbench.plan.variants import is_plugin
        from hubbench.verify.causality import CausalityError, check_model, claims_causal

        if seq < 3:
            raise ConfigError(f"--seq must be >= 3 (got {seq})")
        if seeds < 1 or batch < 2:
            raise ConfigError(f"--seeds must be >= 1 and --batch >= 2 (got {seeds}, {batch})")
        targets = selected(variants, sets, mixers)
        out = console()
        leaking: list[str] = []
        broken: list[str] = []
        for t in targets:
            checked = _guarded(
                t, lambda m: check_model(m, n=seq, batch=batch, seeds=tuple(range(seeds))), out,
                broken,
            )  # fmt: skip
            if checked is None:
                continue
            model, report = checked
            # a plug-in variant is built as a causal LM whatever flags its modules carry
            causal = is_plugin(t.variant) or claims_causal(model)
            out.print(f"[bold]{t.label}[/]: {verdict(report, causal)}")
            out.print(report_table(t.label, t.fields, report, causal))
            if causal and not report.passed:
                bad = [r for r in report.results if not r.passed]
                leaking.append(
                    f"{t.label} ({', '.join(f'{r.name} {r.describe_leak()}' for r in bad)})"
                )
        _raise_broken(broken)
        if leaking:
            raise CausalityError(f"causal variant(s) leak the future: {'; '.join(leaking)}")

    verify.command("decode")(decode_cmd)


def decode_table(variant: str, fields: dict, report: DecodeReport) -> Table:
    from rich.table import Table

    from hubbench.report.format import binary_bytes

    shown = ", ".join(f"{k}={v}" for k, v in fields.items())
    state = ", ".join(f"{k} {binary_bytes(v)}" for k, v in report.state_bytes.items())
    table = Table(
        title=f"{variant}: {shown}",
        caption=f"seq {report.n}, batch {report.batch}, seeds {list(report.seeds)} and a text, "
        f"float64, pass at |diff| <= {report.atol:g}; state per sequence at n: {state}",
        title_justify="left",
    )
    table.add_column("case", style="bold")
    table.add_column("result")
    table.add_column("largest |diff|", justify="right")
    table.add_column("first bad t", justify="right")
    for c in report.cases:
        ok = "[green]pass[/]" if c.passed(report.atol) else "[red]FAIL[/]"
        first = "-" if c.first_bad is None else str(c.first_bad)
        table.add_row(c.name, ok, f"{c.max_diff:.2g}", first)
    return table


def decode_cmd(
    variants: list[str] = typer.Argument(
        None, help="Variants to check (default: every registry variant)."
    ),
    seq: int = typer.Option(43, "--seq", "-n", help="Sequence length (not a multiple of chunk)."),
    sets: list[str] = typer.Option(
        None, "--set", "-s", help="Model config field, key=value (repeatable)."
    ),
    seeds: int = typer.Option(2, "--seeds", help="Random token sequences (seeds 0..N-1)."),
    batch: int = typer.Option(2, "--batch", "-b", help="Sequences per probe."),
    mixers: list[str] = typer.Option(None, "--mixer", help=MIXER_HELP),
) -> None:
    """Check that incremental decoding gives the parallel forward's logits.

    In float64 and eval mode, for each variant: feeding the sequence token by
    token from an empty state (KV cache, Mamba state, HubRouter's recurrent
    state), and prefilling prompts of several lengths (chunk boundaries
    included) then decoding the rest, must reproduce the forward's logits at
    every position. Exits 1 on a mismatch.

    Example: hubbench verify decode hub-gpt transformer --seq 43 --set chunk=8
    """

    from hubbench.cli.common import console
    from hubbench.plan.variants import make_config
    from hubbench.verify.decoding import DecodeMismatch, check_decode

    if seq < 2:
        raise ConfigError(f"--seq must be >= 2 (got {seq})")
    if seeds < 1 or batch < 1:
        raise ConfigError(f"--seeds and --batch must be >= 1 (got {seeds}, {batch})")
    targets = selected(variants, sets, mixers)
    out = console()
    bad: list[str] = []
    broken: list[str] = []
    for t in targets:
        config = make_config(t.variant, **t.fields)
        if getattr(config, "causal", True) is False:
            raise ConfigError(
                f"{t.label}: decoding needs a causal model (--set causal=false given)"
            )
        checked = _guarded(
            t, lambda m: check_decode(m, n=seq, batch=batch, seeds=tuple(range(seeds))), out, broken
        )
        if checked is None:
            continue
        report = checked[1]
        word = "[green]decode: PASS[/]" if report.passed else "[bold red]DECODE MISMATCH[/]"
        out.print(f"[bold]{t.label}[/]: {word}")
        out.print(decode_table(t.label, t.fields, report))
        if not report.passed:
            worst = max(report.cases, key=lambda c: c.max_diff)
            bad.append(
                f"{t.label} ({worst.name}: |diff| {worst.max_diff:.2g} at t={worst.first_bad})"
            )
    _raise_broken(broken)
    if bad:
        raise DecodeMismatch(f"decode differs from the forward: {'; '.join(bad)}")
