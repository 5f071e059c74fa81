"""A comparison grid: examples in rows, the input then one heatmap per method (or target) in
columns. ``tdlens demo``'s figure is this grid."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Plot, new_figure, plain_text, reduce_channels, to_numpy
from .image import colorize

__all__ = ["comparison_grid", "save_attribution_grid"]


def _as_images(value: Any, *, reduce: str | None) -> np.ndarray:
    """A batch as ``[B, H, W]`` (``[B, H, W, 3]`` for an RGB input when ``reduce`` is None)."""
    array = to_numpy(value)
    if array.ndim == 3:
        return array
    if array.ndim != 4:
        raise ValueError(
            f"expected a batch shaped [B, H, W] or [B, C, H, W], got {list(array.shape)}"
        )
    if array.shape[1] == 1:
        return array[:, 0]
    if reduce is not None or array.shape[1] != 3:
        return reduce_channels(array, reduce or "sum", axis=1)
    low, high = array.min(), array.max()
    return np.moveaxis((array - low) / max(high - low, 1e-12), 1, -1)


def comparison_grid(
    inputs: Any,
    columns: Mapping[str, Any],
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    input_title: str = "input",
    reduce: str = "sum",
    signed_cmap: str = "RdBu_r",
    unsigned_cmap: str = "Reds",
    input_cmap: str = "gray_r",
    cell_inches: float = 1.5,
    dpi: int = 100,
) -> Plot:
    """Draws a grid: one row per example, the input then one column per attribution.

    A column holding any negative value is drawn with a diverging colour map centred at 0, a
    non-negative one (e.g. saliency) with a sequential map from 0. Each heatmap is scaled to
    its own largest absolute value, so colours compare pixels within a map, not across maps.

    Args:
        inputs: The inputs ``[B, H, W]`` or ``[B, C, H, W]``.
        columns: Column title to attributions shaped like ``inputs``.
        row_labels: One label per example, left of each row.
        title: A title above the grid.
        input_title: The title of the input column.
        reduce: How channels of the attributions are reduced (``"sum"``, ``"abs"``, ...).
        signed_cmap: Colour map of signed columns.
        unsigned_cmap: Colour map of non-negative columns.
        input_cmap: Colour map of single-channel inputs.
        cell_inches: Size of one cell in inches.
        dpi: Resolution.

    Returns:
        A :class:`Plot`.

    Raises:
        ValueError: If a column's batch or spatial shape differs from the inputs'.

    Example:
        >>> grid = tdlens.viz.comparison_grid(x, {"IG": ig_attr, "Saliency": sal_attr})
        >>> grid.save("methods.png")
    """
    images = _as_images(inputs, reduce=None)
    maps = {name: _as_images(value, reduce=reduce) for name, value in columns.items()}
    for name, array in maps.items():
        if array.shape[:3] != images.shape[:3]:
            raise ValueError(
                f"column {name!r} has shape {list(array.shape)}, inputs {list(images.shape)}"
            )
    if row_labels is not None and len(row_labels) != images.shape[0]:
        raise ValueError(f"{len(row_labels)} row labels for {images.shape[0]} examples")
    n_rows, n_cols = images.shape[0], 1 + len(maps)
    figure = new_figure(cell_inches * n_cols + 0.6, cell_inches * n_rows + 0.9, dpi)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for col, name in enumerate([input_title, *maps]):
        axes[0, col].set_title(plain_text(name), fontsize=8)
    for row in range(n_rows):
        axes[row, 0].imshow(images[row], cmap=input_cmap, interpolation="nearest")
        for col, array in enumerate(maps.values(), start=1):
            signed = bool((array < 0).any())
            cmap = signed_cmap if signed else unsigned_cmap
            axes[row, col].imshow(
                colorize(array[row], signed=signed, cmap=cmap), interpolation="nearest"
            )
        if row_labels is not None:
            axes[row, 0].set_ylabel(plain_text(row_labels[row]), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(plain_text(title), fontsize=10)
    figure.tight_layout()
    return Plot(figure, axes)


def save_attribution_grid(
    path: str | os.PathLike[str], inputs: Any, columns: Any, **options: Any
) -> Path:
    """Writes :func:`comparison_grid` ``(inputs, columns, **options)`` to a PNG file; returns
    its path (parent folders are created)."""
    return comparison_grid(inputs, columns, **options).save(path)
