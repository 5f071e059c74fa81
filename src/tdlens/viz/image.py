"""Image attributions as heatmaps: on top of the image, beside it, or alone, with a colour bar.

A map with negative values is drawn with a diverging colour map centred at 0 (red raises the
score, blue lowers it); a non-negative map with a sequential one starting at 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Plot, new_figure, plain_text, reduce_channels, to_numpy

__all__ = ["SIGNS", "colorize", "heatmap", "image_to_show", "map_to_show"]

SIGNS = ("auto", "signed", "absolute", "positive", "negative")
_SIGNED_CMAP, _UNSIGNED_CMAP = "RdBu_r", "Reds"


def map_to_show(attributions: Any, *, reduce: str = "sum", sign: str = "auto") -> np.ndarray:
    """One attribution map ``[H, W]`` as it is drawn: channels reduced, the sign applied.

    Args:
        attributions: ``[H, W]``, ``[C, H, W]`` or a batch of one ``[1, C, H, W]``.
        reduce: How channels are reduced (see :func:`tdlens.viz.reduce_channels`).
        sign: ``"auto"`` (signed if any value is negative), ``"signed"``, ``"absolute"``
            (``|a|``), ``"positive"`` (negative values set to 0), ``"negative"`` (``-a``
            where negative, else 0).

    Returns:
        The map, float64 ``[H, W]``.

    Raises:
        ValueError: On a shape that is not one map, or an unknown ``reduce`` or ``sign``.
    """
    array = to_numpy(attributions)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        array = reduce_channels(array, reduce)
    if array.ndim != 2:
        raise ValueError(
            f"heatmap draws one map shaped [H, W], [C, H, W] or [1, C, H, W]; got shape "
            f"{list(array.shape)} (for a batch, use tdlens.viz.comparison_grid)"
        )
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(map(repr, SIGNS))}; got {sign!r}")
    if sign == "absolute":
        return np.abs(array)
    if sign == "positive":
        return np.clip(array, 0.0, None)
    if sign == "negative":
        return np.clip(-array, 0.0, None)
    return array


def colorize(values: Any, *, signed: bool | None = None, cmap: str | None = None) -> np.ndarray:
    """The RGBA colours a map is drawn with, ``[*values.shape, 4]`` in [0, 1].

    Signed maps use a diverging colour map over ``[-peak, peak]`` (``peak``: the largest
    absolute value), non-negative ones a sequential map over ``[0, peak]``; a larger value
    never gets an earlier colour of the map.

    Args:
        values: The map.
        signed: Whether to use the diverging scale; ``None``: if any value is negative.
        cmap: A matplotlib colour map name; ``"RdBu_r"`` (signed) or ``"Reds"`` by default.
    """
    import matplotlib

    array = to_numpy(values)
    signed = bool((array < 0).any()) if signed is None else signed
    low, high = _limits(array, signed)
    scale = matplotlib.colormaps[cmap or (_SIGNED_CMAP if signed else _UNSIGNED_CMAP)]
    return np.asarray(scale(np.clip((array - low) / (high - low), 0.0, 1.0)))


def _limits(array: np.ndarray, signed: bool) -> tuple[float, float]:
    peak = float(np.abs(array).max()) if array.size else 0.0
    peak = peak or 1.0  # an all-zero map is drawn in the colour of 0
    return (-peak if signed else 0.0), peak


def image_to_show(image: Any) -> tuple[np.ndarray, str | None]:
    """An input image as matplotlib shows it: ``[H, W]`` grey (with its colour map) or
    ``[H, W, 3]`` RGB scaled to [0, 1]. Accepts ``[H, W]``, ``[C, H, W]`` (C = 1 or 3) or a
    batch of one; other channel counts are averaged to grey."""
    array = to_numpy(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        if array.shape[0] == 3:
            low, high = array.min(), array.max()
            return np.moveaxis((array - low) / max(high - low, 1e-12), 0, -1), None
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"expected an image [H, W] or [C, H, W]; got shape {list(array.shape)}")
    return array, "gray_r"


def heatmap(
    attributions: Any,
    image: Any = None,
    *,
    overlay: bool = True,
    sign: str = "auto",
    reduce: str = "sum",
    cmap: str | None = None,
    alpha: float = 0.6,
    colorbar: bool = True,
    title: str | None = None,
    ax: Any = None,
    size: float = 3.0,
    dpi: int = 100,
) -> Plot:
    """Draws one attribution map, over its image, beside it, or alone.

    Args:
        attributions: One map: ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]``.
        image: The input ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]``; ``None`` draws the map
            alone.
        overlay: With ``image``: draw the map over the image (``True``) or beside it.
        sign: Which part of the map to draw (see :func:`map_to_show`).
        reduce: How channels are reduced: ``"sum"``, ``"mean"``, ``"abs"``, ``"max"``,
            ``"norm"``.
        cmap: A matplotlib colour map; diverging ``"RdBu_r"`` or sequential ``"Reds"`` by
            default.
        alpha: Opacity of the map over the image.
        colorbar: Whether to draw a colour bar.
        title: A title (shown literally).
        ax: Draw into this matplotlib axes instead of a new figure (then no side-by-side).
        size: Height of a new figure in inches.
        dpi: Resolution of a new figure.

    Returns:
        A :class:`Plot` (``.save(path)``, ``.png()``; shown inline in a notebook).

    Example:
        >>> attr = tdlens.IntegratedGradients(model).attribute(x, target=3)
        >>> tdlens.viz.heatmap(attr[0], x[0], sign="signed").save("ig.png")
    """
    values = map_to_show(attributions, reduce=reduce, sign=sign)
    shown = None if image is None else image_to_show(image)
    if shown is not None and shown[0].shape[:2] != values.shape:
        raise ValueError(
            f"the map has shape {list(values.shape)} but the image {list(shown[0].shape[:2])}; "
            "give the image the attributions were computed for"
        )
    side = shown is not None and not overlay and ax is None
    if ax is None:
        width = size * (2 if side else 1) + (0.6 if colorbar else 0.0)
        figure = new_figure(width, size + (0.3 if title else 0.0), dpi)
        axes = figure.subplots(1, 2 if side else 1, squeeze=False)[0]
    else:
        figure, axes = ax.figure, [ax]
    signed = sign == "signed" or (sign == "auto" and bool((values < 0).any()))
    low, high = _limits(values, signed)
    target = axes[-1]
    if shown is not None:
        grey, grey_cmap = shown
        # under a map the image is faded, so that its dark pixels do not darken the colours
        faded = 0.6 if not side else None
        axes[0].imshow(grey, cmap=grey_cmap, interpolation="nearest", alpha=faded)
    drawn = target.imshow(
        values,
        cmap=cmap or (_SIGNED_CMAP if signed else _UNSIGNED_CMAP),
        vmin=low,
        vmax=high,
        alpha=alpha if shown is not None and not side else None,
        interpolation="nearest",
    )
    for each in axes:
        each.set_xticks([])
        each.set_yticks([])
    if colorbar:
        figure.colorbar(drawn, ax=target, fraction=0.046, pad=0.04)
    if title:
        (figure.suptitle if side else target.set_title)(plain_text(title), fontsize=9)
    if ax is None:
        figure.tight_layout()
    return Plot(figure, target)
