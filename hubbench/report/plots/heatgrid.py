"""The panels of a heatmap (hubbench.report.plots.heatmap): a hubs M x council budget k grid of
cells per sequence length, one colour scale and colour bar per metric; each cell shows its
value, and a mark (LEAK, seeds converged, best / ≈ best) or the hatching of a cell that did not
run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hubbench.report import format as fmt
from hubbench.report import style
from hubbench.report.format import fmt_seq

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LEAK_FACE, LEAK_EDGE, LEAK_TEXT = "#fbe4e1", "#d98b82", "#8e1b10"
LEAK_BOX = {"boxstyle": "round,pad=0.12", "facecolor": "white", "edgecolor": "none", "alpha": 0.9}


@dataclass
class Metric:
    column: str
    label: str  # panel title
    higher: bool  # higher is better
    bar: str = ""  # colour bar label (default: label)
    text: Callable[[float], str] = fmt.si


@dataclass
class Cell:
    """The rows of one (M, k, n) point of the grid: its seeds."""

    ok: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    quality: bool = False

    def mean(self, column: str) -> float | None:
        values = [float(r[column]) for r in self.ok if r.get(column) is not None]
        return statistics.fmean(values) if values else None

    @property
    def leak(self) -> bool:
        """A quality cell whose trained model did not pass the causality check."""
        return self.quality and any(r.get("causal_check") != "pass" for r in self.ok)

    @property
    def verdicts(self) -> tuple[int, int]:
        """(seeds converged, ok seeds with a verdict)."""
        seen = [r["converged"] for r in self.ok if r.get("converged") is not None]
        return sum(bool(c) for c in seen), len(seen)


Key = tuple[int, int, int]  # (M, k, n)


def draw_panels(
    fig: Any, axes: list[Axes], cells: dict[Key, Cell], seqs: list[int],
    hubs: list[int], topk: list[int], metric: Metric, counts: bool,
    ties: dict[Key, Key] | None = None,
) -> None:  # fmt: skip
    """One row (or rows) of panels for one metric, sharing one colour scale and one colour bar.
    `counts`: each cell says how many of its seeds converged; `ties`: the cells within noise of
    their n's best (_ties), drawn in its colour."""
    ties = ties or {}
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    cmap = colormaps["viridis" if metric.column == "tokens_per_s" else "cividis"]
    cmap = cmap if metric.higher else cmap.reversed()  # brighter is better either way
    means = {key: c.mean(metric.column) for key, c in cells.items()}
    scale = [v for key, v in means.items() if v is not None and not cells[key].leak]
    norm = Normalize(min(scale), max(scale)) if scale else Normalize(0.0, 1.0)
    image = None
    for ax, seq in zip(axes, seqs, strict=True):
        mat = np.full((len(hubs), len(topk)), np.nan)  # (M, k): the value each colour shows
        own: dict[tuple[int, int], float] = {}  # (i, j) -> the value its text reads
        marks: dict[tuple[int, int], tuple[str, str]] = {}  # (i, j) -> (kind, text)
        for (m, k, n), c in cells.items():
            if n == seq:
                at = (hubs.index(m), topk.index(k))
                _cell(at, (m, k, n), c, means, metric, counts, ties, mat, own, marks)
        image = ax.imshow(mat, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        _annotate(ax, mat, marks, lambda v: cmap(norm(v)), metric.text, own)
        _panel_axes(ax, hubs, topk, f"{metric.label} · n = {fmt_seq(seq)}")
    _colour_bar(fig, axes, image, metric)


def _cell(
    at: tuple[int, int], key: Key, c: Cell, means: dict[Key, float | None], metric: Metric,
    counts: bool, ties: dict[Key, Key], mat: Any, own: dict[tuple[int, int], float],
    marks: dict[tuple[int, int], tuple[str, str]],
) -> None:  # fmt: skip
    """One cell of a panel: its colour in `mat` (the best's where it ties), the value its text
    reads in `own`, and its mark (leak, seeds converged, best / ≈ best, or why it is missing)."""
    v = means[key]
    if c.leak:
        marks[at] = ("leak", "" if v is None else f"({metric.text(v)})")
    elif v is not None:
        best = ties.get(key)
        mat[at] = v if best is None else means[best]
        own[at] = v
        conv, seen = c.verdicts
        if counts and seen:
            marks[at] = ("ok", f"{conv}/{seen} conv.")
        elif counts and len(c.ok) > 1:
            marks[at] = ("ok", f"{len(c.ok)} seeds")
        elif best is not None:
            marks[at] = ("ok", "best" if best == key else "≈ best")
    elif c.ok:
        marks[at] = ("missing", "n/a")
    else:
        statuses = dict.fromkeys(str(r["status"]) for r in c.failed)
        marks[at] = ("missing", "/".join(statuses))


def _panel_axes(ax: Axes, hubs: list[int], topk: list[int], label: str) -> None:
    """k across, M up, white lines between cells (cells of one colour, ≈ best, stay apart)."""
    ax.set_xticks(range(len(topk)), [str(k) for k in topk])
    ax.set_yticks(range(len(hubs)), [str(m) for m in hubs])
    ax.set_xlabel("council budget k")
    ax.set_ylabel("hubs M")
    ax.set_title(label, fontsize=9.5)
    ax.grid(False)
    for edge in range(1, len(topk)):
        ax.axvline(edge - 0.5, color="white", linewidth=1.0)
    for edge in range(1, len(hubs)):
        ax.axhline(edge - 0.5, color="white", linewidth=1.0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)


def _colour_bar(fig: Any, axes: list[Axes], image: Any, metric: Metric) -> None:
    """One colour bar beside a metric's panels, spanning them."""
    boxes = [ax.get_position() for ax in axes]
    x1 = max(b.x1 for b in boxes)
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    cax = fig.add_axes((x1 + 0.15 / fig.get_figwidth(), y0, 0.14 / fig.get_figwidth(), y1 - y0))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(metric.bar or metric.label)
    if metric.column == "tokens_per_s":
        bar.ax.yaxis.set_major_formatter(style.si_formatter())
    elif metric.text is fmt.fraction:
        bar.ax.yaxis.set_major_formatter(lambda v, _: fmt.fraction(v).replace(".0%", "%"))


def _annotate(ax: Axes, mat: Any, marks: dict[tuple[int, int], tuple[str, str]],
              colour_of: Any, text_of: Callable[[float], str],
              own: dict[tuple[int, int], float]) -> None:  # fmt: skip
    """Each cell's value (`own`, in a colour `mat` gives) and its mark, or its hatching."""
    from matplotlib.patches import Rectangle

    for (i, j), v in _values(mat):
        kind, extra = marks.get((i, j), ("", ""))
        if v == v:  # not NaN
            r, gr, b, _ = colour_of(v)
            dark = 0.299 * r + 0.587 * gr + 0.114 * b < 0.5  # perceived luminance
            colour = "white" if dark else "black"
            value = text_of(own.get((i, j), v))
            if extra:
                ax.text(j, i + 0.1, value, ha="center", va="bottom", fontsize=8, color=colour)
                ax.text(j, i - 0.05, extra, ha="center", va="top", fontsize=6.5, color=colour)
            else:
                ax.text(j, i, value, ha="center", va="center", fontsize=8, color=colour)
        elif kind == "leak":
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=LEAK_FACE,
                                   edgecolor=LEAK_EDGE, hatch="xx", linewidth=0))  # fmt: skip
            ax.text(j, i + (0.05 if extra else 0), "LEAK", ha="center",
                    va="bottom" if extra else "center", fontsize=8, color=LEAK_TEXT,
                    fontweight="bold", gid="leak", bbox=LEAK_BOX)  # fmt: skip
            if extra:
                ax.text(j, i - 0.05, extra, ha="center", va="top", fontsize=6.5, color=LEAK_TEXT,
                        bbox=LEAK_BOX)  # fmt: skip
        else:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#eeeeee",
                                   edgecolor="#999999", hatch="///", linewidth=0))  # fmt: skip
            ax.text(j, i, extra or "n/a", ha="center", va="center", fontsize=7.5,
                    color="#333333", fontweight="bold")  # fmt: skip


def _values(mat: Any) -> list[tuple[tuple[int, int], float]]:
    return [((i, j), float(mat[i, j])) for i in range(mat.shape[0]) for j in range(mat.shape[1])]
