"""The run table's columns and cells as plain text: one choice for the Rich table that `run` and
`results` print and the Markdown of `results --format md`.

A column appears when the rows need it: a detail field only when it tells rows apart, `state`
only when a row has one, `message` only when a cell failed. Styles (colours, dim) are the
renderer's; what is shown is decided here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubbench import schema
from hubbench.plan.variants import display_name
from hubbench.report import format as fmt
from hubbench.report.load import norm_value

# besides variant, attention and n (their own columns): cell fields that may tell rows apart
DETAIL_FIELDS = tuple(f for f in schema.cell_fields() if f not in ("variant", "attention", "seq"))
SAME_MESSAGE = "(as above)"


@dataclass(frozen=True)
class TableColumn:
    header: str
    numeric: bool = False  # right-aligned


@dataclass(frozen=True)
class TableRow:
    cells: tuple[str, ...]  # one per column, plain text
    status: str
    requested_only: bool = False  # the attention cell names the requested backend: none ran


@dataclass(frozen=True)
class RunTable:
    columns: tuple[TableColumn, ...]
    rows: tuple[TableRow, ...]
    notes: tuple[str, ...]  # what the caption adds for these rows (decode, state)
    # what must be read before the numbers, a sentence each: MQAR points whose recipe failed
    warnings: tuple[str, ...] = ()

    def caption(self, requested: str = "dim", shown: Collection[str] | None = None) -> str:
        """The warnings, one sentence a line, then the key to the columns; `requested`: how the
        renderer marks a requested backend; `shown`: the headers printed (default: every
        column), so that a column left out of a narrow table is not explained under it."""
        shown = {c.header for c in self.columns} if shown is None else set(shown)
        keys = (
            ("attention", f"attention: the kernel that ran ({requested}: requested, did not run)"),
            ("ms", "ms: median step"),
            ("mem", "mem: peak over the timed steps"),
            ("SoL", "SoL: the speed of light's step time over the measured one"),
        )
        key = "; ".join((*(text for header, text in keys if header in shown), *self.notes))
        return "\n".join((*(f"{w}." for w in self.warnings), *([key] if key else [])))


def run_table(rows: Sequence[Mapping[str, Any]]) -> RunTable:
    """One line per cell: what ran, its status, speed, spread, memory, MFU and the fraction of
    the speed of light reached."""
    rows = [{k: norm_value(v) for k, v in r.items()} for r in rows]
    details = schema.varying(rows, DETAIL_FIELDS, nulls=False)
    for name in ("nproc", "nnodes"):  # tok/s counts every process: say how many
        if name not in details and any((r.get(name) or 1) > 1 for r in rows):
            details.append(name)
    stateful = any(r.get("state_bytes") is not None for r in rows)
    failed = any(r.get("status") != "ok" for r in rows)
    quality = any(r.get("mode") == "quality" for r in rows)
    speed = not all(r.get("mode") == "quality" for r in rows)  # spread, MFU, SoL columns
    columns = [TableColumn("#", True), TableColumn("variant"), TableColumn("attention"),
               TableColumn("n", True), *(TableColumn(f, True) for f in details),
               TableColumn("status"), TableColumn("tok/s", True), TableColumn("ms", True),
               *([TableColumn("p10-p90", True)] if speed else []), TableColumn("mem", True),
               *([TableColumn("state", True)] if stateful else []),
               *([TableColumn("MFU", True), TableColumn("SoL", True)] if speed else []),
               *(TableColumn(h, True) for h in QUALITY_HEADERS if quality),
               *([TableColumn("message")] if failed else [])]  # fmt: skip
    out = []
    previous = None
    for r in rows:
        status = str(r.get("status") or "?")
        ok = status == "ok"
        cells = _cells(r, details, stateful, speed, quality)
        if failed:
            message = None if ok else str(r.get("message") or "")
            cells.append(SAME_MESSAGE if message and message == previous else message or "")
            previous = message or previous
        ran = r.get("backend_attention")
        out.append(TableRow(tuple(cells), status, not ran and bool(r.get("attention"))))
    return RunTable(tuple(columns), tuple(out), _notes(rows, stateful), _warnings(rows))


def _warnings(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """One line per MQAR point where the reference did not solve (hubbench.report.seeds)."""
    if not any(r.get("mode") == "quality" for r in rows):
        return ()
    from hubbench.report.seeds import recipe_notices

    return tuple(recipe_notices(rows))


def _cells(
    r: Mapping[str, Any], details: list[str], stateful: bool, speed: bool, quality: bool
) -> list[str]:
    """A row's table cells up to its message: what ran, its status and its numbers (the
    spread, MFU and SoL where the run has timed modes; state and quality where it has them)."""
    attention = str(r.get("backend_attention") or r.get("attention") or "-")
    status = str(r.get("status") or "?")
    ok = status == "ok"
    spread = (
        f"{fmt.milliseconds(r.get('time_p10_s'))}-{fmt.milliseconds(r.get('time_p90_s'))}"
        if ok and r.get("time_p10_s") is not None
        else "-"
    )
    cells = [
        str(r.get("cell_index", "")),
        display_name(str(r.get("variant")), r.get("mixer")),  # a plug-in by its class
        attention,
        str(r.get("seq")),
        *["-" if r.get(f) is None else str(r.get(f)) for f in details],
        status,
        fmt.si(r.get("tokens_per_s")) if ok else "-",
        fmt.milliseconds(r.get("time_median_s")) if ok else "-",
        spread,
        fmt.binary_bytes(r.get("peak_mem_bytes")) if ok else "-",
        *([fmt.binary_bytes(r.get("state_bytes")) if ok else "-"] if stateful else []),
    ]
    if not speed:
        del cells[-2 - stateful]  # the spread
    else:
        cells += [
            fmt.efficiency(r.get("mfu")),
            fmt.efficiency(r.get("speed_of_light_fraction")) if ok else "-",
        ]
    if quality:
        cells += quality_cells(r) if ok else ["-"] * len(QUALITY_HEADERS)
    return cells


QUALITY_HEADERS = ("quality", "trivial", "routing P/R", "random P/R", "conv", "causal")


def quality_cells(r: Mapping[str, Any]) -> list[str]:
    """A quality row's score (mqar accuracy, bytes bits per byte) beside the trivial model's,
    the router's precision / recall beside a random selection's, converged, the causal check."""
    if r.get("mode") != "quality":
        return ["-"] * len(QUALITY_HEADERS)
    if r.get("task") == "bytes":
        score, base = fmt.bits(r.get("bits_per_byte")), fmt.bits(r.get("baseline_quality"))
    else:
        score, base = fmt.fraction(r.get("eval_accuracy")), fmt.fraction(r.get("baseline_quality"))

    def pair(p: Any, q: Any) -> str:
        return "-" if p is None else f"{fmt.fraction(p)}/{fmt.fraction(q)}"

    causal = str(r.get("causal_check") or "-")
    return [
        score,
        base,
        pair(r.get("routing_precision"), r.get("routing_recall")),
        pair(r.get("routing_precision_random"), r.get("routing_recall_random")),
        {True: "yes", False: "no"}.get(r.get("converged"), "-"),  # type: ignore[arg-type]
        "LEAKS" if causal.startswith("fail") else causal,
    ]


def seed_table(rows: Sequence[Mapping[str, Any]]) -> RunTable | None:
    """The quality rows pooled over seeds, one line per config (rows that differ only in
    `seed`): the score's mean and its 95% t-interval (min-max from two seeds) beside the trivial
    model's mean (MQAR: the recall-free ceiling), the seeds that
    converged, the router's mean precision beside a random selection's, the mean training tok/s
    and the causal checks. None unless some config has two or more seeds."""
    from hubbench.report.seeds import point_of, pool_seeds, quality_metric, recipe_verdicts
    from hubbench.stats import mean_interval

    rows = [{k: norm_value(v) for k, v in r.items()} for r in rows]
    # configs within each task; the figure fields (kv_pairs, vocab, ...) that vary name them too
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("mode") == "quality":
            by_task.setdefault(str(r.get("task") or "mqar"), []).append(r)
    figure = [f for f in schema.fields_with_role("figure") if f != "task"]
    pooled = [c for group in by_task.values() for c in pool_seeds(group, figure)]
    if not any(len(c.rows) + len(c.failed) > 1 for c in pooled):
        return None
    verdicts = {v.point: v for v in recipe_verdicts(rows)}
    recipe = any(not v.holds for v in verdicts.values())  # the column only where one failed
    columns = (TableColumn("config"), TableColumn("task"), TableColumn("seeds", True),
               TableColumn("quality", True), TableColumn("trivial", True),
               *([TableColumn("recipe", True)] if recipe else []),
               TableColumn("conv", True), TableColumn("routing P", True),
               TableColumn("random P", True), TableColumn("tok/s", True),
               TableColumn("causal"))  # fmt: skip
    out = []
    for c in pooled:
        first = (c.rows or c.failed)[0]
        task = str(first.get("task") or "mqar")
        verdict = verdicts.get(point_of(first))
        column, _, _ = quality_metric(task)
        show = fmt.bits if task == "bytes" else fmt.fraction
        seeds = len(c.rows) + len(c.failed)
        converged = [r.get("converged") for r in c.rows if r.get("converged") is not None]
        cells = (
            c.label,
            task,
            str(seeds) if not c.failed else f"{len(c.rows)} ok of {seeds}",
            _pooled(show, [r.get(column) for r in c.rows], mean_interval),
            _mean(show, [r.get("baseline_quality") for r in c.rows]),
            *([_recipe_cell(verdict)] if recipe else []),
            f"{sum(map(bool, converged))}/{seeds}" if converged else "-",
            _mean(fmt.fraction, [r.get("routing_precision") for r in c.rows]),
            _mean(fmt.fraction, [r.get("routing_precision_random") for r in c.rows]),
            _mean(fmt.si, [r.get("tokens_per_s") for r in c.rows]),
            _causal_verdict([str(r.get("causal_check") or "-") for r in c.rows]),
        )
        out.append(TableRow(cells, "ok" if c.rows and not c.failed else "error"))
    notes = (
        "one line per config, its seeds pooled; quality: the mean over the ok seeds ± the "
        "half-width of a 95% t-interval (3+ seeds) or [min, max] (2 seeds); trivial: the "
        "same mean for a model that learned nothing the task rewards (MQAR: the recall-free "
        "ceiling, the best guesser that binds no key to its value; bytes: the unigram model)",
        "conv: seeds that converged of all the config's seeds; routing P, tok/s: means",
        *([RECIPE_NOTE] if recipe else []),
    )
    failures = tuple(v.notice() for v in verdicts.values() if not v.holds)
    return RunTable(columns, tuple(out), notes, failures)


RECIPE_NOTE = (
    "recipe: whether the attention reference solved the config's MQAR point in two thirds of "
    "its seeds; where it failed, the comparisons at that point are not results"
)


def _recipe_cell(verdict: Any) -> str:
    """'failed 1/3' or 'holds 3/3' (reference seeds solved), 'no reference' where it did not
    run; '-' off MQAR."""
    if verdict is None:
        return "-"
    if not verdict.seeds:
        return "no reference"
    return f"{'holds' if verdict.holds else 'failed'} {verdict.solved}/{verdict.seeds}"


def _pooled(show: Any, values: Sequence[Any], interval: Any) -> str:
    got = [float(v) for v in values if v is not None]
    if not got:
        return "-"
    if len(got) == 1:
        return show(got[0])
    mean, low, high, how = interval(got)
    if how == "min-max":
        return f"{show(mean)} [{show(low)}, {show(high)}]"
    return f"{show(mean)} ± {show(high - mean)}"


def _mean(show: Any, values: Sequence[Any]) -> str:
    got = [float(v) for v in values if v is not None]
    return show(sum(got) / len(got)) if got else "-"


def _causal_verdict(checks: Sequence[str]) -> str:
    """'pass' when every seed passed; else the seeds that did not, by verdict."""
    if not checks:
        return "-"
    bad = [c for c in checks if c != "pass"]
    if not bad:
        return "pass"
    leaks = sum(c.startswith("fail") for c in bad)
    other = len(bad) - leaks
    parts = ([f"LEAKS {leaks}/{len(checks)}"] if leaks else []) + (
        [f"{bad[0] if len(set(bad)) == 1 else 'other'} {other}/{len(checks)}"] if other else []
    )
    return ", ".join(parts)


def _notes(rows: Sequence[Mapping[str, Any]], stateful: bool) -> tuple[str, ...]:
    notes = []
    if any(r.get("mode") == "quality" for r in rows):
        notes.append(
            "quality rows: tok/s and ms per training update; quality: held-out accuracy (mqar) "
            "or bits per byte (bytes) beside the trivial model's; routing P/R: the router's "
            "precision/recall beside a random selection's (docs/quality.md)"
        )
    if any(r.get("mode") == "decode" for r in rows):
        notes.append("decode rows: tok/s and ms per generated token")
    if stateful:
        notes.append("state: the state or KV cache per sequence after the prompt")
    over = fmt.peak_note(rows)
    if over:
        notes.append(over)
    sides = side_commits(rows)
    if sides:
        said = ", ".join(f"{side} {str(commit)[:12]}" for side, commit in sides.items())
        notes.append(f"side: a same-run A/B ({said}); `hubbench gate --ab` judges it")
    return tuple(notes)


def side_commits(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A same-run A/B's sides and their commits (candidate first); empty for other runs."""
    found = {norm_value(r.get("side")): norm_value(r.get("side_commit")) for r in rows}
    return {s: found[s] for s in ("candidate", "baseline") if s in found}
