"""The causality report card: every target's result, its verdict, the exit code, the files.

A row is one model (hubbench.verify.targets) checked by every probe (hubbench.verify.probes).
Its verdict: `pass` and `control caught` are as expected; `LEAKS THE FUTURE` (a causal model
leaked) and `CONTROL NOT CAUGHT` (a leaky control passed: the checks are blind to its leak) make
the command exit 1; `UNUSABLE` (non-finite outputs) and `ERROR` (a build error, a plug-in that
raised, crashed or hung) make it exit 2, whatever else happened, with one line saying why.

The card is written as Markdown and as JSON beside it (`causal-<UTC stamp>.md` / `.json` under
<results>/verify/ by default), each whole or not at all. `hubbench report` shows the newest
JSON card in its page (hubbench.report.html reads the JSON: the report may not import verify),
so the JSON keys are a contract: CARD_KIND and CARD_VERSION say which.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hubbench.verify.probes import TargetResult
from hubbench.verify.targets import SMALL, CardTarget

CARD_KIND = "hubbench causality card"
CARD_VERSION = 1
CARD_PREFIX = "causal-"
OK_VERDICTS = ("pass", "control caught")


@dataclass(frozen=True)
class CardSettings:
    """How every target is probed (the CLI's options), recorded in the card."""

    n_main: int = 40
    seeds: tuple[int, ...] = (0, 1, 2)
    batch: int = 2
    draws: int = 1
    length_seed: int = 0
    timeout: float = 120.0


@dataclass
class Card:
    rows: list[TargetResult]
    settings: CardSettings
    utc: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    commit: str | None = None
    dirty: bool | None = None
    versions: dict[str, str] = field(default_factory=dict)
    command: str = ""

    def exit_code(self) -> int:
        if any(r.status != "ok" for r in self.rows):
            return 2
        return 0 if all(r.as_expected for r in self.rows) else 1

    def problems(self) -> str:
        """One line: what made the exit code non-zero ('' when it is 0)."""
        parts = []
        broken = [r for r in self.rows if r.status == "error"]
        plugins = [r.message for r in broken if r.plugin]
        if plugins:
            parts.append(f"plug-in check(s) could not run: {'; '.join(plugins)}")
        others = [r.message for r in broken if not r.plugin]
        if others:
            parts.append(f"check(s) could not run: {'; '.join(others)}")
        unusable = [f"{r.label}: {r.message}" for r in self.rows if r.status == "unusable"]
        if unusable:
            parts.append(f"unusable output: {'; '.join(unusable)}")
        leaks = [_leak_text(r) for r in self.rows if r.verdict == "LEAKS THE FUTURE"]
        if leaks:
            parts.append(f"causal variant(s) leak the future: {'; '.join(leaks)}")
        blind = [r.label for r in self.rows if r.verdict == "CONTROL NOT CAUGHT"]
        if blind:
            parts.append(
                f"leaky control(s) not caught, the checks are blind to them: {', '.join(blind)}"
            )
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": CARD_KIND,
            "version": CARD_VERSION,
            "utc": self.utc,
            "commit": self.commit,
            "dirty": self.dirty,
            "versions": self.versions,
            "command": self.command,
            "settings": asdict(self.settings),
            "exit_code": self.exit_code(),
            "problems": self.problems(),
            "rows": [r.to_json() for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Card:
        s = dict(data["settings"])
        s["seeds"] = tuple(s["seeds"])
        return cls(
            [TargetResult.from_json(r) for r in data["rows"]],
            CardSettings(**s),
            data["utc"],
            data.get("commit"),
            data.get("dirty"),
            data.get("versions", {}),
            data.get("command", ""),
        )

    def markdown(self) -> str:
        return to_markdown(self)


def _leak_text(r: TargetResult) -> str:
    bad = [c for c in r.checks if not c.passed]
    return f"{r.label} ({', '.join(f'{c.name} {c.pair()} in {c.probe}' for c in bad)})"


def shown_fields(r: TargetResult) -> str:
    """The row's own fields (SMALL, shared by every row, is said once above the table)."""
    return " ".join(f"{k}={v}" for k, v in r.fields.items() if k not in SMALL)


def leak_number(value: float) -> str:
    return "0" if value == 0 else f"{value:.2g}"


def check_cell(r: TargetResult, name: str) -> str:
    """'pass', 'FAIL' or '-' (not run: the target stopped before it, or it is unusable)."""
    c = next((c for c in r.checks if c.name == name), None)
    if c is None:
        return "-"
    return "pass" if c.passed else "FAIL"


def row_cells(r: TargetResult) -> dict[str, str]:
    """A row as text per column: the terminal, Markdown and the HTML page show these."""
    from hubbench.verify.causality import CHECKS

    worst = r.worst()
    return {
        "variant": r.label,
        "fields": shown_fields(r) or "-",
        "expected": r.expected,
        **{c: check_cell(r, c) for c in CHECKS},
        "largest leak": leak_number(r.largest_leak()) if r.status == "ok" else "-",
        "first leak (t_out <- t_in)": worst.pair() if worst else "-",
        "found by": (f"{worst.name}, {worst.probe}" if worst else "-"),
        "verdict": r.verdict,
    }


def header_line(card: Card) -> str:
    s = card.settings
    shape = ", ".join(f"{k} {v}" for k, v in SMALL.items())
    return (
        f"float64, {shape}; n {s.n_main} ({len(s.seeds)} seeds, batch {s.batch}), 64, 2C+1 "
        f"and 3C+3 for each block size C, {s.draws} drawn (length seed {s.length_seed}); eval "
        "and train mode (dropout off); random, repeated and constant inputs. 1st leak: "
        "t_out <- t_in, the earliest output that moved and the input that moved it"
    )


def to_markdown(card: Card) -> str:
    code = card.exit_code()
    commit = (card.commit or "unknown")[:12] + (" (dirty)" if card.dirty else "")
    lines = [
        "# Causality report card",
        "",
        f"{card.utc} · commit {commit} · "
        + " · ".join(f"{k} {v}" for k, v in card.versions.items()),
        "",
        f"`{card.command}`: exit {code}" + (f" ({card.problems()})" if code else " (as expected)"),
        "",
        header_line(card) + ".",
        "",
    ]
    cells = [row_cells(r) for r in card.rows]
    head = list(cells[0]) if cells else list(row_cells(TargetResult("", "", {}, "causal")))
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for row in cells:
        lines.append("| " + " | ".join(_md(row[h]) for h in head) + " |")
    lines += ["", "Lengths and notes per row:", ""]
    for r in card.rows:
        extra = f" ({r.message})" if r.message else ""
        notes = "".join(f"; {n}" for n in r.notes)
        lines.append(
            f"- {_md(r.label)}: n {', '.join(map(str, r.lengths)) or '-'}, "
            f"{len(r.probes)} probes, {r.seconds:.1f} s{_md(extra)}{_md(notes)}"
        )
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def default_stem(directory: Path, utc: str) -> Path:
    """<directory>/causal-<stamp>: a UTC stamp sorts by time, so the newest is the last name."""
    stamp = utc.replace("-", "").replace(":", "")
    return directory / f"{CARD_PREFIX}{stamp}"


def write_card(card: Card, markdown: Path) -> tuple[Path, Path]:
    """The Markdown file and the JSON beside it (same stem), each written whole."""
    from hubbench.outputs import write_text

    target = markdown.with_suffix(".json")
    write_text(markdown, card.markdown(), "--markdown")
    write_text(target, json.dumps(card.to_json(), indent=1) + "\n", "--markdown")
    return markdown, target


def result_for(target: CardTarget, expected: str = "causal") -> TargetResult:
    """An empty row for `target`, before anything ran."""
    return TargetResult(
        target.label,
        target.variant,
        dict(target.fields),
        "leaky" if target.control else expected,
        plugin=target.mixer is not None,
        notes=list(target.notes),
    )
