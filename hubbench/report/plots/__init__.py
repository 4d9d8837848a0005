"""The figures: one module per figure kind (or family of kinds), each registering itself with
hubbench.report.plots.registry; `render` draws every kind a run's rows support.

- `registry`: the Kind (name, what a run needs, how to draw a facet) and the kinds registered;
- `draw`: a run's figures (`render`), one per kind and facet, saved as PNG / SVG / PDF;
- kinds: `throughput`, `scaling`, `speedup`, `heatmap` (its panels: `heatgrid`), `memory`
  (memory and state), `pareto`, `curves`, `recall`, `convergence`; `lines` and `quality` hold
  what several of them share;
- drawing helpers: `figure` (axes, titles, failures, footnotes), `forest` (one row per series),
  `ticks` (log axes); colours and formatters are hubbench.report.style, facets and series
  hubbench.report.series.

Importing the package registers the kinds, in the order of the import below, which is the order
the figures are drawn in. Adding a kind: a module that calls `register`, named in that import.
"""

# isort: off
from hubbench.report.plots import (  # noqa: F401  (importing a kind's module registers it)
    throughput,
    scaling,
    speedup,
    heatmap,
    memory,
    pareto,
    curves,
    recall,
    convergence,
    frontier,
)

# isort: on
from hubbench.report.plots.draw import (
    DEFAULT_FORMATS,
    FORMATS,
    PlotOutcome,
    Rendered,
    not_drawn,
    plot_run,
    render,
    save,
    supported,
    worth_saying,
)
from hubbench.report.plots.registry import KINDS, Kind, register
from hubbench.report.plots.scaling import fits_table

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "KINDS",
    "Kind",
    "PlotOutcome",
    "Rendered",
    "fits_table",
    "not_drawn",
    "plot_run",
    "register",
    "render",
    "save",
    "supported",
    "worth_saying",
]
