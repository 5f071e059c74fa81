"""Deletion and insertion curves (``tdlens.metrics.deletion`` / ``insertion``) with their area
under the curve in the legend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._common import Plot, new_figure, plain_text, to_numpy

__all__ = ["curve_plot"]


def curve_plot(
    results: Any,
    *,
    kind: str | None = "deletion",
    example: int | None = None,
    title: str | None = None,
    ax: Any = None,
    size: float = 3.5,
    dpi: int = 100,
) -> Plot:
    """Draws the score against the fraction of features removed (or inserted).

    Args:
        results: A :class:`tdlens.metrics.CurveResult`, or a mapping from a name (a method)
            to one; one line per entry.
        kind: ``"deletion"`` or ``"insertion"``: the axis labels (lower area is better for
            deletion, higher for insertion); ``None`` for any other curve.
        example: Draw this example's curve; ``None``: the mean over the batch (and targets).
        title: A title; by default the kind and which is better.
        ax: Draw into this matplotlib axes instead of a new figure.
        size: Height of a new figure in inches.
        dpi: Resolution of a new figure.

    Returns:
        A :class:`Plot`; the legend gives each curve's area (AUC).

    Example:
        >>> result = tdlens.metrics.deletion(model, x, attr, target=3)
        >>> tdlens.viz.curve_plot({"IG": result}).save("deletion.png")
    """
    if kind not in ("deletion", "insertion", None):
        raise ValueError(f"kind must be 'deletion', 'insertion' or None, got {kind!r}")
    named = dict(results) if isinstance(results, Mapping) else {"": results}
    if ax is None:
        figure = new_figure(size * 1.4, size, dpi)
        ax = figure.subplots()
    figure = ax.figure
    for name, result in named.items():
        fractions = to_numpy(result.fractions)
        curve = to_numpy(result.curve)
        score = to_numpy(result.score)
        if example is not None:
            if not 0 <= example < curve.shape[0]:
                raise ValueError(f"example {example} is outside the batch of {curve.shape[0]}")
            curve, score = curve[example], score[example]
        line = curve.reshape(-1, curve.shape[-1]).mean(axis=0)
        label = f"AUC {float(score.mean()):.3f}"
        ax.plot(
            fractions, line, marker=".", label=f"{plain_text(name)}: {label}" if name else label
        )
    if kind is None:
        ax.set_xlabel("fraction of features")
        default_title = "score by fraction of features"
    else:
        better = "lower" if kind == "deletion" else "higher"
        ax.set_xlabel(f"fraction of features {'removed' if kind == 'deletion' else 'inserted'}")
        default_title = f"{kind} ({better} AUC is better)"
    ax.set_ylabel("target score")
    ax.set_title(plain_text(title) if title else default_title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return Plot(figure, ax)
