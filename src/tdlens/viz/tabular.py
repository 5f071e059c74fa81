"""Tabular attributions as a horizontal bar chart with feature names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import Plot, new_figure, plain_text, to_numpy

__all__ = ["feature_bars"]

_POSITIVE, _NEGATIVE = "#c0392b", "#2e6da4"


def feature_bars(
    attributions: Any,
    feature_names: Sequence[str] | None = None,
    *,
    top_k: int | None = None,
    sort: bool = True,
    values: Any = None,
    title: str | None = None,
    ax: Any = None,
    width: float = 5.0,
    dpi: int = 100,
) -> Plot:
    """Draws one example's feature attributions as bars (red raises the score, blue lowers it).

    Args:
        attributions: ``[F]`` or a batch of one ``[1, F]``.
        feature_names: F names; ``"feature i"`` when None.
        top_k: Show only the k features of largest absolute attribution.
        sort: Order bars by absolute attribution, largest on top (else in feature order).
        values: The example's feature values ``[F]``, appended to the names (``age = 41``).
        title: A title (shown literally).
        ax: Draw into this matplotlib axes instead of a new figure.
        width: Width of a new figure in inches (the height follows the number of bars).
        dpi: Resolution of a new figure.

    Returns:
        A :class:`Plot`.

    Example:
        >>> attr = tdlens.Saliency(model).attribute(x, target=1)      # x: [B, F]
        >>> tdlens.viz.feature_bars(attr[0], ["age", "income", "debt"]).save("bars.png")
    """
    scores = to_numpy(attributions)
    if scores.ndim == 2 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 1:
        raise ValueError(
            f"feature_bars draws one example [F] or [1, F]; got shape {list(scores.shape)}"
        )
    n = scores.shape[0]
    names = [f"feature {i}" for i in range(n)] if feature_names is None else list(feature_names)
    if len(names) != n:
        raise ValueError(f"{len(names)} feature names for {n} attributions")
    if values is not None:
        shown = to_numpy(values).reshape(-1)
        if shown.shape[0] != n:
            raise ValueError(f"{shown.shape[0]} feature values for {n} attributions")
        names = [f"{name} = {value:.4g}" for name, value in zip(names, shown)]
    order = np.argsort(-np.abs(scores), kind="stable") if sort else np.arange(n)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        order = order[:top_k]
    order = order[::-1]  # barh draws bottom-up: the first feature goes on top
    if ax is None:
        figure = new_figure(width, 0.8 + 0.28 * len(order), dpi)
        ax = figure.subplots()
    figure = ax.figure
    shown_scores = scores[order]
    ax.barh(
        np.arange(len(order)),
        shown_scores,
        color=[_POSITIVE if s >= 0 else _NEGATIVE for s in shown_scores],
    )
    ax.set_yticks(np.arange(len(order)), [plain_text(names[i]) for i in order], fontsize=8)
    ax.axvline(0.0, color="#444", linewidth=0.8)
    ax.set_xlabel("attribution")
    if title:
        ax.set_title(plain_text(title), fontsize=9)
    figure.tight_layout()
    return Plot(figure, ax)
