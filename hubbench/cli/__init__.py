"""The Typer app: one error boundary, commands registered from sibling modules.

Each `hubbench/cli/<area>.py` defines `register(app)` and holds no logic of its own: it parses,
calls the library and renders with Rich. Heavy imports stay inside the command functions.
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

# Modules that contribute commands. A module that does not exist yet is skipped; one that fails
# to import is a bug and raises.
_COMMAND_MODULES = ("models", "run", "report", "profile", "verify")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """hubbench: honest speed and causality numbers for sub-quadratic mixers."""


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hubbench.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hubbench.cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()
