"""Drawing a run: every registered figure kind (hubbench.report.plots.registry) the run's rows
support, one figure per facet, as PNG, SVG and PDF, Agg only.

Every figure is built on a bare `matplotlib.figure.Figure` (no pyplot, no global state), one per
facet (see hubbench.report.series), with the facet's device, dtype, mode and batch in its title.
A cell that failed or was skipped keeps its place: an x at the foot of the axes in its series'
colour, its status beside it, and a footnote naming it. Legends sit outside the axes so they
never hide data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbench.errors import ReportError
from hubbench.report import style
from hubbench.report.load import require_ok, run_label
from hubbench.report.plots.figure import footnote
from hubbench.report.plots.registry import KINDS, Kind, kind

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")  # every format `plot` writes; text stays text in svg and pdf
DEFAULT_FORMATS = ("png", "svg")


def worth_saying(skipped: dict[str, str], df: pd.DataFrame) -> dict[str, str]:
    """The kinds left out that the run's modes could have given, with why. Kinds of other modes
    go unsaid: a timed run has no learning curves, and a training run no decode state, by
    design."""
    modes = {str(m) for m in df["mode"]} if "mode" in df.columns else set()
    return {k: why for k, why in skipped.items() if k not in KINDS or KINDS[k].could(modes)}


def not_drawn(skipped: dict[str, str], df: pd.DataFrame) -> str:
    """'heatmap (no hubs × topk grid)': worth_saying in one line, or ''."""
    said = worth_saying(skipped, df).items()
    return "; ".join(f"{k} ({KINDS[k].lacks if k in KINDS else why})" for k, why in said)


def drawable(k: Kind, df: pd.DataFrame) -> bool:
    """Whether at least one of the run's facets has what the kind needs."""
    return any(k.has(f.df) for f in k.split(df))


def supported(name: str, df: pd.DataFrame) -> str | None:
    """None if kind `name` can be drawn from df, else the reason with the suite that would give
    it."""
    k = kind(name)
    return None if drawable(k, df) else f"{k.hint} (run {run_label(df)} lacks it)"


DPI = 200


@dataclass
class Rendered:
    kind: str
    stem: str  # file name without extension: kind[-variant][-facet]
    figure: Figure
    caption: str = ""  # one or two sentences saying what the figure shows, for the report


@dataclass
class PlotOutcome:
    written: list[Path]
    skipped: dict[str, str]  # kind -> why it was not drawn


def render(
    df: pd.DataFrame, kinds: Sequence[str] | None = None
) -> tuple[list[Rendered], dict[str, str]]:
    """Figures for `kinds` (default: every kind the data supports), one per facet.

    An explicitly requested kind that the data cannot support is a ReportError naming the suite
    that would produce it; by default such kinds are skipped and returned with the reason.
    """
    import matplotlib

    chosen = [kind(k) for k in kinds or ()]
    require_ok(df, run_label(df))
    skipped: dict[str, str] = {}
    out: list[Rendered] = []
    with matplotlib.rc_context(style.RC):
        for k in chosen or KINDS.values():
            reason = supported(k.name, df)
            if reason is not None:
                if chosen:
                    raise ReportError(reason)
                skipped[k.name] = reason
                continue
            out += _render_kind(k, df)
    return out, skipped


def _render_kind(k: Kind, df: pd.DataFrame) -> list[Rendered]:
    out = []
    for facet in k.split(df):
        if not drawable(k, facet.df):
            continue  # another facet of this run has the data; this one does not
        result = k.draw(facet)
        for fig in result if isinstance(result, list) else [result]:
            footnote(fig.fig, fig.fig.axes[0], fig.notes)
            stem = "-".join(p for p in (k.name, fig.stem, facet.slug) if p)
            out.append(Rendered(k.name, stem, fig.fig, fig.caption))
    return out


# no creation date in the files: the same run gives the same bytes
_METADATA: dict[str, dict[str, None]] = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save(figure: Figure, target: Any, fmt_name: str) -> None:
    """target: a path or a binary file object."""
    import matplotlib

    with matplotlib.rc_context(style.RC):  # fonttype is read when the file is written
        figure.savefig(target, format=fmt_name, dpi=DPI, bbox_inches="tight", pad_inches=0.12,
                       metadata=_METADATA.get(fmt_name))  # fmt: skip


def plot_run(
    df: pd.DataFrame,
    out_dir: Path,
    kinds: Sequence[str] | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> PlotOutcome:
    """Render and write every figure as out_dir/<stem>.<format>."""
    for f in formats:
        if f not in FORMATS:
            raise ReportError(f"unknown image format {f!r}; valid: {', '.join(FORMATS)}")
    figures, skipped = render(df, kinds)
    from hubbench.outputs import check_folder

    check_folder(out_dir, "--out")
    written = []
    for r in figures:
        for ext in formats:
            path = out_dir / f"{r.stem}.{ext}"
            save(r.figure, path, ext)
            written.append(path)
    return PlotOutcome(written, skipped)
