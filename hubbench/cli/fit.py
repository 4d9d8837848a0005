"""Tables that fit the console by choosing what to show, never by cutting what is shown.

Rich fits a wide table by shrinking every column evenly at last, which cuts digits (`1…` for n,
`4.…` for tok/s) and the very names that tell rows apart. Here a table is fitted before Rich
sees it:

- a column that must stay (the names and swept axes that tell rows apart, the main figure) is
  never dropped; columns that may go are dropped in the order given until the rest fits;
- a column that does not wrap (numbers, names) is always printed whole;
- a column that wraps does so at spaces, never below its longest word, except prose columns
  (`fold`: a message), which fold words once they are narrower than `PROSE_MIN`;
- what was dropped is said in one line, with how to see it (`--wide`, or Markdown).

When even the columns that must stay do not fit, the table is printed wider than the console
(the terminal wraps lines) rather than cut. `--wide` prints every column at its natural width.

Rich keeps a column's cells on the column (`Column._cells`) and its position in `_index`; both
are set here. rich is pinned in constraints.txt and tests/cli/test_fit.py renders real tables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.markup import escape

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Column, Table

PROSE_MIN = 16  # a folding column (a message) is never narrower than this
UNBOUNDED = 10**5


@dataclass(frozen=True)
class Fitted:
    width: int  # the width to print at: the console's, or more when the kept columns need it
    hidden: tuple[str, ...]  # the headers dropped, in the order the table had them


def fit(
    printer: Console,
    table: Table,
    keep: Collection[str],
    drop: Sequence[str],
    fold: Collection[str] = ("message",),
) -> Fitted:
    """Drop columns of `table` (in place) in the order `drop` names them until the rest fits the
    console, then fix the widths of the wrapping columns so that Rich cuts nothing. Headers in
    `keep` are never dropped; a header in neither list is dropped after those in `drop`."""
    width = printer.width
    columns = list(table.columns)
    headers = [_header(c) for c in columns]
    empty = [h for h, c in zip(headers, columns, strict=True) if _empty(c)]
    order = [h for h in (*empty, *drop) if h in headers and h not in keep]  # empty ones first
    order += [h for h in headers if h not in keep and h not in order]
    order = list(dict.fromkeys(order))
    hidden: list[str] = []

    def show(without: Collection[str]) -> None:
        table.columns = [c for c in columns if _header(c) not in without]
        for i, column in enumerate(table.columns):
            column._index = i

    for header in order:  # drop the least wanted until the rest fits
        if _minimum(printer, table, fold) <= width:
            break
        hidden.append(header)
        show(hidden)
    for header in reversed(hidden[:-1]):  # then take back what fits, most wanted first
        trial = [h for h in hidden if h != header]
        show(trial)
        if _minimum(printer, table, fold) <= width:
            hidden = trial
        else:
            show(hidden)
    need = _minimum(printer, table, fold)
    _fix_widths(printer, table, fold, max(width, need))
    return Fitted(max(width, need), tuple(h for h in headers if h in hidden))


def print_fitted(
    printer: Console,
    table: Table,
    keep: Collection[str],
    drop: Sequence[str],
    wide: bool = False,
    see: str = "--wide shows them",
    fold: Collection[str] = ("message",),
    caption: Callable[[list[str]], str] | None = None,
    elsewhere: Collection[str] = (),
) -> Fitted:
    """Print `table` fitted to the console (every column with `wide`), then one line naming the
    columns left out and `see`, how to show them. `caption(shown headers)`, when given, writes
    the table's caption for the columns that are left; a column in `elsewhere` is shown another
    way by the caller when it is left out, so the line does not name it."""
    if wide:
        fitted = Fitted(max(printer.width, _natural(printer, table)), ())
    else:
        fitted = fit(printer, table, keep, drop, fold)
    if caption is not None:
        table.caption = caption([_header(c) for c in table.columns])
    saved = printer.width
    printer.width = fitted.width  # print(width=) would be clamped to the console's width
    try:
        printer.print(table)
    finally:
        printer.width = saved
    named = [h for h in fitted.hidden if h not in elsewhere]
    if named:
        printer.print(hidden_line(named, printer.width, see), highlight=False)
    return fitted


def hidden_line(hidden: Sequence[str], width: int, see: str) -> str:
    """'not shown at 80 columns: ms, MFU (--wide shows them)'; 'it' for one column."""
    see = see.replace("them", "it") if len(hidden) == 1 else see
    return escape(f"not shown at {width} columns: {', '.join(hidden)} ({see})")


def _header(column: Column) -> str:
    return str(column.header)


def _empty(column: Column) -> bool:
    """No cell says anything: every one blank or '-'."""
    from rich.text import Text

    def plain(cell: object) -> str:
        return cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain

    return all(plain(cell).strip() in ("", "-") for cell in column._cells)


def _ranges(printer: Console, table: Table) -> list[tuple[int, int]]:
    """(min, max) width of each column, padding included, at an unbounded width."""
    options = printer.options.update_width(UNBOUNDED)
    out = []
    for column in table.columns:
        saved = column.width
        column.width = None
        measured = table._measure_column(printer, options, column)
        column.width = saved
        out.append((measured.minimum, measured.maximum))
    return out


def _floor(column: Column, low: int, high: int, pad: int, fold: Collection[str]) -> int:
    """The narrowest a column may be printed: whole if it does not wrap, its longest word if it
    wraps, PROSE_MIN for prose that may fold words."""
    if column.no_wrap:
        return high
    if _header(column) in fold:
        return min(high, PROSE_MIN + pad)
    return low


def _minimum(printer: Console, table: Table, fold: Collection[str]) -> int:
    ranges = _ranges(printer, table)
    total = sum(
        _floor(c, lo, hi, table._get_padding_width(i), fold)
        for i, (c, (lo, hi)) in enumerate(zip(table.columns, ranges, strict=True))
    )
    return total + table._extra_width


def _natural(printer: Console, table: Table) -> int:
    return sum(hi for _, hi in _ranges(printer, table)) + table._extra_width


def _fix_widths(printer: Console, table: Table, fold: Collection[str], width: int) -> None:
    """Give each wrapping column a fixed width between its floor and its natural width, so that
    Rich's even shrinking (which ignores longest words) never applies."""
    ranges = _ranges(printer, table)
    if sum(hi for _, hi in ranges) + table._extra_width <= width:
        return
    pads = [table._get_padding_width(i) for i in range(len(table.columns))]
    floors = [_floor(c, lo, hi, p, fold) for c, (lo, hi), p in
              zip(table.columns, ranges, pads, strict=True)]  # fmt: skip
    widths = list(floors)
    spare = width - table._extra_width - sum(widths)
    wrapping = [i for i, c in enumerate(table.columns) if not c.no_wrap]
    while spare > 0:  # one character at a time to the wrapping column furthest below natural
        short = [i for i in wrapping if widths[i] < ranges[i][1]]
        if not short:
            break
        i = max(short, key=lambda j: ranges[j][1] - widths[j])
        widths[i] += 1
        spare -= 1
    for i in wrapping:
        table.columns[i].width = max(1, widths[i] - pads[i])
