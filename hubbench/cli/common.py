"""What every command shares: consoles, option help, list options, naming runs."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

from hubbench.errors import ConfigError
from hubbench.plan.fields import parse_assignments, split_list

if TYPE_CHECKING:
    from rich.console import Console

RESULTS_HELP = "Results directory (default: $HUBBENCH_RESULTS, else ./results)."
LIST_HELP = "comma list or repeated"


BROKEN_PIPE = 141  # 128 + SIGPIPE: what `yes | head` leaves `yes` with


def broken_pipe() -> NoReturn:
    """The reader of stdout went away (`hubbench list | head`): stop without a word, pointing
    stdout at /dev/null so that the interpreter's last flush does not fail again."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # CliRunner's has no fd
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(BROKEN_PIPE)


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class QuietOnBrokenPipe(Console):
        def on_broken_pipe(self) -> None:  # Rich's own exits 1, which means "regression" here
            self.quiet = True
            broken_pipe()

    return QuietOnBrokenPipe


def console(stderr: bool = False) -> Console:
    """Rich console; logs and pipes get 160 columns instead of Rich's default 80, unless
    COLUMNS says how wide (`COLUMNS=80 hubbench results ... > table.txt`)."""
    cls = _console_class()
    out = cls(stderr=stderr, emoji=False)
    if out.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        return out
    return cls(stderr=stderr, width=160, emoji=False)


def listed(values: Iterable[str] | None, option: str) -> list[str] | None:
    """A list option as given: '--kind a,b' and '--kind a --kind b' alike; None when absent."""
    items = split_list(values, option)
    return items or None


def single_values(items: list[str] | None, option: str = "--set") -> dict[str, str]:
    """`--set key=value` items for commands that build one model: one value per key."""
    fields = {}
    for key, values in parse_assignments(items or [], option).items():
        if len(values) > 1:
            raise ConfigError(f"{option} {key}: takes one value here (got {','.join(values)})")
        fields[key] = values[0]
    return fields
