"""Figures of attributions: image heatmaps, tabular bars, deletion/insertion curves, a
comparison grid, and a small HTML report.

Needs matplotlib (the ``viz`` extra), imported only when a figure is drawn. Every figure
function returns a :class:`Plot` that a notebook shows inline and ``.save(path)`` writes as PNG.

Example:
    >>> import tdlens.viz
    >>> tdlens.viz.heatmap(attr[0], x[0]).save("attr.png")
"""

from tdlens.viz._common import REDUCTIONS, Plot, reduce_channels
from tdlens.viz.curves import curve_plot
from tdlens.viz.grid import comparison_grid, save_attribution_grid
from tdlens.viz.html import HtmlImage, HtmlTable, write_html_page
from tdlens.viz.image import SIGNS, colorize, heatmap
from tdlens.viz.tabular import feature_bars

__all__ = [
    "REDUCTIONS",
    "SIGNS",
    "HtmlImage",
    "HtmlTable",
    "Plot",
    "colorize",
    "comparison_grid",
    "curve_plot",
    "feature_bars",
    "heatmap",
    "reduce_channels",
    "save_attribution_grid",
    "write_html_page",
]
