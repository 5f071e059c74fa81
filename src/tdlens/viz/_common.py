"""What the figures share: array conversion, channel reduction, and :class:`Plot`, the object
every figure function returns (it shows itself in a notebook and saves itself as PNG).

Figures are drawn with matplotlib's object-oriented API (a ``Figure`` rendered by the Agg
canvas), never through pyplot, so they need no display and leave the user's backend alone.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REDUCTIONS", "Plot", "new_figure", "plain_text", "reduce_channels", "to_numpy"]

REDUCTIONS = ("sum", "mean", "abs", "max", "norm")


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a float64 array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def reduce_channels(array: np.ndarray, how: str, axis: int = 0) -> np.ndarray:
    """Reduces the channel axis of an attribution map.

    Args:
        array: The map, with channels on ``axis``.
        how: ``"sum"`` (signed), ``"mean"`` (signed), ``"abs"`` (sum of absolute values),
            ``"max"`` (largest absolute value), ``"norm"`` (L2 norm over the channels).
        axis: The channel axis.

    Returns:
        The map without the channel axis.

    Raises:
        ValueError: If ``how`` is not one of :data:`REDUCTIONS`.
    """
    if how == "sum":
        return array.sum(axis=axis)
    if how == "mean":
        return array.mean(axis=axis)
    if how == "abs":
        return np.abs(array).sum(axis=axis)
    if how == "max":
        return np.abs(array).max(axis=axis)
    if how == "norm":
        return np.sqrt((array**2).sum(axis=axis))
    raise ValueError(f"reduce must be one of {', '.join(map(repr, REDUCTIONS))}; got {how!r}")


def plain_text(text: str) -> str:
    """``text`` shown literally by matplotlib: ``$`` would start mathtext, which fails on
    arbitrary class names and token strings."""
    return str(text).replace("$", r"\$")


def new_figure(width: float, height: float, dpi: int) -> Any:
    """A pyplot-free matplotlib ``Figure`` of ``width`` x ``height`` inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


class Plot:
    """A drawn figure: ``.figure`` is the matplotlib ``Figure``, ``.axes`` its main axes.

    A notebook shows it as a PNG (``_repr_png_``) or an ``<img>`` (``_repr_html_``).

    Example:
        >>> plot = tdlens.viz.heatmap(attr[0], x[0])
        >>> plot.save("attr.png")               # or plot.png() for the bytes
    """

    def __init__(self, figure: Any, axes: Any) -> None:
        self.figure = figure
        self.axes = axes

    def png(self) -> bytes:
        """The figure as PNG bytes."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the figure as PNG (parent folders are created); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.png())
        return target

    def _repr_png_(self) -> bytes:
        return self.png()

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.png()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="tdlens figure">'

    def __repr__(self) -> str:
        width, height = self.figure.get_size_inches() * self.figure.dpi
        return f"Plot({round(float(width))}x{round(float(height))} px)"
