"""captum's visualization functions, with captum's signatures: image attributions as
matplotlib figures, text attributions as HTML.

``visualize_image_attr(attr, original_image, method, sign, ...)`` draws an ``(H, W, C)`` or
``(H, W)`` attribution: channels summed, values of the chosen sign kept, scaled so that the
largest ones, beyond ``outlier_perc`` percent of the total attribution mass, saturate at 1.
Methods: ``heat_map``, ``blended_heat_map`` (over the grey image), ``original_image``,
``masked_image`` (the image times the normalised attribution), ``alpha_scaling`` (the image
with the attribution as opacity). Signs: ``positive``, ``negative``, ``absolute_value``, ``all``.

``visualize_text(records)`` renders :class:`VisualizationDataRecord` rows as an HTML table
(token text escaped). matplotlib is imported on first use.

Example:
    >>> from tdlens.captum.visualization import visualize_image_attr
    >>> fig, ax = visualize_image_attr(attr[0].permute(1, 2, 0).numpy(), image, "blended_heat_map",
    ...                                use_pyplot=False)
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")
SIGNS = ("positive", "negative", "absolute_value", "all")
_NEEDS_IMAGE = ("blended_heat_map", "original_image", "masked_image", "alpha_scaling")


def _check(method: str, sign: str, original_image: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not a visualization method; use one of {METHODS}")
    if sign not in SIGNS:
        raise ValueError(f"sign={sign!r} is not a sign; use one of {SIGNS}")
    if original_image is None and method in _NEEDS_IMAGE:
        raise ValueError(f"method={method!r} draws over the image: pass original_image=")
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        raise ValueError(
            f"method={method!r} shows one sign (the image scaled by the attribution); with "
            "sign='all' choose heat_map or blended_heat_map, or another sign"
        )


def _mass_threshold(values: np.ndarray, percent: float) -> float:
    """The smallest value such that the values up to it hold ``percent`` % of the total."""
    ordered = np.sort(values.reshape(-1))
    cumulative = np.cumsum(ordered)
    return float(ordered[np.searchsorted(cumulative, cumulative[-1] * 0.01 * percent)])


def normalize_attr(attr: np.ndarray, sign: str = "absolute_value", outlier_perc: float = 2) -> Any:
    """``(H, W[, C])`` attributions as ``(H, W)`` values in ``[-1, 1]`` (``[0, 1]`` for one
    sign): channels summed, the chosen sign kept, divided by the mass threshold, clipped."""
    if not 0 <= outlier_perc <= 100:
        raise ValueError(f"outlier_perc must be in [0, 100], got {outlier_perc}")
    values = np.asarray(attr, dtype=np.float64)
    if values.ndim == 3:
        values = values.sum(axis=2)
    if values.ndim != 2:
        raise ValueError(f"attr must have shape (H, W) or (H, W, C), got {values.shape}")
    if sign == "positive":
        values = np.maximum(values, 0)
    elif sign == "negative":
        values = np.minimum(values, 0)
    elif sign == "absolute_value":
        values = np.abs(values)
    threshold = _mass_threshold(np.abs(values), 100.0 - outlier_perc)
    if sign == "negative":
        threshold = -threshold
    if threshold == 0:
        raise ValueError("every attribution of this sign is 0: nothing to scale")
    return np.clip(values / threshold, -1, 1)


def _colormap(sign: str) -> tuple[Any, float, float]:
    if sign == "all":
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"]), -1, 1
    return {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}[sign], 0, 1


def _image_255(image: np.ndarray) -> np.ndarray:
    """Images in [0, 1] as integers in [0, 255], as captum shows them."""
    image = np.asarray(image)
    if image.max() <= 1.0:
        image = np.clip((image * 255).astype(int), 0, 255)
    return image


def _new_axes(plt_fig_axis: Any, use_pyplot: bool, fig_size: tuple[int, int]) -> tuple[Any, Any]:
    if plt_fig_axis is not None:
        fig, axis = plt_fig_axis
        return fig, axis[0] if isinstance(axis, list) else axis
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=fig_size)
    from matplotlib.figure import Figure

    fig = Figure(figsize=fig_size)
    return fig, fig.subplots()


def visualize_image_attr(
    attr: np.ndarray,
    original_image: np.ndarray | None = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis: tuple[Any, Any] | None = None,
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[int, int] = (6, 6),
    use_pyplot: bool = True,
) -> tuple[Any, Any]:
    """Draw an image attribution (captum's signature); returns ``(figure, axis)``."""
    _check(method, sign, original_image)
    fig, axis = _new_axes(plt_fig_axis, use_pyplot, fig_size)
    image = None if original_image is None else _image_255(original_image)
    axis.xaxis.set_ticks_position("none")
    axis.yaxis.set_ticks_position("none")
    axis.set_xticklabels([])
    axis.set_yticklabels([])
    axis.grid(visible=False)
    norm = normalize_attr(attr, sign, outlier_perc)
    default, vmin, vmax = _colormap(sign)
    cmap = default if cmap is None else cmap
    heat = None
    if method == "heat_map":
        heat = axis.imshow(norm, cmap=cmap, vmin=vmin, vmax=vmax)
    elif method == "blended_heat_map":
        assert image is not None
        axis.imshow(np.mean(image, axis=2) if image.ndim == 3 else image, cmap="gray")
        heat = axis.imshow(norm, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha_overlay)
    elif method == "original_image":
        assert image is not None
        axis.imshow(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    else:
        assert image is not None
        rgb = image if image.ndim == 3 else image[..., None]
        if method == "masked_image":
            axis.imshow(np.clip((rgb * norm[..., None]).astype(int), 0, 255))
        else:  # alpha_scaling: the attribution as the image's opacity
            alpha = np.clip((norm[..., None] * 255).astype(int), 0, 255)
            axis.imshow(np.concatenate([rgb, alpha], axis=2))
    if show_colorbar:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar = make_axes_locatable(axis).append_axes("bottom", size="5%", pad=0.1)
        if heat is not None:
            fig.colorbar(heat, orientation="horizontal", cax=bar)
        else:
            bar.axis("off")
    if title:
        axis.set_title(title)
    if use_pyplot and plt_fig_axis is None:
        import matplotlib.pyplot as plt

        plt.show()
    return fig, axis


def visualize_image_attr_multiple(
    attr: np.ndarray,
    original_image: np.ndarray | None,
    methods: list[str],
    signs: list[str],
    titles: list[str] | None = None,
    fig_size: tuple[int, int] = (8, 6),
    use_pyplot: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Several visualizations side by side (captum's signature); returns ``(figure, axes)``
    (one axis for one method, else a list)."""
    if len(methods) != len(signs):
        raise ValueError(f"{len(methods)} methods but {len(signs)} signs: give one sign each")
    if titles is not None and len(titles) != len(methods):
        raise ValueError(f"{len(methods)} methods but {len(titles)} titles")
    for method, sign in zip(methods, signs):
        _check(method, sign, original_image)
    if use_pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=fig_size)
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=fig_size)
    grid = fig.subplots(1, len(methods), squeeze=True)
    axes = [grid] if len(methods) == 1 else list(grid)
    for i, (method, sign) in enumerate(zip(methods, signs)):
        visualize_image_attr(
            attr,
            original_image,
            method,
            sign,
            plt_fig_axis=(fig, axes[i]),
            use_pyplot=False,
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        import matplotlib.pyplot as plt

        plt.show()
    return fig, axes[0] if len(methods) == 1 else axes


@dataclass
class VisualizationDataRecord:
    """One row of :func:`visualize_text` (captum's fields, in captum's order)."""

    word_attributions: Any
    pred_prob: float
    pred_class: Any
    true_class: Any
    attr_class: Any
    attr_score: float
    raw_input_ids: list[str]
    convergence_score: Any


def _color(value: float) -> str:
    """Green for positive, red for negative attributions, lighter when smaller."""
    value = max(-1.0, min(1.0, float(value)))
    if value > 0:
        return f"hsl(120, 75%, {int(100 - 40 * value)}%)"
    return f"hsl(0, 75%, {int(100 + 40 * value)}%)"


def _tokens(words: list[str], scores: Any) -> str:
    cells = []
    for word, score in zip(words, [float(s) for s in scores]):
        text = html.escape(str(word))
        cells.append(
            f'<mark style="background-color: {_color(score)}; opacity:1.0; line-height:1.75">'
            f'<font color="black"> {text} </font></mark>'
        )
    return "<td>" + "".join(cells) + "</td>"


class TextVisualization:
    """The HTML of :func:`visualize_text`; shown as HTML by Jupyter (``_repr_html_``)."""

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_html_(self) -> str:
        return self.data


def visualize_text(
    datarecords: Iterable[VisualizationDataRecord], legend: bool = True
) -> TextVisualization:
    """An HTML table of text attributions, one row per record (captum's signature). Text is
    escaped; in Jupyter the result displays itself."""
    esc = html.escape
    rows = [
        "<table width: 100%><tr><th>True Label</th><th>Predicted Label</th>"
        "<th>Attribution Label</th><th>Attribution Score</th><th>Word Importance</th></tr>"
    ]
    for r in datarecords:
        if len(r.raw_input_ids) != len(r.word_attributions):
            raise ValueError(
                f"a record has {len(r.raw_input_ids)} tokens but {len(r.word_attributions)} "
                "word attributions; give one attribution per token"
            )
        rows.append(
            f"<tr><td><text style='padding-right:2em'><b>{esc(str(r.true_class))}</b></text></td>"
            f"<td><text style='padding-right:2em'><b>{esc(str(r.pred_class))} "
            f"({float(r.pred_prob):.2f})</b></text></td>"
            f"<td><text style='padding-right:2em'><b>{esc(str(r.attr_class))}</b></text></td>"
            f"<td><text style='padding-right:2em'><b>{float(r.attr_score):.2f}</b></text></td>"
            f"{_tokens(r.raw_input_ids, r.word_attributions)}</tr>"
        )
    if legend:
        rows.append(
            '<div style="border-top: 1px solid; margin-top: 5px; padding-top: 5px; '
            'display: inline-block"><b>Legend: </b>'
            + "".join(
                f'<span style="display: inline-block; width: 10px; height: 10px; border: 1px '
                f'solid; background-color: {_color(v)}"></span> {name}  '
                for v, name in ((-1, "Negative"), (0, "Neutral"), (1, "Positive"))
            )
            + "</div>"
        )
    return TextVisualization("".join(rows) + "</table>")
