"""`hubbench cache list | clear`: the worktrees that same-run A/B runs (`run --against REF`)
check REF out into. The cache prunes itself after every such run (hubbench.run.worktrees keeps
the most recently used few); these commands show it and empty it by hand."""

from __future__ import annotations

import typer

SUBJECT_CHARS = 72
CACHE_HELP = (
    "The worktrees `run --against REF` checks REF out into ($HUBBENCH_CACHE/worktrees, else "
    "~/.cache/hubbench/worktrees)."
)


def list_cmd() -> None:
    """List the cached worktrees, most recently used first; a run using one now says so.

    Examples:
      hubbench cache list
    """
    from rich.markup import escape
    from rich.table import Table

    from hubbench.cli.common import console
    from hubbench.run import worktrees

    out = console()
    entries = worktrees.cached()
    where = escape(str(worktrees.cache_dir()))
    if not entries:
        out.print(f"no cached worktrees in {where}", highlight=False)
        return
    table = Table(title=f"cached worktrees in {where}", title_justify="left", box=None)
    for name in ("commit", "last used", "in use", "subject"):
        table.add_column(name, no_wrap=name != "subject", overflow="fold")
    for e in entries:
        subject = worktrees.git(e.path, "log", "-1", "--format=%s") if e.owner else None
        if subject and len(subject) > SUBJECT_CHARS:  # this project's subjects run long
            subject = subject[: SUBJECT_CHARS - 3] + "..."
        table.add_row(
            e.commit[:12],
            worktrees.age(e.last_used),
            "yes" if e.in_use else "-",
            escape(subject or "(not a worktree any more: `hubbench cache clear` removes it)"),
        )
    out.print(table)
    out.print(
        f"[dim]{len(entries)} worktree(s); after each --against run the "
        f"{worktrees.KEEP} most recently used are kept; `hubbench cache clear` removes every "
        "one not in use[/]",
        highlight=False,
    )


def clear_cmd() -> None:
    """Remove every cached worktree that no run is using (and tell git they are gone).

    Examples:
      hubbench cache clear
    """
    from rich.markup import escape

    from hubbench.cli.common import console
    from hubbench.run import worktrees

    out = console()
    removed, kept = worktrees.clear()
    where = escape(str(worktrees.cache_dir()))
    out.print(f"removed {len(removed)} cached worktree(s) from {where}", highlight=False)
    for path in kept:
        out.print(f"kept {escape(path.name[:12])}: a run is using it", highlight=False)


def register(app: typer.Typer) -> None:
    cache = typer.Typer(help=CACHE_HELP, no_args_is_help=True)
    app.add_typer(cache, name="cache")
    cache.command("list")(list_cmd)
    cache.command("clear")(clear_cmd)
