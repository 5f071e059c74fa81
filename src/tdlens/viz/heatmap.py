"""Attribution heatmaps as PNG files and a small self-contained HTML report.

Matplotlib is imported lazily, inside :func:`save_attribution_grid`, and only through its
object-oriented API (``matplotlib.figure.Figure`` rendered by the Agg canvas), so this module
never touches pyplot's global state or the user's interactive backend.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HtmlImage", "HtmlTable", "save_attribution_grid", "write_html_page"]


def _to_numpy(value: Any) -> np.ndarray:
    """Converts a tensor (any device, with or without grad) or array-like to a float array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float64)


def _as_images(value: Any, *, reduce_channels: bool) -> np.ndarray:
    """Brings a batch to ``[B, H, W]`` (or ``[B, H, W, 3]`` for RGB inputs).

    Args:
        value: A batch shaped ``[B, H, W]`` or ``[B, C, H, W]``.
        reduce_channels: Whether several channels are summed (attributions) rather than shown
            as colours (inputs with three channels).

    Returns:
        The batch as a NumPy array.

    Raises:
        ValueError: If the batch has neither three nor four dimensions.
    """
    array = _to_numpy(value)
    if array.ndim == 3:
        return array
    if array.ndim != 4:
        raise ValueError(f"expected a batch shaped [B, H, W] or [B, C, H, W], got {array.shape}")
    if array.shape[1] == 1:
        return array[:, 0]
    if reduce_channels or array.shape[1] != 3:
        return array.sum(axis=1)
    low, high = array.min(), array.max()
    return np.moveaxis((array - low) / max(high - low, 1e-12), 1, -1)


def save_attribution_grid(
    path: str | os.PathLike[str],
    inputs: Any,
    columns: Mapping[str, Any],
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    input_title: str = "input",
    signed_cmap: str = "RdBu_r",
    unsigned_cmap: str = "Reds",
    input_cmap: str = "gray_r",
    cell_inches: float = 1.5,
    dpi: int = 100,
) -> Path:
    """Writes a grid of attribution heatmaps to a PNG file.

    Rows are examples; the first column shows the input and each further column one
    attribution map (e.g. one method for one target). A column holding any negative value is
    drawn with a diverging colormap centred at 0; a non-negative one (e.g. saliency with
    ``abs=True``) with a sequential colormap starting at 0. Each heatmap is scaled to its own
    largest absolute value, so colours compare pixels within a map, not across maps.

    Args:
        path: Where the PNG is written; parent folders are created.
        inputs: The inputs, shaped ``[B, H, W]`` or ``[B, C, H, W]``.
        columns: Column title to attributions shaped like ``inputs``; several channels are
            summed.
        row_labels: One label per example, shown left of each row.
        title: A title above the grid.
        input_title: The title of the input column.
        signed_cmap: Colormap for signed columns.
        unsigned_cmap: Colormap for non-negative columns.
        input_cmap: Colormap for single-channel inputs.
        cell_inches: Size of one cell in inches.
        dpi: Resolution of the PNG.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: If a column's batch size or spatial shape differs from the inputs'.
    """
    from matplotlib.figure import Figure

    images = _as_images(inputs, reduce_channels=False)
    maps = {name: _as_images(value, reduce_channels=True) for name, value in columns.items()}
    for name, array in maps.items():
        if array.shape[:3] != images.shape[:3]:
            raise ValueError(f"column {name!r} has shape {array.shape}, inputs {images.shape}")
    n_rows, n_cols = images.shape[0], 1 + len(maps)

    fig = Figure(figsize=(cell_inches * n_cols + 0.6, cell_inches * n_rows + 0.9), dpi=dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    titles = [input_title, *maps]
    for col, name in enumerate(titles):
        axes[0, col].set_title(name, fontsize=8)
    for row in range(n_rows):
        axes[row, 0].imshow(images[row], cmap=input_cmap, interpolation="nearest")
        for col, array in enumerate(maps.values(), start=1):
            signed = bool((array < 0).any())
            peak = float(np.abs(array[row]).max()) or 1.0
            axes[row, col].imshow(
                array[row],
                cmap=signed_cmap if signed else unsigned_cmap,
                vmin=-peak if signed else 0.0,
                vmax=peak,
                interpolation="nearest",
            )
        if row_labels is not None:
            axes[row, 0].set_ylabel(row_labels[row], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png")
    return target


@dataclass(frozen=True)
class HtmlImage:
    """An image cell of an :class:`HtmlTable`.

    Attributes:
        path: The image file.
        alt: The alternative text.
        width: The displayed width in pixels; the image's own width when ``None``.
    """

    path: Path
    alt: str = ""
    width: int | None = None


@dataclass(frozen=True)
class HtmlTable:
    """A table of text and image cells.

    Attributes:
        header: The column titles.
        rows: The rows; each cell is a string (escaped) or an :class:`HtmlImage`.
        caption: A caption shown above the table.
    """

    header: Sequence[str]
    rows: Sequence[Sequence[str | HtmlImage]]
    caption: str = ""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; }
caption { text-align: left; font-weight: bold; padding-bottom: .4em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { image-rendering: pixelated; }
"""


def _image_tag(image: HtmlImage, page_dir: Path, embed: bool) -> str:
    """Renders an image as an ``<img>`` tag, inlined as a data URI when ``embed`` is set."""
    if embed:
        mime = mimetypes.guess_type(image.path.name)[0] or "application/octet-stream"
        data = base64.b64encode(image.path.read_bytes()).decode("ascii")
        src = f"data:{mime};base64,{data}"
    else:
        src = Path(os.path.relpath(image.path, page_dir)).as_posix()
    width = f' width="{image.width}"' if image.width else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(image.alt)}"{width}>'


def write_html_page(
    path: str | os.PathLike[str],
    title: str,
    tables: Sequence[HtmlTable],
    *,
    paragraphs: Sequence[str] = (),
    embed_images: bool = True,
) -> Path:
    """Writes a self-contained HTML page: a title, paragraphs of text, then tables.

    Args:
        path: Where the page is written; parent folders are created.
        title: The page title and heading.
        tables: The tables, in order.
        paragraphs: Plain-text paragraphs shown under the heading (escaped).
        embed_images: Whether images are inlined as base64 data URIs, so that the page needs
            no other file; otherwise they are linked by paths relative to the page.

    Returns:
        The path of the page.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page_dir = target.parent.resolve()

    def cell(value: str | HtmlImage) -> str:
        if isinstance(value, HtmlImage):
            return _image_tag(value, page_dir, embed_images)
        return html.escape(value)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(text)}</p>" for text in paragraphs]
    for table in tables:
        parts.append("<table>")
        if table.caption:
            parts.append(f"<caption>{html.escape(table.caption)}</caption>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>")
        parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    target.write_text("\n".join(parts), encoding="utf-8")
    return target
