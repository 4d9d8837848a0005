"""The Typer app: one error boundary, commands registered from sibling modules.

Each `hubbench/cli/<group>.py` defines `register(app)` and holds no logic of its own: it parses,
calls the library and renders with Rich (shared tables in `tables.py`, numbers through
`hubbench.report.format`). Heavy imports stay inside the command functions, so `--help`, `list`
and `run --dry-run` import neither torch nor pandas.
The boundary lives in the click group, so `CliRunner` in the tests sees exactly what a user sees:
a `HubbenchError` becomes one line on stderr and its exit code; `--debug` re-raises it.

Exit codes, for every command: 0 success; 1 only for a real regression (`gate`) or a real leak
(`verify causal`); 2 for unusable input and for any internal error (a bug: one line naming the
exception, the traceback with --debug); 130 when interrupted; 141, silently, when the reader of
the output went away (`hubbench list | head`), as for any tool killed by SIGPIPE.
"""

from __future__ import annotations

import importlib

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from hubbench.cli.common import broken_pipe
from hubbench.errors import HubbenchError

err_console = Console(stderr=True, emoji=False)  # ":name:" in paths is not an emoji
INTERNAL_ERROR = 2
INTERRUPTED = 130


class _BoundaryGroup(TyperGroup):
    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # exits and usage errors (exit 2) of typer's own say what was wrong already
        except HubbenchError as exc:
            if ctx.params.get("debug"):
                raise
            _say("error", str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            _say("interrupted", "stopped by Ctrl-C")
            ctx.exit(INTERRUPTED)
        except BrokenPipeError:  # `hubbench compare --help | head`: the reader had enough
            broken_pipe()
        except Exception as exc:  # a bug (or memory ran out): one line, never exit 1
            if ctx.params.get("debug"):
                raise
            text = " ".join(str(exc).split())[:300]
            if _out_of_memory(exc):  # the sizes asked for, not a bug
                _say("error", f"out of memory ({text or type(exc).__name__}): {ASK_LESS}")
            else:
                _say(
                    "internal error",
                    f"{type(exc).__name__}: {text} (a bug in hubbench; --debug shows the "
                    "traceback)",
                )
            ctx.exit(INTERNAL_ERROR)


ASK_LESS = (
    "what was asked for does not fit this machine; ask for less (--seq, --batch, --seeds, --set)"
)


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: what the user asked for is too big for the machine, not a
    bug. The same test that makes a cell's row `oom` (hubbench.measure.outcome.classify)."""
    from hubbench.measure.outcome import classify

    return classify(exc)[0] == "oom"


def _say(what: str, text: str) -> None:
    err_console.print(f"[bold red]{what}:[/] " + escape(text), highlight=False, soft_wrap=True)


app = typer.Typer(
    name="hubbench",
    cls=_BoundaryGroup,
    help="Benchmark and profile HubRouter against attention and Mamba baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# The command groups, in `hubbench --help` order.
_COMMAND_MODULES = ("listing", "run", "results", "env", "cache", "report", "gate", "profile",
                    "verify")  # fmt: skip


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """hubbench: honest speed and causality numbers for sub-quadratic mixers."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"hubbench.cli.{_name}").register(app)


def main() -> None:
    app()
