"""`hubbench verify causal` (the causality report card) and `hubbench verify decode`.

`verify causal` builds each variant small and runs the probes of hubbench.verify.probes (the
checks of hubbench.verify.causality at several lengths, in eval and train mode, on random,
repeated and constant inputs) through `LanguageModel.forward_embeddings`; `--all` adds every
registered variant, the plug-ins given with --mixer and each variant's leaky control. One table
(hubbench.verify.card) goes to the terminal and, with --all or --markdown, to Markdown and JSON.
Plug-ins are checked in a child process (hubbench.verify.isolated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hubbench.cli.common import RESULTS_HELP
from hubbench.errors import ConfigError, HubbenchError

if TYPE_CHECKING:
    from rich.table import Table

    from hubbench.verify.decoding import DecodeReport


# Upper bounds on --seq: beyond them a check runs for hours or allocates what no machine has
# (--seq 1e11 ended in a MemoryError reported as a bug in hubbench; issue 33, item 10)
MAX_CAUSAL_SEQ = 4096
MAX_DECODE_SEQ = 8192


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
    from hubbench.verify.targets import small_fields

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
        # small sizes from the field names (hubbench.verify.targets), so a check's lengths cross
        # every chunk, block and window; the field's mixers at their defaults (window 256, block
        # 64) would be checked at n = 40 as plain causal attention
        chosen = {k: val for k, val in small_fields(v).items() if k in valid[v]}
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

    specs = split_list(mixers or [], "--mixer")
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


def _guarded(target: Target, timeout: float, check: Any, *args: Any, out: Any,
             broken: list[str]) -> Any:  # fmt: skip
    """check(variant, fields, *args) for one target; a plug-in's in a child process (it may
    exit, crash or hang), and one that fails is noted in `broken` by name and None returned
    (a built-in's error propagates)."""
    from rich.markup import escape

    from hubbench.plan.variants import is_plugin
    from hubbench.verify.isolated import IsolatedError, PluginRaised, call_isolated

    if not is_plugin(target.variant):
        return check(target.variant, target.fields, *args)
    try:
        return call_isolated(target.label, timeout, check, target.variant, target.fields, *args)
    except (IsolatedError, PluginRaised) as exc:
        broken.append(str(exc))
    except HubbenchError as exc:
        broken.append(_plugin_failure(target, exc))
    out.print(f"[bold]{escape(target.label)}[/]: [bold red]ERROR[/] {escape(broken[-1])}")
    return None


def _raise_broken(broken: list[str]) -> None:
    if broken:
        from hubbench.plan.plugins import PluginError

        raise PluginError(f"plug-in check(s) could not run: {'; '.join(broken)}")


def _plugin_failure(target: Target, exc: BaseException) -> str:
    """A plug-in that raised during a check: one line naming it (the check cannot pass)."""
    from hubbench.verify.checking import failure_text

    return failure_text(target.label, exc)


def register(app: typer.Typer) -> None:
    verify = typer.Typer(help="Correctness checks on the model variants.", no_args_is_help=True)
    app.add_typer(verify, name="verify")
    verify.command("causal")(causal_cmd)
    verify.command("decode")(decode_cmd)


CARD_SHORT = {"jacobian": "jac", "perturbation": "pert", "first leak (t_out <- t_in)": "1st leak"}
CARD_KEEP = ("variant", "jac", "pert", "prefix", "batch", "1st leak", "verdict")
# least needed first: fit() drops these until the table fits the console
CARD_DROP = ("fields", "found by", "expected", "largest leak")
VERDICT_STYLE = {
    "pass": "green",
    "control caught": "green",
    "LEAKS THE FUTURE": "bold red",
    "CONTROL NOT CAUGHT": "bold red",
    "UNUSABLE": "bold red",
    "ERROR": "bold red",
}


def causal_cmd(
    variants: list[str] = typer.Argument(
        None,
        help="Variants to check (default: every built-in variant; with --mixer, the plug-in ones).",
    ),
    all_: bool = typer.Option(
        False,
        "--all",
        help="The card: every registered variant, the --mixer plug-ins and each "
        "variant's leaky control (causal=false); writes Markdown and JSON.",
    ),
    seq: int = typer.Option(40, "--seq", "-n", help="Main sequence length (Jacobian, seeds)."),
    sets: list[str] = typer.Option(
        None, "--set", "-s", help="Model config field or plug-in option, key=value (repeatable)."
    ),
    seeds: int = typer.Option(3, "--seeds", help="Random inputs at the main length (0..N-1)."),
    batch: int = typer.Option(2, "--batch", "-b", help="Sequences per probe (>= 2)."),
    mixers: list[str] = typer.Option(None, "--mixer", help=MIXER_HELP),
    draws: int = typer.Option(1, "--draws", help="Lengths drawn at random per run (65..160+)."),
    length_seed: int | None = typer.Option(
        None,
        "--length-seed",
        help="Seed of the drawn lengths (default: new each run; the card records it).",
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", help="Seconds a plug-in's check may take (its own process)."
    ),
    markdown: Path | None = typer.Option(
        None,
        "--markdown",
        help="Write the card here (and FILE.json); default with --all: "
        "<results>/verify/causal-<UTC stamp>.md.",
    ),
    results_dir: Path | None = typer.Option(None, "--results-dir", help=RESULTS_HELP),
    wide: bool = typer.Option(False, "--wide", help="Every column, however wide."),
) -> None:
    """Check that output t of each variant does not depend on inputs after t.

    In float64, per variant: Jacobian entries d y_t / d x_s (s > t) must be
    exactly zero; perturbing inputs after t must leave outputs up to t alone;
    running on x[:t+1] must reproduce them; sequences of a batch must not
    influence each other. At the main length and at 64, 2C+1 and 3C+3 for
    every block size C and a drawn length; in eval and train mode; on random,
    repeated and constant inputs. Plug-ins run in a child process.

    Exit 0: all as expected; 1: a causal variant leaked or a leaky control
    (causal=false) was not caught; 2: unusable (NaN outputs, a build error,
    a plug-in that crashed or hung), with one line why.

    Examples: hubbench verify causal --all;
    hubbench verify causal hub-gpt --set chunk=16 --markdown card.md
    """
    import math
    import secrets

    from hubbench.cli.common import console, single_values
    from hubbench.plan.fields import split_list
    from hubbench.verify.card import Card, CardSettings

    if not 3 <= seq <= MAX_CAUSAL_SEQ:
        raise ConfigError(
            f"--seq must lie in [3, {MAX_CAUSAL_SEQ}] (got {seq}): the Jacobian check holds "
            "seq x seq gradients of a float64 model"
        )
    if seeds < 1 or batch < 2:
        raise ConfigError(f"--seeds must be >= 1 and --batch >= 2 (got {seeds}, {batch})")
    if draws < 0 or not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--draws must be >= 0 and --timeout > 0 (got {draws}, {timeout:g})")
    if all_ and variants:
        raise ConfigError("give variants or --all, not both")
    if markdown is not None:  # refused before anything is checked, not after
        from hubbench.outputs import check_file

        check_file(markdown, "--markdown")
    specs = split_list(mixers or [], "--mixer")
    from hubbench.verify.targets import card_targets

    targets = card_targets(list(variants) if variants else None, single_values(sets), specs, all_)
    settings = CardSettings(
        seq, tuple(range(seeds)), batch, draws,
        secrets.randbelow(10**6) if length_seed is None else length_seed, timeout,
    )  # fmt: skip
    out = console()
    if all_ and not specs:
        from hubbench.plan.variants import REGISTRY, is_plugin

        hosts = ", ".join(v for v in REGISTRY if is_plugin(v))
        if hosts:
            out.print(f"{hosts}: not checked (they need a plug-in: --mixer FILE.py:Class)")
    card = Card(_check_all(targets, settings, out), settings, command=_command_line())
    _stamp(card)
    print_card(out, card, wide)
    if markdown is not None or all_:
        _write(card, markdown, results_dir, out)
    if card.exit_code():
        raise _CardFailed(card.problems(), card.exit_code())


class _CardFailed(HubbenchError):
    """The card's verdict as the CLI's one line and exit code (1 a leak, 2 unusable)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


def _check_all(targets: list, settings: Any, out: Any) -> list:
    """Each target's row, a line per target as it finishes (plug-ins in a child process)."""
    from rich.markup import escape

    from hubbench.verify.checking import check_target
    from hubbench.verify.isolated import check_isolated

    rows = []
    for t in targets:
        row = check_isolated(t, settings) if t.mixer else check_target(t, settings)
        style = VERDICT_STYLE.get(row.verdict, "")
        word = {"pass": "causal: PASS"}.get(row.verdict, row.verdict)
        extra = f" {escape(row.message)}" if row.message else ""
        out.print(f"[bold]{escape(row.label)}[/]: [{style}]{word}[/]{extra}", highlight=False)
        rows.append(row)
    return rows


def _command_line() -> str:
    import shlex
    import sys

    return "hubbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _stamp(card: Any) -> None:
    """The environment a card records: commit, hubbench and torch versions."""
    import torch

    import hubbench
    from hubbench.measure.env import git_info

    card.commit, card.dirty = git_info()
    card.versions = {"hubbench": hubbench.__version__, "torch": torch.__version__}


def card_table(card: Any) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from hubbench.verify.card import header_line, row_cells

    table = Table(box=box.SIMPLE_HEAD, title="causality report card", title_justify="left",
                  caption=escape(header_line(card)), caption_justify="left", pad_edge=False,
                  padding=(0, 1, 0, 0))  # fmt: skip
    cells = [row_cells(r) for r in card.rows]
    numeric = {"largest leak"}
    for h in cells[0] if cells else ():
        table.add_column(CARD_SHORT.get(h, h), justify="right" if h in numeric else "left",
                         no_wrap=h not in ("fields", "found by"))  # fmt: skip
    for r, row in zip(card.rows, cells, strict=True):
        style = VERDICT_STYLE.get(r.verdict, "")
        table.add_row(*(
            f"[{style}]{escape(v)}[/]" if h == "verdict" or v == "FAIL" else escape(v)
            for h, v in row.items()
        ))  # fmt: skip
    return table


def print_card(out: Any, card: Any, wide: bool) -> None:
    from hubbench.cli.fit import print_fitted

    if not card.rows:
        out.print("no variants to check")
        return
    see = "--wide or the Markdown card shows them"
    fold = ("fields", "found by")
    print_fitted(out, card_table(card), CARD_KEEP, CARD_DROP, wide=wide, see=see, fold=fold)


def _write(card: Any, markdown: Path | None, results_dir: Path | None, out: Any) -> None:
    from rich.markup import escape

    from hubbench import store
    from hubbench.verify.card import default_stem, write_card

    if markdown is None:
        markdown = default_stem(store.results_dir(results_dir) / "verify", card.utc).with_suffix(
            ".md"
        )
    md, js = write_card(card, markdown)
    out.print(f"[green]wrote[/] {escape(str(md))} and {escape(js.name)}", highlight=False)


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
    timeout: float = typer.Option(
        300.0, "--timeout", help="Seconds a plug-in's import, and then its check, may take."
    ),
) -> None:
    """Check that incremental decoding gives the parallel forward's logits.

    In float64 and eval mode, for each variant: feeding the sequence token by
    token from an empty state (KV cache, Mamba state, HubRouter's recurrent
    state), and prefilling prompts of several lengths (chunk boundaries
    included) then decoding the rest, must reproduce the forward's logits at
    every position. Plug-ins are imported and checked in a child process.
    Exit 1 on a mismatch; 2 when a plug-in raised, crashed, exited or hung.

    Example: hubbench verify decode hub-gpt transformer --seq 43 --set chunk=8
    """

    import math

    from hubbench.cli.common import console
    from hubbench.plan.fields import split_list
    from hubbench.plan.variants import make_config
    from hubbench.verify.decoding import DecodeMismatch, check_variant
    from hubbench.verify.isolated import vet_plugins

    if not 2 <= seq <= MAX_DECODE_SEQ:
        raise ConfigError(
            f"--seq must lie in [2, {MAX_DECODE_SEQ}] (got {seq}): the check decodes every token "
            "one by one in float64, once per prompt length"
        )
    if seeds < 1 or batch < 1:
        raise ConfigError(f"--seeds and --batch must be >= 1 (got {seeds}, {batch})")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout must be > 0 seconds (got {timeout:g})")
    vet_plugins(split_list(mixers or [], "--mixer"), timeout)  # before this process imports
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
        report = _guarded(t, timeout, check_variant, seq, batch, tuple(range(seeds)), out=out,
                          broken=broken)  # fmt: skip
        if report is None:
            continue
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
