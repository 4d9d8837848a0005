"""Figure style: one colour, marker and line per series, the same in every plot.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies; yellow left
out, it vanishes on white). Line style names the attention implementation (naive dotted, SDPA
dashed, flash dash-dot, hub variants solid) and the marker the variant, so a figure still reads
in greyscale. A series' style depends only on what it is (variant and attention backend), never on
the order in which a run happens to list it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubbench.plan.variants import is_router

ORANGE, SKY, GREEN, BLUE, VERMILLION, PURPLE, BLACK, GREY = (
    "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#999999",
)  # fmt: skip

# (variant, attention backend family) -> colour; the family of "sdpa:flash" is "sdpa".
_COLOURS: dict[tuple[str, str | None], str] = {
    ("transformer", "naive"): ORANGE,
    ("transformer", "sdpa"): VERMILLION,
    ("transformer", "flash"): BLACK,
    ("jamba", "naive"): SKY,
    ("jamba", "sdpa"): BLUE,
    ("jamba", "flash"): GREY,
    ("hub-gpt", None): GREEN,
    ("hub-jamba", None): PURPLE,
    # the field's mixers: attention is inert in them (null), so the variant alone picks the colour;
    # a recurrence hybrid with attention layers takes its colour from _EXTRA by backend
    ("mamba2-gpt", None): "#332288",
    ("mamba2-jamba", None): "#332288",
    ("gdn-gpt", None): "#44AA99",
    ("gdn-jamba", None): "#44AA99",
    ("swa-gpt", None): "#882255",
    ("swa-jamba", None): "#882255",
    ("moba-gpt", None): "#117733",
    ("moba-jamba", None): "#117733",
    ("nsa-gpt", None): "#AA4499",
    ("nsa-jamba", None): "#AA4499",
    ("oryx-gdn", None): "#DDCC77",
    ("oryx-mamba2", None): "#88CCEE",
}
_MARKERS = {"transformer": "o", "jamba": "s", "hub-gpt": "^", "hub-jamba": "D",
            "mamba2-gpt": "v", "mamba2-jamba": "h", "gdn-gpt": "P", "gdn-jamba": "p",
            "swa-gpt": "<", "swa-jamba": "d", "moba-gpt": ">", "moba-jamba": "8",
            "nsa-gpt": "X", "nsa-jamba": "*", "oryx-gdn": "H", "oryx-mamba2": "H"}  # fmt: skip
# Line style names the attention implementation, marker the variant: readable in greyscale.
_LINES = {"naive": (0, (1, 1.2)), "sdpa": (0, (5, 2)), "flash": (0, (5, 1.5, 1, 1.5))}
_EXTRA = ("#332288", "#44AA99", "#882255", "#117733", "#AA4499", "#DDCC77", "#88CCEE")

# Sizes for a paper: a figure is WIDTH inches wide (legend and notes below the axes, not beside
# them), so scaled into one column of a two-column layout (3.3 in) its tick labels and legend
# still read at 6 pt or more.
WIDTH = 4.2  # inches, the axes plus their labels
AXES_HEIGHT = 2.5
NOTE_SIZE = 7.0  # footnotes and the subtitle
RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "errorbar.capsize": 2.0,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.handlelength": 2.6,
    "savefig.dpi": 200,
    "figure.dpi": 100,
    "svg.fonttype": "none",  # SVG text stays text (editable, searchable), not outlines
    "pdf.fonttype": 42,  # TrueType in the PDF: editable text that pdftotext can read
    "ps.fonttype": 42,
}


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    linestyle: Any

    def kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


def family(attention: str | None, backend: str | None = None) -> str | None:
    """'sdpa:flash' -> 'sdpa'; a hub variant's own attention does not pick its colour."""
    name = backend or attention
    return None if name is None else str(name).split(":")[0]


def series_style(variant: str, attention: str | None) -> SeriesStyle:
    """The one style of a (variant, attention backend) series, the same in every figure."""
    hub = is_router(variant)
    color = _COLOURS.get((variant, None if hub else family(attention)))
    if color is None:
        color = _EXTRA[sum(map(ord, f"{variant}/{attention}")) % len(_EXTRA)]
    marker = _MARKERS.get(variant, "v")
    line = "-" if hub else _LINES.get(family(attention) or "", (0, (3, 1, 1, 1, 1, 1)))
    return SeriesStyle(color, marker, line)


_SIBLING_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def sibling_style(base: SeriesStyle, index: int, count: int) -> SeriesStyle:
    """Several series of one base style (a hub sweep): ordered shades of viridis, own markers.

    viridis runs dark to light in one perceptual direction, so the order of M or k stays readable
    for colour-blind readers and in greyscale; the yellow end is cut off, it vanishes on white.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    position = 0.0 if count == 1 else 0.85 * index / (count - 1)
    color = to_hex(colormaps["viridis"](position))
    return SeriesStyle(color, _SIBLING_MARKERS[index % len(_SIBLING_MARKERS)], base.linestyle)


def seq_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    from hubbench.report.format import fmt_seq

    return FuncFormatter(lambda x, _pos: fmt_seq(round(x)) if x >= 1 else f"{x:g}")


def si_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    from hubbench.report.format import si

    return FuncFormatter(lambda y, _pos: si(y))


def bytes_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    from hubbench.report.format import binary_bytes

    return FuncFormatter(lambda y, _pos: binary_bytes(y))


def seconds_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    from hubbench.report.format import seconds

    return FuncFormatter(lambda y, _pos: seconds(y))


def speedup_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda y, _pos: f"{y:g}×")
