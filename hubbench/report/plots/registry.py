"""The figure kinds: each module of this package that draws one registers it here, with what a
run needs for it and how to draw it; `hubbench plot --kind`, the HTML report and the line of
kinds left out read them from here (hubbench.report.plots.draw).

Adding a kind: a module beside the others that builds a `Kind` and calls `register`, and its
name in the package's import line (hubbench/report/plots/__init__.py), whose order is the order
the figures are drawn in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubbench.errors import ReportError
from hubbench.report.series import Facet, facets

if TYPE_CHECKING:
    import pandas as pd

    from hubbench.report.plots.figure import Figured


@dataclass(frozen=True)
class Kind:
    """One kind of figure: `draw` makes the figure(s) of a facet that `has` what it needs."""

    name: str
    draw: Callable[[Facet], Figured | list[Figured]]
    has: Callable[[pd.DataFrame], bool]  # whether a facet's rows hold what `draw` needs
    hint: str  # what a run needs for it, with the suite that gives it (the --kind error)
    lacks: str  # the same in a few words, for `plot`'s one line of the kinds left out
    modes: frozenset[str] | None = None  # modes whose runs could give it; None: any run
    split: Callable[[pd.DataFrame], list[Facet]] = facets  # a run's rows into facets

    def could(self, modes: set[str]) -> bool:
        """Whether a run of these modes could give this kind (else leaving it out goes unsaid)."""
        return self.modes is None or bool(self.modes & modes)


KINDS: dict[str, Kind] = {}  # in the order they are drawn


def register(kind: Kind) -> Kind:
    if kind.name in KINDS:
        raise ValueError(f"figure kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def kind(name: str) -> Kind:
    """The kind called `name`; a ReportError that lists the valid ones for any other name."""
    if name not in KINDS:
        raise ReportError(f"unknown plot kind {name!r}; valid: {', '.join(KINDS)}")
    return KINDS[name]
