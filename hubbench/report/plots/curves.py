"""curves: learning curves of the quality mode, the held-out score (top) and the training loss
(bottom) against optimizer updates, one thin line per seed in its config's colour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubbench.report import style
from hubbench.report.plots.figure import Figured, context, legend, new_figure, title
from hubbench.report.plots.quality import (
    facet_task,
    gap_note,
    lines,
    percent,
    quality_rows,
    seq_facets,
    unmeasured,
    with_setup,
)
from hubbench.report.plots.registry import Kind, register
from hubbench.report.seeds import configs, quality_metric
from hubbench.report.series import Facet

if TYPE_CHECKING:
    import pandas as pd


def curves(facet: Facet) -> Figured:
    task = facet_task(facet)
    _, label, higher = quality_metric(task)
    fig = new_figure(height=style.AXES_HEIGHT * 2 + 1.5)
    w, h = fig.get_figwidth(), fig.get_figheight()
    panel = (h - 0.75 - 0.5 - 0.45) / 2
    # the bottom panel first: the legend and the notes go under it (footnote uses axes[0])
    bottom = fig.add_axes((0.72 / w, 0.5 / h, (w - 0.82) / w, panel / h))
    top = fig.add_axes((0.72 / w, (0.5 + panel + 0.45) / h, (w - 0.82) / w, panel / h),
                       sharex=bottom)  # fmt: skip
    gaps, seeds = [], 0
    for line in lines(quality_rows(facet.df), ()):
        gaps += unmeasured(line, line.rows, 0, "")[1]
        name = line.name
        shown = [r for r in line.ok if _floats(r.get("curve_updates"))]
        seeds = max(seeds, len(shown))
        kw = {"color": line.style.color, "linestyle": line.style.linestyle, "linewidth": 1.0,
              "alpha": 0.85}  # fmt: skip
        for k, r in enumerate(shown):
            x = _floats(r["curve_updates"])
            top.plot(x, _floats(r.get("curve_eval")), **kw)
            bottom.plot(x, _floats(r.get("curve_train_loss")), label=name if k == 0 else None,
                        **kw)  # fmt: skip
        if not shown:
            bottom.plot([], [], label=name + " (no curve)", **kw)
    top.set_ylabel(label.replace("held-out ", "held-out\n"))
    if higher:
        top.yaxis.set_major_formatter(percent())
    bottom.set_ylabel("training loss (nats)")
    bottom.set_xlabel("optimizer updates")
    title(fig, f"Learning curves: {task}", facet)
    legend(bottom)
    notes = [
        "Top: the held-out score on the eval set at each point of training; bottom: the mean "
        f"training loss since the previous point. One thin line per seed (up to {seeds}), in "
        "its config's colour.",
        *gap_note(gaps, "no curve"),
    ]
    caption = (
        f"Learning curves, {context(facet)}: the held-out "
        f"{'accuracy' if higher else 'bits per byte'} (top) and the training loss (bottom) "
        "against optimizer updates, one thin line per seed in its config's colour."
    )
    return Figured(fig, task, notes, caption)


def _floats(value: Any) -> list[float]:
    return [] if value is None else [float(v) for v in value]


def has_curves(df: pd.DataFrame) -> bool:
    return any(len(_floats(r.get("curve_updates"))) for c in configs(df) for r in c.rows)


register(Kind(
    "curves", with_setup(curves), has_curves,
    hint="curves needs quality cells with learning curves: run `hubbench run quality`",
    lacks="no learning curves",
    modes=frozenset({"quality"}),
    split=seq_facets,
))  # fmt: skip
