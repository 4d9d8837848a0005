"""Heatmaps of a hub variant over hubs M x council budget k, one panel per sequence length.

One row of panels per metric (throughput; more metrics slot into `metrics`); brighter is better
in every panel (the colour map is reversed for lower-is-better metrics). Cells that did not run
are hatched and carry their status.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from hubbench.report import format as fmt
from hubbench.report import style
from hubbench.report.figure import Figured, context, new_figure, title
from hubbench.report.format import fmt_seq
from hubbench.report.load import cell_keys, norm_value
from hubbench.report.series import SYMBOLS, Facet, series_fields
from hubbench.variants import is_router

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def heat_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per hub variant (and other hub settings): the rows of a hubs x topk grid, if >= 2 cells."""
    hub = df[[is_router(str(v)) for v in df["variant"]]]
    if len(hub) == 0:
        return []
    others = [f for f in series_fields(hub) if f not in ("hubs", "topk")]
    out = []
    for _, g in hub.groupby(cell_keys(hub, others), sort=False):
        combos = {(norm_value(a), norm_value(b)) for a, b in zip(g["hubs"], g["topk"], strict=True)}
        combos.discard((None, None))
        if len(combos) >= 2 and len(g[g["status"] == "ok"]):
            out.append((str(g["variant"].iloc[0]), g))
    return out


def heatmaps(facet: Facet) -> list[Figured]:
    return [_heatmap(facet, variant, g) for variant, g in heat_groups(facet.df)]


def _heatmap(facet: Facet, variant: str, g: pd.DataFrame) -> Figured:
    hubs = sorted({int(norm_value(v)) for v in g["hubs"] if norm_value(v) is not None})
    topk = sorted({int(norm_value(v)) for v in g["topk"] if norm_value(v) is not None})
    seqs = sorted({int(v) for v in g["seq"]})
    metrics = [("tokens_per_s", "throughput (tokens/s)", True)]
    cols = min(len(seqs), 3)
    rows = -(-len(seqs) // cols) * len(metrics)
    panel_w, panel_h = 0.62 * len(topk) + 1.4, 0.42 * len(hubs) + 1.25
    fig = new_figure(cols * panel_w + 2.0, rows * panel_h + 1.2)
    grid = fig.add_gridspec(
        rows, cols, hspace=0.6, wspace=0.45, left=0.9 / fig.get_figwidth(),
        right=1 - 1.5 / fig.get_figwidth(), top=1 - 0.95 / fig.get_figheight(),
        bottom=0.75 / fig.get_figheight(),
    )  # fmt: skip
    for mi, metric in enumerate(metrics):
        axes = [
            fig.add_subplot(grid[mi * rows // len(metrics) + k // cols, k % cols])
            for k in range(len(seqs))
        ]
        _metric_panels(fig, axes, g, seqs, hubs, topk, metric)
    others = [
        f"{SYMBOLS.get(f, f)}={norm_value(g[f].iloc[0])}"
        for f in ("neighbours", "chunk")
        if f in g.columns and norm_value(g[f].iloc[0]) is not None
    ]
    what = f"{variant} over hubs M × topk k" + (f" ({', '.join(others)})" if others else "")
    title(fig, what, facet)
    text = "Brighter is better in every panel."
    missing = g[g["status"] != "ok"]
    if len(missing):
        text += " Hatched cells did not run: " + "; ".join(
            f"M={norm_value(r['hubs'])} k={norm_value(r['topk'])} n={fmt_seq(int(r['seq']))}: "
            f"{r['status']}"
            for _, r in missing.iterrows()
        )
        text += "."
    fig.text(0.02, 0.01, textwrap.fill(text, 130), fontsize=7.5, color="#333333")
    panels = (
        f"one panel per n ({', '.join(fmt_seq(n) for n in seqs)})"
        if len(seqs) > 1
        else (f"at n = {fmt_seq(seqs[0])}")
    )
    caption = (
        f"Throughput (median tokens/s) of {variant} over hubs M × council budget k, {panels}, "
        f"{context(facet)}; one colour scale, brighter is better"
        + ("; hatched cells did not run." if len(missing) else ".")
    )
    return Figured(fig, variant, [], caption)


def _metric_panels(
    fig: Any, axes: list[Axes], g: pd.DataFrame, seqs: list[int], hubs: list[int],
    topk: list[int], metric: tuple[str, str, bool],
) -> None:  # fmt: skip
    """One row (or rows) of panels for one metric, sharing one colour scale and one colour bar."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    column, label, higher = metric
    cmap = colormaps["viridis" if column == "tokens_per_s" else "cividis"]
    cmap = cmap if higher else cmap.reversed()  # brighter is better either way
    values = g.loc[g["status"] == "ok", column].astype(float)
    norm = Normalize(float(values.min()), float(values.max()))
    image = None
    for ax, seq in zip(axes, seqs, strict=True):
        mat = np.full((len(hubs), len(topk)), np.nan)  # (M, k)
        status: dict[tuple[int, int], str] = {}
        for _, r in g[g["seq"] == seq].iterrows():
            i, j = hubs.index(int(r["hubs"])), topk.index(int(r["topk"]))
            if r["status"] == "ok":
                mat[i, j] = float(r[column])
            else:
                status[(i, j)] = str(r["status"])
        image = ax.imshow(mat, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        _annotate(ax, mat, status, lambda v: cmap(norm(v)), column)
        ax.set_xticks(range(len(topk)), [str(k) for k in topk])
        ax.set_yticks(range(len(hubs)), [str(m) for m in hubs])
        ax.set_xlabel("council budget k")
        ax.set_ylabel("hubs M")
        ax.set_title(f"{label} · n = {fmt_seq(seq)}", fontsize=9.5)
        ax.grid(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
    boxes = [ax.get_position() for ax in axes]
    x1 = max(b.x1 for b in boxes)
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    cax = fig.add_axes((x1 + 0.15 / fig.get_figwidth(), y0, 0.14 / fig.get_figwidth(), y1 - y0))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(label)
    if column == "tokens_per_s":
        bar.ax.yaxis.set_major_formatter(style.si_formatter())


def _annotate(ax: Axes, mat: Any, status: dict, colour_of: Any, column: str) -> None:
    from matplotlib.patches import Rectangle

    for (i, j), v in _cells(mat):
        if v == v:  # not NaN
            r, gr, b, _ = colour_of(v)
            dark = 0.299 * r + 0.587 * gr + 0.114 * b < 0.5  # perceived luminance
            text = fmt.si(v) if column == "tokens_per_s" else f"{v:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
        else:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#eeeeee",
                                   edgecolor="#999999", hatch="///", linewidth=0))  # fmt: skip
            ax.text(j, i, status.get((i, j), "n/a"), ha="center", va="center", fontsize=7.5,
                    color="#333333", fontweight="bold")  # fmt: skip


def _cells(mat: Any) -> list[tuple[tuple[int, int], float]]:
    return [((i, j), float(mat[i, j])) for i in range(mat.shape[0]) for j in range(mat.shape[1])]
