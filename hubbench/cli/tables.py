"""Rich tables that more than one command prints; numbers go through hubbench.report.format.

Field lists come from hubbench.schema and hubbench.plan.variants, so a new config field or column
shows up here without an edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from hubbench import schema
from hubbench.report.runtable import DETAIL_FIELDS

if TYPE_CHECKING:
    from rich.console import Console

    from hubbench.plan.suite import Plan
    from hubbench.profile import TraceSummary
    from hubbench.report.runtable import RunTable

STATUS_STYLE = {
    "ok": "green",
    "partial": "cyan",
    "skipped": "dim",
    "oom": "yellow",
    "timeout": "yellow",
}
COLUMN_STYLE = {"#": "dim", "variant": "bold cyan", "tok/s": "bold"}
PROSE = {"message"}  # the run table's one column that wraps: every other cell prints whole


def variants_table() -> Table:
    from hubbench.plan.variants import REGISTRY

    table = Table(title="model variants", show_lines=True)
    table.add_column("variant", style="bold cyan")
    table.add_column("description")
    table.add_column("config fields (default)")
    for spec in REGISTRY.values():
        defaults = spec.config_cls()
        fields = ", ".join(
            f"{f.name}={getattr(defaults, f.name)!r}" for f in dataclasses.fields(spec.config_cls)
        )
        table.add_row(spec.name, spec.description, fields)
    return table


def suites_table() -> Table:
    """Every suite with its description, swept axes and its cell count on this machine."""
    from hubbench import plan as suites
    from hubbench.errors import HubbenchError

    table = Table(title="suites (hubbench run SUITE)", show_lines=True)
    table.add_column("suite", style="bold cyan")
    table.add_column("description")
    table.add_column("sweep axes (dim: the cuda overlay)")
    table.add_column("cells here", justify="right")
    for name, path in suites.available_suites().items():
        try:
            s = suites.load_suite(path)
            axes = "\n".join(
                f"{k}: {', '.join(map(str, v))}" for k, v in suites.suite_axes(s).items()
            )
            for kind, overlay in s.device_axes.items():
                swept = "; ".join(f"{k}={','.join(map(str, a.values))}" for k, a in overlay.items())
                axes += f"\n[dim]{kind}: {escape(swept)}[/]"
            count = str(len(suites.expand(s).cells))
            table.add_row(escape(name), escape(s.description), axes, count)
        except HubbenchError as exc:
            table.add_row(escape(name), f"[red]invalid: {escape(str(exc))}[/]", "", "")
    return table


def tasks_table() -> Table:
    """The quality mode's tasks: what each measures, the fields it reads, the suites using it."""
    from hubbench import plan as suites
    from hubbench.errors import HubbenchError
    from hubbench.plan.fields import TASK_INFO, TASKS

    used: dict[str, list[str]] = {t: [] for t in TASKS}
    for name, path in suites.available_suites().items():
        try:
            cells = suites.expand(suites.load_suite(path)).cells
            tasks = {c.task for c in cells if c.mode == "quality"}
        except HubbenchError:
            continue  # the suites table says why
        for task in sorted(t for t in tasks if t in used):
            used[task].append(name)
    table = Table(title="quality tasks (mode = quality, --set task=TASK)", show_lines=True)
    table.add_column("task", style="bold cyan")
    table.add_column("measures")
    table.add_column("reads")
    table.add_column("suites")
    for task in TASKS:
        what, reads = TASK_INFO[task]
        table.add_row(task, escape(what), escape(reads), escape(", ".join(used[task]) or "-"))
    return table


def print_plan(printer: Console, plan: Plan, wide: bool = False) -> None:
    """The plan fitted to the console: every swept field stays, the cell ids go first."""
    from hubbench.cli.fit import print_fitted

    table = plan_table(plan)
    keys = [str(c.header) for c in table.columns if c.header != "cell_id"]
    print_fitted(printer, table, keys, ("cell_id",), wide=wide, see="--wide shows them")


def plan_table(plan: Plan) -> Table:
    training = all(c.mode == "quality" for c in plan.cells)  # one training run per cell
    settings = ("timeout_s",) if training else ("rounds", "repeats", "warmup")
    idents = [{**c.explicit_identity, **{k: getattr(c.measure, k) for k in settings}}
              for c in plan.cells]  # fmt: skip
    fields = schema.varying(idents, ("attention", *DETAIL_FIELDS, *settings), nulls=False)
    first = idents[0]
    shown = ("mode", "device", "dtype", "batch", "threads", "decode_tokens", "task", "kv_pairs",
             "data", "train_updates", "lr", *settings)  # fmt: skip
    same = [f"{f}={first.get(f)}" for f in shown if f not in fields and first.get(f) is not None]
    table = Table(
        title=f"{plan.suite.name}: {len(plan.cells)} cells",
        title_justify="left",
        caption="every cell: " + " ".join(same),
        caption_justify="left",
    )
    from hubbench.plan.variants import display_name

    table.add_column("#", justify="right", style="dim")
    table.add_column("variant", style="bold cyan", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for name in fields:
        table.add_column(name, no_wrap=True)
    table.add_column("cell_id", style="dim", no_wrap=True)
    for cell, ident in zip(plan.cells, idents, strict=True):
        table.add_row(
            str(cell.index),
            display_name(cell.variant, getattr(cell.config, "mixer", None)),
            str(cell.seq),
            *["-" if ident.get(f) is None else str(ident.get(f)) for f in fields],
            cell.cell_id,
        )
    return table


# the run table's columns in the order they go when the console is narrow; the names, the swept
# axes, n, status and tok/s always stay (hubbench.cli.fit)
SPEED_DROP = ("p10-p90", "SoL", "MFU", "state", "message", "ms", "mem", "attention")
# the trivial model's score (MQAR: the recall-free ceiling) is what a quality reads against: last
QUALITY_DROP = ("random P/R", "routing P/R", "conv", "causal", "trivial")
SEE = "--wide shows them; --format md writes every column"


def print_rows(
    printer: Console, rows: Sequence[Mapping[str, Any]], title: str, wide: bool = False
) -> None:
    """The rows table, then a quality run's over-seeds table, fitted to the console
    (hubbench.cli.fit): the columns that tell rows apart always stay, optional ones are dropped
    and named. When the table is wider than the console and has quality columns, it is printed
    as two tables keyed by `#`: what ran and its speed, then its quality."""
    from hubbench.cli.fit import print_fitted
    from hubbench.report.runtable import QUALITY_HEADERS, run_table

    data = run_table(rows)
    headers = [c.header for c in data.columns]
    axes = headers[headers.index("n") : headers.index("status")]  # n and the swept fields
    keys = ["#", "variant", *axes]
    if len({r.cells[headers.index("attention")] for r in data.rows}) > 1:
        keys.insert(2, "attention")  # it tells rows apart
    whole = rows_table(rows, title, data=data)
    quality = [i for i, h in enumerate(headers) if h in QUALITY_HEADERS]

    def caption(shown: list[str]) -> str:
        return escape(data.caption(shown=shown))

    split = bool(quality) and not wide and _natural_width(printer, whole) > printer.width
    if not split:
        fitted = print_fitted(printer, whole, [*keys, "status", "tok/s", "quality"],
                              (*SPEED_DROP, *QUALITY_DROP), wide=wide, see=SEE, caption=caption,
                              elsewhere=("message",))  # fmt: skip
    else:
        speed = [i for i in range(len(headers)) if i not in quality]
        table = rows_table(rows, title, data=data, keep=speed)
        fitted = print_fitted(printer, table, [*keys, "status", "tok/s"], SPEED_DROP, see=SEE,
                              caption=caption, elsewhere=("message",))  # fmt: skip
    if "message" in fitted.hidden:  # the numbers took the room: each failure's reason below
        for line in message_notes(rows):
            printer.print(escape(line), highlight=False)
    if split:
        # the kernel that ran is in the speed half, by #: its room goes to the quality columns
        keys = [k for k in keys if k != "attention"]
        named = sorted(headers.index(h) for h in keys)
        table = rows_table(rows, f"{title}: quality", data, named + quality, caption=False)
        print_fitted(printer, table, [*keys, "quality"], QUALITY_DROP, see=SEE)
    pooled = seeds_table(rows)
    if pooled is not None:
        print_fitted(printer, pooled, ("config", "task", "seeds", "quality", "trivial"),
                     ("random P", "routing P", "tok/s", "conv"), wide=wide, see=SEE)  # fmt: skip


def message_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """'#2, #5 skipped: attention backend ...': one line per distinct reason a cell did not
    finish, for a table too narrow for its message column."""
    by_message: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.get("status") != "ok" and r.get("message"):
            key = (str(r.get("status")), str(r.get("message")))
            by_message.setdefault(key, []).append(f"#{r.get('cell_index', '?')}")
    return [f"{', '.join(cells)} {status}: {message}"
            for (status, message), cells in by_message.items()]  # fmt: skip


def _natural_width(printer: Console, table: Table) -> int:
    from rich.measure import Measurement

    unbounded = printer.options.update_width(10**5)  # a measurement is clamped to its width
    return Measurement.get(printer, unbounded, table).maximum


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    data: RunTable | None = None,
    keep: Sequence[int] | None = None,
    caption: bool = True,
) -> Table:
    """One line per cell: what ran, its status, speed, spread, memory and MFU (columns and cells:
    hubbench.report.runtable; this adds the styles). `keep`: only these columns, by index."""
    from rich import box

    from hubbench.report.runtable import run_table

    data = data or run_table(rows)
    keep = list(range(len(data.columns))) if keep is None else list(keep)
    if keep != list(range(len(data.columns))):
        data = dataclasses.replace(
            data,
            columns=tuple(data.columns[i] for i in keep),
            rows=tuple(
                dataclasses.replace(r, cells=tuple(r.cells[i] for i in keep)) for r in data.rows
            ),
        )
    table = Table(
        title=title,
        title_justify="left",
        caption=escape(data.caption()) if caption else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in data.columns:
        if column.header == "message":
            table.add_column("message", overflow="fold", max_width=60)
            continue
        table.add_column(
            column.header,
            justify="right" if column.numeric else "left",
            style=COLUMN_STYLE.get(column.header),
            no_wrap=column.header not in PROSE,
        )
    headers = [c.header for c in data.columns]
    for row in data.rows:
        style = STATUS_STYLE.get(row.status, "red")
        cells = []
        for header, text in zip(headers, row.cells, strict=True):
            if header in ("status", "message"):
                cells.append(f"[{style}]{escape(text)}[/]")
            elif header == "attention" and row.requested_only:
                cells.append(f"[dim]{escape(text)}[/]")
            else:
                cells.append(escape(text))
        table.add_row(*cells)
    return table


def seeds_table(rows: Sequence[Mapping[str, Any]]) -> Table | None:
    """A quality run's configs pooled over seeds (hubbench.report.runtable.seed_table), or None
    when no config has two seeds."""
    from rich import box

    from hubbench.report.runtable import seed_table

    data = seed_table(rows)
    if data is None:
        return None
    table = Table(
        title="over seeds",
        title_justify="left",
        caption=escape("; ".join(data.notes)),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in data.columns:
        table.add_column(column.header, justify="right" if column.numeric else "left",
                         style=COLUMN_STYLE.get(column.header), no_wrap=column.numeric)  # fmt: skip
    for row in data.rows:
        style = "" if row.status == "ok" else STATUS_STYLE.get(row.status, "red")
        cells = [escape(t) for t in row.cells]
        if style:
            cells[2] = f"[{style}]{cells[2]}[/]"
        table.add_row(*cells)
    return table


def env_table(env: Mapping[str, Any], title: str = "environment") -> Table:
    """Key and value; a long value wraps at spaces (no borders, so a wrapped line reads on)."""
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in env.items():
        table.add_row(key, "-" if value is None else escape(str(value)))
    return table


# ----------------------------------------------------------------------------- profiles


def _bar(share: float, width: int = 20) -> str:
    return "█" * round(max(0.0, min(1.0, share)) * width)


def stage_table(summary: TraceSummary) -> Table:
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


OPS_KEEP = ("operator", "self CPU ms", "self CUDA ms", "of step")
OPS_DROP = ("input dims (heaviest)", "total CPU ms", "calls")


def ops_table(summary: TraceSummary, device: bool = False) -> Table:
    """One line per operator; a long name folds onto a second line rather than lose its end."""
    rows = summary.device_ops if device else summary.ops
    kind = "CUDA" if device else "CPU"
    table = Table(title=f"top operators by self {kind} time (per step)")
    table.add_column("operator", overflow="fold", max_width=48)
    table.add_column("calls", justify="right", no_wrap=True)
    table.add_column(f"self {kind} ms", justify="right", no_wrap=True)
    table.add_column("of step", justify="right", no_wrap=True)
    table.add_column("total CPU ms", justify="right", no_wrap=True)
    table.add_column("input dims (heaviest)", no_wrap=True, style="dim")
    for op in rows:
        own = op.self_device_s if device else op.self_s
        table.add_row(
            escape(op.name),
            f"{op.calls:g}",
            _ms(own),
            f"{own / summary.step_s:.1%}" if summary.step_s else "",
            _ms(op.total_s),
            escape(op.shape),
        )
    return table


def _ms(seconds: float) -> str:
    """Profile tables keep two decimals: their rows must visibly add up to the step."""
    return f"{seconds * 1e3:,.2f}"
