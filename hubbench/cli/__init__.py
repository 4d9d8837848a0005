"""The Typer app: one error boundary, commands registered from sibling modules.

Each `hubbench/cli/<group>.py` defines `register(app)` and holds no logic of its own: it parses,
calls the library and renders with Rich (shared tables in `tables.py`, numbers through
`hubbench.report.format`). Heavy imports stay inside the command functions, so `--help`, `list`
and `run --dry-run` import neither torch nor pandas.
The boundary lives in the click group, so `CliRunner` in the tests sees exactly what a user sees:
a `HubbenchError` becomes one line on stderr and its exit code; `--debug` re-raises it.
"""

from __future__ import annotations

import importlib

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from hubbench.errors import HubbenchError

err_console = Console(stderr=True)


class _BoundaryGroup(TyperGroup):
    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except HubbenchError as exc:
            if ctx.params.get("debug"):
                raise
            err_console.print(
                "[bold red]error:[/] " + escape(str(exc)), highlight=False, soft_wrap=True
            )
            ctx.exit(exc.exit_code)


app = typer.Typer(
    name="hubbench",
    cls=_BoundaryGroup,
    help="Benchmark and profile HubRouter against attention and Mamba baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# The command groups, in `hubbench --help` order.
_COMMAND_MODULES = ("listing", "run", "results", "env", "report", "gate", "profile", "verify")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """hubbench: honest speed and causality numbers for sub-quadratic mixers."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"hubbench.cli.{_name}").register(app)


def main() -> None:
    app()
