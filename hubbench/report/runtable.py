"""The run table's columns and cells as plain text: one choice for the Rich table that `run` and
`results` print and the Markdown of `results --format md`.

A column appears when the rows need it: a detail field only when it tells rows apart, `state`
only when a row has one, `message` only when a cell failed. Styles (colours, dim) are the
renderer's; what is shown is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubbench import schema
from hubbench.report import format as fmt
from hubbench.report.load import norm_value
from hubbench.variants import display_name

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

    def caption(self, requested: str = "dim") -> str:
        """The key to the columns; `requested`: how the renderer marks a requested backend."""
        sol = any(c.header == "SoL" for c in self.columns)
        return "; ".join((
            f"attention: the kernel that ran ({requested}: requested, did not run)",
            "ms: median step", "mem: peak over the timed steps",
            *(["SoL: the speed of light's step time over the measured one"] if sol else []),
            *self.notes,
        ))  # fmt: skip


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
        ran = r.get("backend_attention")
        attention = str(ran or r.get("attention") or "-")
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
                fmt.fraction(r.get("mfu")),
                fmt.fraction(r.get("speed_of_light_fraction")) if ok else "-",
            ]
        if quality:
            cells += quality_cells(r) if ok else ["-"] * len(QUALITY_HEADERS)
        if failed:
            message = None if ok else str(r.get("message") or "")
            cells.append(SAME_MESSAGE if message and message == previous else message or "")
            previous = message or previous
        out.append(TableRow(tuple(cells), status, not ran and bool(r.get("attention"))))
    return RunTable(tuple(columns), tuple(out), _notes(rows, stateful))


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
    return tuple(notes)
