"""Plotting helpers: attribution heatmaps (PNG) and small self-contained HTML reports.

Needs matplotlib (the ``viz`` extra), imported only when a figure is drawn.
"""

from tdlens.viz.heatmap import HtmlImage, HtmlTable, save_attribution_grid, write_html_page

__all__ = ["HtmlImage", "HtmlTable", "save_attribution_grid", "write_html_page"]
